"""Store resolution: one function each for the tracking URI and the Optuna storage, flag > env > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainlib.errors import InvalidArgument
from trainlib.store_failures import StoreUnavailable, call_patiently, retry_delays
from trainlib.stores import (
    mlflow_server_command,
    redact,
    resolve_storage_url,
    resolve_tracking_uri,
    scrub,
    with_installed_driver,
)


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRAINLIB_OPTUNA_STORAGE", raising=False)
    monkeypatch.setenv("TRAINLIB_MLRUNS_DIR", str(tmp_path / "mlruns"))
    return tmp_path / "mlruns"


def test_embedded_defaults_live_under_mlruns(clean_env: Path) -> None:
    assert resolve_tracking_uri() == f"sqlite:///{clean_env / 'mlflow.db'}"
    assert resolve_storage_url() == f"journal:///{clean_env / 'optuna.journal'}"


def test_environment_overrides_default_and_flag_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    monkeypatch.setenv("TRAINLIB_OPTUNA_STORAGE", "postgresql://u@db/optuna")
    assert resolve_tracking_uri() == "http://127.0.0.1:5001"
    assert resolve_storage_url().startswith("postgresql") and resolve_storage_url().endswith("://u@db/optuna")
    assert resolve_tracking_uri("sqlite:///other.db") == "sqlite:///other.db"
    assert resolve_storage_url("journal:///tmp/x.journal") == "journal:///tmp/x.journal"


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "./mlruns", "ftp://host/x"])
def test_unsupported_tracking_uri_names_valid_schemes(uri: str) -> None:
    with pytest.raises(InvalidArgument, match="valid schemes: sqlite, postgresql, mysql, http, https"):
        resolve_tracking_uri(uri)


@pytest.mark.parametrize("url", ["redis://h/0", "optuna.db", "journal:///"])
def test_unsupported_storage_url_is_refused(url: str) -> None:
    with pytest.raises(InvalidArgument, match="storage URL"):
        resolve_storage_url(url)


def test_redact_hides_passwords_only() -> None:
    assert redact("postgresql://alice:s3cret@db:5432/optuna") == "postgresql://alice:***@db:5432/optuna"
    assert redact("postgresql://alice@db/optuna") == "postgresql://alice@db/optuna"
    assert "s3cret" not in redact("postgresql+psycopg2://alice:s3cret@db/optuna")


# ---- scale-out helpers: the server command, driver, scrubbing, bounded retries ----


def test_server_command_serves_the_local_store_on_loopback_by_default(clean_env: Path) -> None:
    command = mlflow_server_command()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == resolve_tracking_uri()
    assert command[command.index("--artifacts-destination") + 1] == str(clean_env / "artifacts")
    assert "--serve-artifacts" in command


def test_bare_postgresql_url_names_the_installed_driver() -> None:
    assert with_installed_driver("postgresql://u:p@db/optuna") == "postgresql+psycopg2://u:p@db/optuna"
    assert with_installed_driver("postgresql+psycopg2://u@db/x") == "postgresql+psycopg2://u@db/x"
    assert with_installed_driver("mysql://u@db/x") == "mysql://u@db/x"


def test_scrub_hides_the_password_in_any_text_plain_or_percent_encoded() -> None:
    url = "postgresql://alice:p%40ss@db/optuna"
    assert scrub("auth failed for p@ss and p%40ss", url) == "auth failed for *** and ***"
    assert scrub("nothing secret", "postgresql://alice@db/optuna") == "nothing secret"


def test_retry_delays_double_up_to_thirty_seconds_and_add_up_to_the_budget() -> None:
    assert retry_delays(120) == [1, 2, 4, 8, 16, 30, 30, 29]
    assert retry_delays(3) == [1, 2]


def test_call_patiently_retries_transient_errors_with_one_line_each(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("trainlib.store_failures.sleep_unless_stopped", lambda seconds: None)
    outcomes = iter([ConnectionError("refused"), ConnectionError("refused"), "ok"])

    def flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    result = call_patiently(
        flaky,
        store="tracking",
        label="tracking server http://h:5000",
        is_transient=lambda e: True,
        max_outage_seconds=60,
    )
    assert result == "ok"
    assert [record.getMessage() for record in caplog.records] == [
        "tracking server http://h:5000 unreachable, retrying in 1 s (attempt 2/7)",
        "tracking server http://h:5000 unreachable, retrying in 2 s (attempt 3/7)",
    ]


def test_call_patiently_gives_up_after_the_budget_with_one_line_and_no_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("trainlib.store_failures.sleep_unless_stopped", lambda seconds: None)
    url = "postgresql://alice:s3cret@db/optuna"

    def down() -> None:
        raise OSError(f"could not connect to {url}\nsecond line")

    with pytest.raises(StoreUnavailable) as lost:
        call_patiently(
            down, store="storage", label=redact(url), is_transient=lambda e: True, max_outage_seconds=3, secret_url=url
        )
    message = str(lost.value)
    assert lost.value.store == "storage" and "\n" not in message and "s3cret" not in message
    assert message.startswith("postgresql://alice:***@db/optuna unreachable for ") and "(3 attempts)" in message


def test_call_patiently_raises_other_errors_at_once() -> None:
    def bad_request() -> None:
        raise ValueError("invalid metric")

    with pytest.raises(ValueError, match="invalid metric"):
        call_patiently(bad_request, store="tracking", label="x", is_transient=lambda e: False, max_outage_seconds=60)
