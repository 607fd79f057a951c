"""Scale-out with the real thing: PostgreSQL for Optuna, `mlflow server` for tracking, `trainlib sweep` workers.

Every worker is its own `trainlib sweep` process, as it would be on its own machine. PostgreSQL runs from
initdb/pg_ctl in a temporary folder as an unprivileged user; the tracking server is `trainlib server` (the
command `make server` runs) on a free loopback port. Both are shared by the tests of this module.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from trainlib.stores import redact, with_installed_driver

pytestmark = pytest.mark.slow

TRAINLIB = str(Path(sys.executable).parent / "trainlib")
DB_USER = "trainlib"
PASSWORD = "Pg-s3cret-never-logged"  # must not appear in any MLflow param, tag, artifact or log
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second")
# Heartbeats every second, a dead worker's trial failed after 3 s without one (defaults: 10 s / 30 s).
FAST_HEARTBEATS = ("--heartbeat-interval", "1", "--grace-period", "3")
# Bounds on waits only catch hangs: events order every test, and a loaded 2-core machine may be slow.
HANG_SECONDS = 600
PATIENT = ("--max-outage", str(HANG_SECONDS))  # a restart of a store on a loaded machine is waited out
TINY_CONFIG = """\
[study]
name = "placeholder"
direction = "maximize"
metric = "val_accuracy"
n_trials = 4
sampler = "random"
pruner = "none"

[data]
dataset = "digits"

[model]
name = "mlp"
hidden_sizes = [16]

[training]
epochs = {epochs}
device = "cpu"

[search]
lr = {{ low = 1e-3, high = 3e-2 }}
batch_size = [64, 128]
optimizer = ["sgd", "adam"]
momentum = {{ low = 0.0, high = 0.9 }}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: object, timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll ``condition()`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# ---- PostgreSQL ----


def postgres_program(name: str) -> str:
    found = shutil.which(name) or (sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [None])[-1]
    if found is None:
        pytest.fail(f"PostgreSQL's {name} not found; `make system-deps` installs it")
    return found


def unprivileged_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as (initdb refuses root); None when the tests already run unprivileged."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "trainlib-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "trainlib-pg"], check=True
    )
    return pwd.getpwnam("trainlib-pg")


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on a loopback port, password-protected."""

    folder: Path
    port: int
    account: pwd.struct_passwd | None

    def pg_ctl(self, *args: str) -> None:
        self.run_as_owner(postgres_program("pg_ctl"), "-D", str(self.folder / "data"), *args)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c full_page_writes=off"
        self.pg_ctl("-l", str(self.folder / "postgres.log"), "-o", options, "-w", "-t", "600", "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "-t", "600", "stop")

    def url(self) -> str:
        return f"postgresql://{DB_USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def run_as_owner(self, *command: str) -> None:
        owner = {"user": self.account.pw_uid, "group": self.account.pw_gid} if self.account else {}
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder, **owner)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server for the session (initdb + pg_ctl as an unprivileged user), stopped at the end."""
    account = unprivileged_user()
    folder = Path(tempfile.mkdtemp(prefix="trainlib-pg-"))
    if account:
        os.chown(folder, account.pw_uid, account.pw_gid)
    server = Postgres(folder, free_port(), account)
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    if account:
        os.chown(password_file, account.pw_uid, account.pw_gid)
    server.run_as_owner(
        postgres_program("initdb"),
        *("-D", str(folder / "data"), "-U", DB_USER, f"--pwfile={password_file}", "--auth=scram-sha-256"),
        *("-E", "UTF8", "--no-sync"),
    )
    server.start()
    yield server
    with contextlib.suppress(subprocess.CalledProcessError):  # a test left it stopped
        server.pg_ctl("-m", "immediate", "stop")
    shutil.rmtree(folder, ignore_errors=True)


# ---- the MLflow tracking server ----


@dataclass
class TrackingServer:
    """`trainlib server` (what `make server` runs) on a loopback port, with a sqlite backend in a tmp folder."""

    folder: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            *(TRAINLIB, "server", "--port", str(self.port)),
            *("--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"),
            *("--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"),
        ]
        # Its own session, so that kill() takes uvicorn's worker processes down with it.
        with open(self.folder / "server.log", "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, HANG_SECONDS, f"the tracking server on port {self.port}", interval=0.5)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"tracking server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        wait_for(lambda: not self._port_in_use(), HANG_SECONDS, "the tracking server's port to close")

    def _port_in_use(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """A real `mlflow server --serve-artifacts` for the session, killed at the end."""
    server = TrackingServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    server.start()
    yield server
    server.kill()


# ---- workers ----


def unique(name: str) -> str:
    """A study name no other test (or repetition of this one, pytest --count) uses on the shared servers."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def write_config(folder: Path, epochs: int = 3) -> Path:
    path = folder / "tiny.toml"
    path.write_text(TINY_CONFIG.format(epochs=epochs))
    return path


STARTED_WORKERS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test() -> Iterator[None]:
    """A test that fails half-way must not leave a worker behind (a victim would train 100000 epochs)."""
    yield
    while STARTED_WORKERS:
        worker = STARTED_WORKERS.pop()
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)  # a worker frozen by the test would not die of SIGKILL until resumed
            worker.kill()
            worker.wait(timeout=HANG_SECONDS)


def start_worker(
    config: Path, study: str, storage: str, tracking_uri: str, log: Path, *options: str
) -> subprocess.Popen:
    """One `trainlib sweep` command, as on its own machine; its output goes to ``log``."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(TRAINLIB_MLRUNS_DIR=str(log.parent / "mlruns"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [TRAINLIB, "sweep", str(config), "--study-name", study, "--storage", storage]
    command += ["--tracking-uri", tracking_uri, "--no-progress", *options]
    with open(log, "w") as output:
        worker = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    STARTED_WORKERS.append(worker)
    return worker


def finish(workers: list[subprocess.Popen], logs: list[Path], timeout: float = HANG_SECONDS) -> None:
    """Wait for every worker; fail with the log of one that exits non-zero."""
    deadline = time.monotonic() + timeout
    for worker, log in zip(workers, logs, strict=True):
        worker.wait(timeout=max(1, deadline - time.monotonic()))
        assert worker.returncode == 0, f"{log.name} exited {worker.returncode}:\n{log.read_text()[-3000:]}"


@functools.cache
def reading_storage(url: str) -> optuna.storages.RDBStorage:
    """One storage, so one small connection pool, per database for the tests' own reads.

    A new storage per poll would hold a connection each until garbage-collected; on a loaded machine a test
    polls often enough to exhaust PostgreSQL's 100 connections ("sorry, too many clients already").
    """
    return optuna.storages.RDBStorage(with_installed_driver(url), engine_kwargs={"pool_pre_ping": True})


def study_trials(postgres: Postgres, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=reading_storage(postgres.url())).get_trials(deepcopy=False)


def experiment_runs(client: MlflowClient, study: str) -> tuple[list[object], list[object]]:
    """(parent runs, child runs) of the study's experiment, deleted ones included."""
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    parents = [run for run in runs if run.data.tags.get("trainlib.role") == "study"]
    children = [run for run in runs if run.data.tags.get("trainlib.role") == "trial"]
    assert len(parents) + len(children) == len(runs), "runs that are neither the parent nor a trial"
    return parents, children


def runs_of_worker(client: MlflowClient, study: str, worker: subprocess.Popen, status: str = "") -> list[object]:
    """The child runs a worker process created (optionally only those with ``status``)."""
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    filter_string = f"tags.`trainlib.worker` = '{socket.gethostname()}:{worker.pid}'"
    if status:
        filter_string += f" and attributes.status = '{status}'"
    return client.search_runs([experiment.experiment_id], filter_string=filter_string)


# ---- three workers, one study, and the tracking server restarted under them ----


@dataclass
class ThreeWorkerSweep:
    study: str
    epochs: int
    logs: list[Path]


@pytest.fixture(scope="module")
def three_worker_sweep(
    postgres: Postgres, tracking_server: TrackingServer, tmp_path_factory: pytest.TempPathFactory
) -> ThreeWorkerSweep:
    """Three `trainlib sweep --n-trials 4` commands started at once on one study (a fresh database).

    Once every worker is in its trials and one has a run open, the tracking server is killed (SIGKILL); it is
    started again on the same port once a worker has logged that it is waiting for it. One sweep serves the
    counting, metric and password tests: on two CPU cores each worker process costs tens of seconds of
    start-up, so the scenarios share it.
    """
    folder = tmp_path_factory.mktemp("three-workers")
    epochs = 3
    config = write_config(folder, epochs=epochs)
    client = MlflowClient(tracking_server.url)
    logs = [folder / f"worker-{index}.log" for index in range(3)]
    workers = [
        start_worker(config, "three", postgres.url(), tracking_server.url, log, "--n-trials", "4", *PATIENT)
        for log in logs
    ]
    wait_for(lambda: all(runs_of_worker(client, "three", worker) for worker in workers), HANG_SECONDS, "every trial")
    # A worker with an open run must still end it, so it surely meets the server down.
    wait_for(lambda: any(runs_of_worker(client, "three", w, "RUNNING") for w in workers), HANG_SECONDS, "an open run")
    tracking_server.kill()
    wait_for(lambda: retry_lines(logs, tracking_server), HANG_SECONDS, "a worker to wait for the tracking server")
    tracking_server.start()
    finish(workers, logs)
    return ThreeWorkerSweep("three", epochs, logs)


def test_three_workers_make_twelve_trials_and_twelve_child_runs_under_one_parent(
    three_worker_sweep: ThreeWorkerSweep, postgres: Postgres, tracking_server: TrackingServer
) -> None:
    trials = study_trials(postgres, three_worker_sweep.study)
    assert sorted(trial.number for trial in trials) == list(range(12))
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    # Commands that join at once must not replay each other's draws.
    assert len({tuple(sorted(trial.params.items())) for trial in trials}) == 12, "workers drew the same params"

    client = MlflowClient(tracking_server.url)
    parents, children = experiment_runs(client, three_worker_sweep.study)
    assert len(parents) == 1, f"{len(parents)} parent runs"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(children) == 12
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {parent.info.run_id}
    assert {child.info.status for child in children} == {"FINISHED"}
    by_number = {int(child.data.tags["optuna.trial_number"]): child.info.run_id for child in children}
    assert by_number == {trial.number: trial.user_attrs["mlflow_run_id"] for trial in trials}, "orphan child runs"
    # The command that finished last (no trial running anywhere) wrote the report, and it lists all 12 trials.
    reported = [path.path for path in client.list_artifacts(parent.info.run_id, "report")]
    assert "report/trials.csv" in reported
    trials_csv = Path(client.download_artifacts(parent.info.run_id, "report/trials.csv", str(tempfile.mkdtemp())))
    assert len(trials_csv.read_text().strip().splitlines()) == 1 + 12


def retry_lines(logs: list[Path], tracking_server: TrackingServer) -> list[str]:
    """The lines of ``logs`` in which a worker says it waits for the tracking server."""
    waiting = f"tracking server {tracking_server.url} unreachable, retrying in"
    return [line for log in logs if log.exists() for line in log.read_text().splitlines() if waiting in line]


def test_tracking_server_restart_mid_sweep_loses_no_epoch_metric(
    three_worker_sweep: ThreeWorkerSweep, tracking_server: TrackingServer
) -> None:
    assert retry_lines(three_worker_sweep.logs, tracking_server), "no worker logged that it waited for the server"
    client = MlflowClient(tracking_server.url)
    _, children = experiment_runs(client, three_worker_sweep.study)
    assert len(children) == 12
    for child in children:
        for key in EPOCH_METRICS:
            steps = sorted(metric.step for metric in client.get_metric_history(child.info.run_id, key))
            assert steps == list(range(1, three_worker_sweep.epochs + 1)), f"{key} of {child.info.run_name}: {steps}"


def test_storage_password_appears_in_no_param_tag_artifact_or_log(
    three_worker_sweep: ThreeWorkerSweep, tracking_server: TrackingServer, postgres: Postgres, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_server.url)
    parents, children = experiment_runs(client, three_worker_sweep.study)
    for run in [*parents, *children]:
        for key, value in [*run.data.params.items(), *run.data.tags.items()]:
            assert PASSWORD not in value, f"password in {key} of run {run.info.run_name}"
        folder = tmp_path / run.info.run_id
        client.download_artifacts(run.info.run_id, "", str(folder))
        for path in folder.rglob("*"):
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), f"password in artifact {path.name}"
    assert parents[0].data.tags["optuna_storage"] == redact(with_installed_driver(postgres.url()))
    for log in [*three_worker_sweep.logs, tracking_server.folder / "server.log"]:
        assert PASSWORD not in log.read_text(), f"password in {log.name}"


def test_concurrent_starts_on_a_study_without_parent_agree_on_one(
    postgres: Postgres, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """Many commands joining a study nobody made a parent run for (e.g. created with --no-tracking): one wins."""
    from trainlib.sweep.storage import open_storage
    from trainlib.sweep.study import StudyParentSlot
    from trainlib.tracking import MlflowTracker

    storage_url = with_installed_driver(postgres.url())
    orphan = unique("orphan")
    optuna.create_study(study_name=orphan, storage=open_storage(storage_url))
    config = write_config(tmp_path)
    barrier = threading.Barrier(4)
    parent_ids: list[str] = []

    def join() -> None:
        storage = open_storage(storage_url)
        study = optuna.load_study(study_name=orphan, storage=storage)
        tracker = MlflowTracker(tracking_server.url, orphan)
        barrier.wait()
        tracker.start_sweep(StudyParentSlot(study, storage), False, {"study.name": orphan}, {}, config)
        parent_ids.append(tracker.wait_for_parent_run_id())

    threads = [threading.Thread(target=join) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_SECONDS)
    assert len(parent_ids) == 4 and len(set(parent_ids)) == 1, parent_ids
    parents, _ = experiment_runs(MlflowClient(tracking_server.url), orphan)
    assert [parent.info.run_id for parent in parents] == parent_ids[:1]
    names = optuna.get_all_study_names(reading_storage(postgres.url()))
    assert not [name for name in names if name.startswith(f"{orphan}:")], "claim left"


# ---- failures: a killed worker, a restarted tracking server, a restarted database ----


def training_trial(postgres: Postgres, study: str) -> optuna.trial.FrozenTrial | None:
    """The study's RUNNING trial once it has reported an epoch (so its heartbeat thread has started), else None."""
    try:
        trials = study_trials(postgres, study)
    except KeyError:  # the study is not created yet
        return None
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values]
    return running[0] if running else None


def start_victim(config: Path, study: str, stores: tuple[str, str], log: Path) -> subprocess.Popen:
    """A worker whose one trial would train for hours: it is surely killed in the middle of it."""
    return start_worker(config, study, *stores, log, *FAST_HEARTBEATS, "--n-trials", "1", "--epochs", "100000")


def wait_until_training(
    postgres: Postgres, client: MlflowClient, study: str, victim: subprocess.Popen
) -> tuple[optuna.trial.FrozenTrial, object]:
    """(trial, MLflow run) of the victim once it trains an epoch with its run open."""
    trial = wait_for(lambda: training_trial(postgres, study), HANG_SECONDS, "the victim's trial to train an epoch")
    run = wait_for(lambda: runs_of_worker(client, study, victim, "RUNNING"), HANG_SECONDS, "the victim's run")[0]
    return trial, run


@dataclass
class KilledStudy:
    """A study whose first worker (the victim) is training its one endless trial."""

    name: str
    config: Path
    client: MlflowClient
    stores: tuple[str, str]
    victim: subprocess.Popen
    dead: optuna.trial.FrozenTrial
    victim_run: object


def start_killed_study(kind: str, postgres: Postgres, tracking_server: TrackingServer, tmp_path: Path) -> KilledStudy:
    """Start a victim on a new study and wait until it trains (it is killed by the test)."""
    study, config = unique(kind), write_config(tmp_path)
    client = MlflowClient(tracking_server.url)
    stores = (postgres.url(), tracking_server.url)
    victim = start_victim(config, study, stores, tmp_path / "victim.log")
    dead, victim_run = wait_until_training(postgres, client, study, victim)
    return KilledStudy(study, config, client, stores, victim, dead, victim_run)


def assert_retried_once_and_reported(
    postgres: Postgres, client: MlflowClient, study: str, dead_number: int, victim_run_id: str, new_trials: int
) -> None:
    """The dead trial FAIL, one COMPLETE retry with its params, nothing RUNNING; the parent holds the report."""
    trials = study_trials(postgres, study)
    dead = next(trial for trial in trials if trial.number == dead_number)
    assert dead.state == optuna.trial.TrialState.FAIL
    retries = [trial for trial in trials if trial.system_attrs.get("failed_trial") == dead_number]
    assert len(retries) == 1, "the dead trial was not retried exactly once"
    assert retries[0].params == dead.params and retries[0].state == optuna.trial.TrialState.COMPLETE
    # --n-trials counts new trials; the retry replaces the lost one, in addition.
    states = sorted(trial.state.name for trial in trials)
    assert states == ["COMPLETE"] * (new_trials + 1) + ["FAIL"], states

    parents, children = experiment_runs(client, study)
    assert len(parents) == 1 and len(children) == len(trials)
    parent = parents[0]
    statuses = {run.info.run_id: run.info.status for run in [*parents, *children]}
    assert statuses.pop(victim_run_id) == "KILLED"
    assert set(statuses.values()) == {"FINISHED"}, "a run stayed RUNNING"
    killed_run = client.get_run(victim_run_id)
    assert killed_run.data.tags["optuna.state"] == "FAIL"
    assert "no heartbeat" in killed_run.data.tags["optuna.reason"]
    retry_run = next(child for child in children if child.data.tags.get("optuna.retry_of") == str(dead_number))
    assert retry_run.data.tags["optuna.trial_number"] == str(retries[0].number)
    # The report covers every trial, the retry included, and the best model was tested and logged.
    assert "test_accuracy" in parent.data.metrics
    assert parent.data.tags["best_trial_number"] in {str(trial.number) for trial in trials if trial.value is not None}
    trials_csv = Path(client.download_artifacts(parent.info.run_id, "report/trials.csv", str(tempfile.mkdtemp())))
    assert len(trials_csv.read_text().strip().splitlines()) == 1 + len(trials)


def test_sigkilled_worker_trial_is_failed_retried_once_and_reported_by_the_survivor(
    postgres: Postgres, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """A worker dies while the only other one is mid-way through short trials.

    Whether the survivor's share ends before the dead trial's grace period or after, the survivor fails the
    trial, retries it once and, the last worker alive, writes the report. The order is forced by events: the
    survivor is frozen (SIGSTOP) in one of its trials while the victim is killed.
    """
    killed = start_killed_study("killed", postgres, tracking_server, tmp_path)
    study, config, client, stores, victim = killed.name, killed.config, killed.client, killed.stores, killed.victim
    log = tmp_path / "survivor.log"
    survivor = start_worker(config, study, *stores, log, *FAST_HEARTBEATS, "--n-trials", "3")
    wait_for(lambda: runs_of_worker(client, study, survivor, "RUNNING"), HANG_SECONDS, "the survivor's trial")
    survivor.send_signal(signal.SIGSTOP)
    try:
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=HANG_SECONDS) == -signal.SIGKILL
    finally:
        survivor.send_signal(signal.SIGCONT)
    finish([survivor], [log])

    run_id = killed.victim_run.info.run_id
    assert_retried_once_and_reported(postgres, client, study, killed.dead.number, run_id, new_trials=3)
    assert "other workers are still running trials" not in log.read_text()


def test_when_every_worker_died_n_trials_0_retries_and_reports(
    postgres: Postgres, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """The study's only worker is killed; the next command with --n-trials 0 finishes the study."""
    killed = start_killed_study("all-dead", postgres, tracking_server, tmp_path)
    study, config, client, stores, victim = killed.name, killed.config, killed.client, killed.stores, killed.victim
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=HANG_SECONDS) == -signal.SIGKILL
    parents, _ = experiment_runs(client, study)
    assert parents[0].info.status == "RUNNING"  # what a dead study looks like until a command finishes it

    log = tmp_path / "finisher.log"
    finish([start_worker(config, study, *stores, log, *FAST_HEARTBEATS, "--n-trials", "0")], [log])

    run_id = killed.victim_run.info.run_id
    assert_retried_once_and_reported(postgres, client, study, killed.dead.number, run_id, new_trials=0)
    assert "best model's test accuracy" in log.read_text()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Optuna: heartbeats are meant for Study.optimize, not ask
def test_a_live_local_worker_is_never_failed_however_late_its_heartbeat(postgres: Postgres) -> None:
    """A loaded machine can delay a heartbeat past the grace period; a trial whose process still runs here stays."""
    from trainlib.sweep.stale_trials import WORKER_ATTR, fail_stale_trials, worker_identity
    from trainlib.sweep.storage import open_storage

    storage = open_storage(with_installed_driver(postgres.url()), heartbeat_interval=1, grace_period=2)
    name = unique("late")
    study = optuna.create_study(study_name=name, storage=storage)
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive, dead = study.ask(), study.ask()
    alive.set_user_attr(WORKER_ATTR, worker_identity())
    dead.set_user_attr(WORKER_ATTR, worker_identity(gone.pid))
    study_id = storage.get_study_id_from_name(name)
    for trial in (alive, dead):
        storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    time.sleep(3)  # both heartbeats are now older than the 2 s grace period

    fail_stale_trials(study)

    states = {trial.number: trial.state for trial in study.get_trials(deepcopy=False)}
    assert states == {alive.number: optuna.trial.TrialState.RUNNING, dead.number: optuna.trial.TrialState.FAIL}


def test_database_restart_mid_sweep_is_waited_out(
    postgres: Postgres, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    study = unique("db-restart")
    config = write_config(tmp_path, epochs=6)
    client = MlflowClient(tracking_server.url)
    log = tmp_path / "worker.log"
    worker = start_worker(config, study, postgres.url(), tracking_server.url, log, "--n-trials", "3", *PATIENT)
    # Frozen with a trial open, the worker must still tell the database how it ended: it surely meets it down.
    wait_for(lambda: runs_of_worker(client, study, worker, "RUNNING"), HANG_SECONDS, "the first trial")
    worker.send_signal(signal.SIGSTOP)
    try:
        postgres.stop()
    finally:
        worker.send_signal(signal.SIGCONT)
    waiting = f"Optuna storage {redact(with_installed_driver(postgres.url()))} unreachable, retrying in"
    try:
        wait_for(lambda: waiting in log.read_text(), HANG_SECONDS, "the worker to wait for the database")
    finally:
        postgres.start()
    finish([worker], [log])

    text = log.read_text()
    assert waiting in text
    assert PASSWORD not in text
    assert [trial.state.name for trial in study_trials(postgres, study)] == ["COMPLETE"] * 3


def test_store_gone_for_good_ends_the_worker_with_one_line_and_exit_code_3(postgres: Postgres, tmp_path: Path) -> None:
    dead_server = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "worker.log"
    worker = start_worker(write_config(tmp_path), unique("gone"), postgres.url(), dead_server, log, "--max-outage", "3")
    assert worker.wait(timeout=HANG_SECONDS) == 3
    lines = log.read_text().strip().splitlines()
    assert any(f"tracking server {dead_server} unreachable, retrying in 1 s (attempt 2/" in line for line in lines)
    gave_up = re.fullmatch(
        rf"trainlib: error: tracking server {re.escape(dead_server)} unreachable for (\d+) s \((\d+) attempts\).*",
        lines[-1],
    )
    assert gave_up, lines[-1]
    # --max-outage 3 was honoured (the default would be 120 s and 9 attempts), by the worker's own clock.
    assert int(gave_up.group(1)) < 60 and int(gave_up.group(2)) <= 4, lines[-1]
    assert "Traceback" not in log.read_text()


# ---- make server ----


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_server_serves_the_local_store_on_loopback_and_prints_no_password(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRAINLIB_MLRUNS_DIR": str(tmp_path / "mlruns")}
    default = subprocess.run(
        ["make", "-s", "server", "SERVER_ARGS=--dry-run"], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "-m mlflow server --host 127.0.0.1 --port 5000" in default
    assert f"--backend-store-uri sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'} --serve-artifacts" in default
    assert f"--artifacts-destination {tmp_path / 'mlruns' / 'artifacts'}" in default

    database = f"postgresql://mlflow:{PASSWORD}@db.example:5432/mlflow"
    custom = subprocess.run(
        ["make", "-s", "server", "PORT=5099", f"BACKEND_STORE_URI={database}", "SERVER_ARGS=--dry-run"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--port 5099" in custom.stdout and "postgresql+psycopg2://mlflow:***@db.example:5432/mlflow" in custom.stdout
    assert PASSWORD not in custom.stdout + custom.stderr
    assert not (tmp_path / "mlruns").exists(), "a dry run created the store"


def test_a_spent_time_budget_leaves_a_dead_workers_retry_for_a_later_command() -> None:
    from trainlib.sweep.stale_trials import StaleTrialReaper, wait_for_other_trials

    study = optuna.create_study()
    dead = study.ask()
    study.tell(dead, state=optuna.trial.TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[0])
    retries: list[int] = []

    def run_retry() -> None:
        retries.append(1)
        study.optimize(lambda trial: 0.0, n_trials=1)  # runs the waiting retry

    reaper = StaleTrialReaper(study, interval_seconds=3600)  # not started: only its lock is used
    waiting = {"grace_period": 1, "heartbeat_interval": 1, "run_retry": run_retry}

    assert wait_for_other_trials(study, reaper, **waiting, may_start_trials=lambda: False) is True
    assert retries == [] and study.trials[-1].state == optuna.trial.TrialState.WAITING  # kept for a rerun
    assert wait_for_other_trials(study, reaper, **waiting) is True
    assert retries == [1] and study.trials[-1].state == optuna.trial.TrialState.COMPLETE
