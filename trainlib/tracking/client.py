"""MLflow, configured once and reached through a client that waits out an unreachable tracking server."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import socket
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any

import mlflow
import requests
import torch
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainlib.store_failures import (
    MAX_OUTAGE_SECONDS,
    StoreDamaged,
    StoreUnavailable,
    call_patiently,
    check_sqlite_file,
    database_unreachable,
    probe_database,
    store_damage,
)
from trainlib.stores import is_database_server, local_artifact_location, redact, sqlite_path
from trainlib.workload import git_commit

RUN_KEY_TAG = "trainlib.run_key"
_TRANSIENT_HTTP_STATUS = (429, 502, 503, 504)

# Set by configure_mlflow unless the environment already sets them.
MLFLOW_DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # our own progress bar is enough
    # PatientClient owns retries, their log line and their time bound; MLflow's own HTTP retries would add
    # minutes of silent waiting on top (7 by default), so they are off unless the environment asks for them.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # Against a server, ending a run would also fetch it again just to print its address: a request per trial.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def configure_mlflow() -> None:
    """MLflow settings trainlib relies on (environment defaults a user's own settings override); idempotent."""
    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """MLflow's fluent API (mlflow.start_run, log_model) on ``tracking_uri`` inside the block, as before it after."""
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def tracking_unreachable(error: BaseException) -> bool:
    """True when ``error`` means the tracking server or database is down, restarting or busy (not a bad request)."""
    if store_damage(error) is not None:
        return False
    if database_unreachable(error):  # a database store (sqlite, PostgreSQL, MySQL) reached without a server
        return True
    if isinstance(error, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, requests.HTTPError):  # artifact uploads through the server's proxy
        return error.response is not None and error.response.status_code in _TRANSIENT_HTTP_STATUS
    if isinstance(error, MlflowException):
        text = str(error)
        if text.startswith("API request to") and ("failed with exception" in text or "timeout exception" in text):
            return True
        return error.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    return False


class PatientClient:
    """An MlflowClient whose every call waits out an unreachable tracking server, for a bounded time.

    Attribute access forwards to MlflowClient, each call wrapped in store_failures.call_patiently; create_run is
    made idempotent (a retried create finds the run the lost response created instead of making a second one).
    """

    def __init__(self, tracking_uri: str, max_outage_seconds: float = MAX_OUTAGE_SECONDS) -> None:
        configure_mlflow()  # the time bound above holds only with MLflow's own retries off
        self.tracking_uri = tracking_uri
        self.max_outage_seconds = max_outage_seconds
        self.client = self._open_store()

    def _open_store(self) -> MlflowClient:
        """A client on the store, opened (and the first time created and migrated) one process at a time.

        MLflow creates a new sqlite store's tables and runs its schema migrations when a process first opens it
        (in MlflowClient's constructor), with no lock: two commands starting together on a new store could both
        migrate it and leave it half migrated. A file lock beside the store makes the others wait, then find it
        complete. Before that, a file that is not a database and a database server that is down are found here:
        MLflow would retry either for about 100 s, silently.
        """
        if is_database_server(self.tracking_uri):
            self.patiently(lambda: probe_database(self.tracking_uri))
        path = sqlite_path(self.tracking_uri)
        with contextlib.nullcontext() if path is None else FileLock(f"{path}.lock"):
            if path is not None:
                check_sqlite_file(path, "MLflow store")
            client = self.patiently(lambda: MlflowClient(self.tracking_uri))
            self.patiently(lambda: client.search_experiments(max_results=1))  # the tracking store exists now
        return client

    def patiently(self, call: Callable[[], Any]) -> Any:
        """Run ``call()`` (which talks to the tracking server), retrying while the server is unreachable.

        A store that answers but cannot be used (read-only, corrupt) raises StoreDamaged at once.
        """
        try:
            return call_patiently(
                call,
                store="tracking",
                label=f"tracking server {redact(self.tracking_uri)}",
                is_transient=tracking_unreachable,
                max_outage_seconds=self.max_outage_seconds,
                secret_url=self.tracking_uri,
            )
        except (StoreUnavailable, StoreDamaged):
            raise
        except Exception as error:
            damage = store_damage(error)
            if damage is None:
                raise
            raise StoreDamaged(f"MLflow store {redact(self.tracking_uri)} cannot be written: {damage}") from error

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def patient_call(*args: Any, **kwargs: Any) -> Any:
            return self.patiently(lambda: attribute(*args, **kwargs))

        return patient_call

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> Any:
        """Create a run exactly once, even when a response is lost and the call is retried."""
        run_key = uuid.uuid4().hex
        tags = {**tags, RUN_KEY_TAG: run_key}
        attempted = False

        def create_once() -> Any:
            nonlocal attempted
            if attempted:
                found = self.client.search_runs(
                    [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1
                )
                if found:
                    return found[0]
            attempted = True
            return self.client.create_run(experiment_id, run_name=run_name, tags=tags)

        return self.patiently(create_once)


def ensure_experiment(client: PatientClient | MlflowClient, tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with a local artifact folder where embedded) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=local_artifact_location(tracking_uri, name))
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # another worker created it first
        if experiment is None:
            raise
        return experiment.experiment_id


def environment_tags(device: torch.device, storage_url: str, sampler: str, pruner: str) -> dict[str, str]:
    """Tags that say where and with what a sweep ran (no secrets: storage URLs are redacted)."""
    from trainlib.device import device_name

    return {
        "sampler": sampler,
        "pruner": pruner,
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "mlflow_version": mlflow.__version__,
        "optuna_version": version("optuna"),
        "python_version": platform.python_version(),
        "git_commit": git_commit() or "unknown",
        "host": socket.gethostname(),
        "optuna_storage": redact(storage_url),
    }
