"""Store resolution: one function each for the tracking URI and the Optuna storage, flag > env > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainlib.errors import InvalidArgument
from trainlib.stores import redact, resolve_storage_url, resolve_tracking_uri


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
