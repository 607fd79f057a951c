"""Nothing lost, nothing corrupted, nothing left RUNNING: the local stores under concurrency, damage and interrupts.

Every test uses real stores (MLflow's sqlite store, Optuna's journal) in a tmp folder and the real CLI in a
subprocess where the exit code, the one-line message or a signal is what is tested.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from sweep_helpers import HANG_SECONDS, SMOKE, cli, cli_env, load_study, runs_of, write_config

from trainlib.sweep import SweepInterrupted, load_config, plan_sweep, run_sweep
from trainlib.sweep.journal import first_damaged_record, set_aside_torn_record
from trainlib.tracking import MlflowTracker

TrialState = optuna.trial.TrialState
FAST = ("--no-progress", "--epochs", "1")


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """Wait for ``process`` (a bound that only catches a hang); its exit code and stderr."""
    _, stderr = process.communicate(timeout=HANG_SECONDS)
    return process.returncode, stderr


def error_lines(stderr: str) -> list[str]:
    """stderr's lines that are not log records (a log record starts with its level)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith(("INFO ", "WARNING ", "DEBUG "))]


def assert_nothing_running(stores: dict[str, str], study_name: str = "smoke") -> None:
    """No Optuna trial RUNNING, and no MLflow run RUNNING, in the study's stores."""
    states = [trial.state for trial in load_study(stores, study_name).trials]
    assert TrialState.RUNNING not in states, states
    parent, children = runs_of(MlflowClient(stores["tracking_uri"]), study_name)
    assert parent.info.status != "RUNNING"
    assert all(child.info.status != "RUNNING" for child in children), [c.info.status for c in children]


def wait_for_trial_run(stores: dict[str, str], process: subprocess.Popen) -> None:
    """Wait until the command has a trial's run open in MLflow (it is training)."""
    client = MlflowClient(stores["tracking_uri"])
    deadline = time.monotonic() + HANG_SECONDS
    while True:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no trial started"
        with contextlib.suppress(Exception):  # the store may not exist yet
            experiment = client.get_experiment_by_name("smoke")
            if experiment and client.search_runs([experiment.experiment_id], "tags.`trainlib.role` = 'trial'"):
                return
        time.sleep(0.5)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` read-only even for root (chattr +i), as a read-only mount would make it."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# ---- one writer at a time: commands started together on a new store ----


def test_commands_started_together_on_a_new_store_all_finish_in_one_parent(stores: dict[str, str]) -> None:
    processes = [cli("sweep", str(SMOKE), *FAST, "--n-trials", "2", env=cli_env(stores)) for _ in range(3)]
    results = [finish(process) for process in processes]
    assert [code for code, _ in results] == [0, 0, 0], [stderr[-2000:] for _, stderr in results]

    with contextlib.closing(sqlite3.connect(Path(stores["mlruns"], "mlflow.db"))) as database:
        tables = {name for (name,) in database.execute("select name from sqlite_master where type = 'table'")}
    assert not [table for table in tables if table.startswith("_alembic_tmp")], tables
    parent, children = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert len(children) == 6 and all(child.info.status == "FINISHED" for child in children)
    assert parent.info.status == "FINISHED"
    assert [trial.state for trial in load_study(stores, "smoke").trials] == [TrialState.COMPLETE] * 6


# ---- a journal that survives a torn write ----


def test_a_torn_last_journal_record_is_set_aside_and_the_study_resumes(stores: dict[str, str]) -> None:
    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "2", env=cli_env(stores)))
    assert code == 0, stderr
    journal = Path(stores["mlruns"], "optuna.journal")
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-40])  # a crash in the middle of the last append

    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 0, stderr
    assert "last record was incomplete" in stderr
    backups = list(journal.parent.glob("optuna.journal.torn-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == whole[:-40]
    assert journal.read_bytes().endswith(b"\n")
    trials = load_study(stores, "smoke").trials  # the whole study loads
    assert len(trials) >= 3
    assert {trial.state for trial in trials} <= {TrialState.COMPLETE, TrialState.FAIL}
    assert_nothing_running(stores)


def test_a_damaged_journal_record_is_one_line_with_its_offset_exit_3(stores: dict[str, str]) -> None:
    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 0, stderr
    journal = Path(stores["mlruns"], "optuna.journal")
    lines = journal.read_bytes().splitlines(keepends=True)
    offset = sum(len(line) for line in lines[:3])
    journal.write_bytes(b"".join(lines[:3]) + b"\xff\xfe not a record\n" + b"".join(lines[3:]))
    before = sha256(journal)

    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 3
    assert error_lines(stderr) == [error_lines(stderr)[0]] and f"damaged at byte {offset}" in stderr, stderr
    assert sha256(journal) == before


def test_journal_checks_find_the_torn_and_the_damaged_record(tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    journal.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3')
    backup = set_aside_torn_record(journal)
    assert journal.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert backup is not None and backup.read_bytes() == b'{"a": 1}\n{"b": 2}\n{"c": 3'
    assert set_aside_torn_record(journal) is None  # a whole journal is left as it is

    journal.write_bytes(b'{"a": 1}\n{"b": \n{"c": 3}\n')
    assert first_damaged_record(journal)[0] == len(b'{"a": 1}\n')


# ---- a trial left RUNNING by a killed command (no heartbeats on a journal) ----


def test_a_trial_of_a_killed_command_is_failed_retried_and_its_run_ended(
    stores: dict[str, str], tmp_path: Path
) -> None:
    config = write_config(tmp_path, "long.toml", epochs="200")
    process = cli("sweep", str(config), "--no-progress", env=cli_env(stores))
    wait_for_trial_run(stores, process)
    process.kill()
    process.communicate(timeout=HANG_SECONDS)

    code, stderr = finish(cli("sweep", str(config), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 0, stderr
    trials = load_study(stores, "smoke").trials
    assert trials[0].state == TrialState.FAIL
    retries = [trial for trial in trials if trial.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert_nothing_running(stores)
    _, children = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    killed = [child for child in children if child.data.tags["optuna.trial_number"] == "0"]
    assert [child.info.status for child in killed] == ["KILLED"]
    assert "command is gone" in killed[0].data.tags["optuna.reason"]


# ---- stores that disagree are found before a trial runs ----


@pytest.mark.parametrize("mlflow_store", ["missing", "empty"])
def test_a_study_whose_parent_run_is_not_in_the_mlflow_store_is_exit_2_and_adds_nothing(
    stores: dict[str, str], mlflow_store: str
) -> None:
    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 0, stderr
    database = Path(stores["mlruns"], "mlflow.db")
    database.unlink()
    if mlflow_store == "empty":
        database.write_bytes(b"")
    trials_before = len(load_study(stores, "smoke").trials)

    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 2
    assert len(error_lines(stderr)) == 1, stderr
    assert "records MLflow parent run" in stderr and "--study-name" in stderr
    assert len(load_study(stores, "smoke").trials) == trials_before


def test_a_corrupt_mlflow_store_is_one_line_exit_3_and_adds_nothing(stores: dict[str, str]) -> None:
    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 0, stderr
    Path(stores["mlruns"], "mlflow.db").write_bytes(b"this is not a database" * 100)
    trials_before = len(load_study(stores, "smoke").trials)

    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 3
    assert error_lines(stderr) == [error_lines(stderr)[0]] and "corrupt" in stderr, stderr
    assert len(load_study(stores, "smoke").trials) == trials_before


# ---- store failures classified: read-only at once (3), wrong path (2), unreachable waited out (3) ----


def test_a_read_only_mlflow_store_is_one_line_exit_3_at_once(stores: dict[str, str]) -> None:
    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 0, stderr
    database = Path(stores["mlruns"], "mlflow.db")
    with immutable(database):
        # With the default --max-outage a store retried as if unreachable would take minutes; at once means
        # the message says read-only, not "unreachable for N s".
        code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 3
    lines = error_lines(stderr)
    assert len(lines) == 1 and "read-only" in lines[0] and "unreachable" not in lines[0], stderr


def test_a_read_only_store_folder_is_exit_3_and_writes_nothing(stores: dict[str, str]) -> None:
    mlruns = Path(stores["mlruns"])
    mlruns.mkdir()
    with immutable(mlruns):
        code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 3
    assert len(error_lines(stderr)) == 1 and "read-only" in stderr, stderr
    assert list(mlruns.iterdir()) == []


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_a_storage_path_that_cannot_be_a_journal_is_exit_2(stores: dict[str, str], tmp_path: Path, where: str) -> None:
    path = tmp_path if where == "a folder" else SMOKE / "optuna.journal"
    code, stderr = finish(cli("sweep", str(SMOKE), "--storage", f"journal:///{path}", env=cli_env(stores)))
    assert code == 2
    assert len(error_lines(stderr)) == 1, stderr
    assert ("is a folder" if where == "a folder" else "is a file, not a folder") in stderr
    assert not Path(stores["mlruns"]).exists()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("store", ["--tracking-uri", "--storage"])
def test_an_unreachable_postgresql_is_waited_out_then_one_line_exit_3(stores: dict[str, str], store: str) -> None:
    url = f"postgresql://trainlib@127.0.0.1:{closed_port()}/nothing"
    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, store, url, "--max-outage", "5", env=cli_env(stores)))
    assert code == 3
    lines = error_lines(stderr)
    assert len(lines) == 1 and "unreachable for" in lines[0], stderr
    assert "unreachable, retrying" in stderr  # waited out, with one log line per retry


# ---- every way out ends every run ----


def test_ctrl_c_pressed_again_and_again_ends_every_run(stores: dict[str, str], tmp_path: Path) -> None:
    config = write_config(tmp_path, "long.toml", epochs="200")
    process = cli("sweep", str(config), "--no-progress", "--storage", stores["storage"], env=cli_env(stores))
    wait_for_trial_run(stores, process)
    for _ in range(3):
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
    code, stderr = finish(process)
    assert code == 130, stderr[-3000:]
    assert f"--storage {stores['storage']}" in stderr  # the resume hint repeats the store flags given
    assert_nothing_running(stores)
    parent, _ = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert parent.info.status == "KILLED"


def test_sigterm_ends_every_run_and_is_recorded_as_sigterm(stores: dict[str, str], tmp_path: Path) -> None:
    config = write_config(tmp_path, "long.toml", epochs="200")
    process = cli("sweep", str(config), "--no-progress", env=cli_env(stores))
    wait_for_trial_run(stores, process)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 143, stderr[-3000:]
    assert_nothing_running(stores)
    parent, children = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert parent.info.status == "KILLED"
    assert parent.data.tags["trainlib.end_reason"] == "interrupted (SIGTERM) during trials"
    assert [child.data.tags["optuna.reason"] for child in children] == ["interrupted (SIGTERM)"]


def test_ctrl_c_while_a_lost_tracking_server_is_waited_out_stops_at_once(stores: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    process = cli("sweep", str(SMOKE), *FAST, "--tracking-uri", url, "--max-outage", "3600", env=cli_env(stores))
    # Wait for the first retry line: the command is waiting out the lost server.
    for line in process.stderr:
        if "unreachable, retrying" in line:
            break
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process)
    assert code == 130, stderr[-3000:]  # not 3 after an hour: the wait ended with the interrupt


@pytest.fixture
def signal_handlers_kept() -> Iterator[None]:
    """The CLI installs its SIGINT/SIGTERM handlers in-process; put pytest's back afterwards."""
    kept = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, kept[0])
    signal.signal(signal.SIGTERM, kept[1])


def interrupt_at(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> None:
    """Make ``target.name`` raise KeyboardInterrupt, as a Ctrl-C landing there would."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(target, name, interrupted)


@pytest.mark.usefixtures("signal_handlers_kept")
def test_ctrl_c_during_the_report_ends_the_parent_killed_with_a_hint(
    stores: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import trainlib.sweep.report
    from trainlib.cli import main

    interrupt_at(monkeypatch, trainlib.sweep.report, "plot_study")
    monkeypatch.setattr("trainlib.cli.exit_now", sys.exit)  # the CLI's exit skips shutdown: not inside pytest
    with pytest.raises(SystemExit) as stopped:
        main(["sweep", str(SMOKE), *FAST, "--n-trials", "1"])
    assert stopped.value.code == 130
    stderr = capsys.readouterr().err
    assert "the report was not written" in stderr and "--n-trials 0" in stderr
    parent, _ = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert parent.info.status == "KILLED"
    assert parent.data.tags["trainlib.end_reason"] == "interrupted (SIGINT) during report"
    assert_nothing_running(stores)


def test_a_crash_on_the_tracking_thread_ends_the_parent_and_trial_runs(
    stores: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: MlflowTracker, *args: object) -> None:
        raise OSError(36, "File name too long")

    monkeypatch.setattr(MlflowTracker, "_log_weights", crash)
    with pytest.raises(OSError, match="File name too long"):
        run_sweep(plan_sweep(load_config(SMOKE), SMOKE, n_trials=2), show_progress=False)
    parent, children = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert parent.info.status == "FAILED"
    assert "File name too long" in parent.data.tags["trainlib.end_reason"]
    assert children and all(child.info.status == "FAILED" for child in children)
    assert_nothing_running(stores)


def test_an_interrupt_at_startup_leaves_nothing_running(
    stores: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainlib.sweep

    interrupt_at(monkeypatch, trainlib.sweep, "open_study")
    with pytest.raises(SweepInterrupted) as stopped:
        run_sweep(plan_sweep(load_config(SMOKE), SMOKE, n_trials=1), show_progress=False)
    assert stopped.value.during == "startup"
    assert not Path(stores["mlruns"], "optuna.journal").exists()


# ---- a resume that cannot be compared with the study's trials ----


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"batch_size": "[16, 32]"}, ["batch_size", "[32, 64]", "[16, 32]"]),
        ({"hidden_sizes": "[64]"}, ["[model]", "new --study-name"]),
    ],
    ids=["categorical choices", "model"],
)
def test_a_resume_with_a_changed_search_space_or_model_is_exit_2_and_adds_nothing(
    stores: dict[str, str], tmp_path: Path, change: dict[str, str], words: list[str]
) -> None:
    code, stderr = finish(cli("sweep", str(SMOKE), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 0, stderr
    changed = write_config(tmp_path, "changed.toml", **change)
    code, stderr = finish(cli("sweep", str(changed), *FAST, "--n-trials", "1", env=cli_env(stores)))
    assert code == 2
    lines = error_lines(stderr)
    assert len(lines) == 1 and all(word in lines[0] for word in words), stderr
    assert len(load_study(stores, "smoke").trials) == 1
    assert_nothing_running(stores)
