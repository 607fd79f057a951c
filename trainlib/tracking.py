"""MLflow adapter: one parent run per study, one nested child run per trial, per-epoch metrics.

The engine never sees MLflow: a child run's epoch logger is just a callback. Logging is one batched,
asynchronous call per epoch, flushed before each run ends, so it does not slow training down.
Every call goes through PatientClient, which waits out a restarting tracking server (bounded, one log line
per retry); a batch that failed asynchronously is re-sent at flush, so no epoch metric is lost.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import requests
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.async_logging.run_operations import RunOperations

from trainlib.engine import EpochResult, TrainingDiverged
from trainlib.stores import MAX_OUTAGE_SECONDS, StoreUnavailable, call_patiently, local_artifact_location, redact

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own progress bar is enough
# PatientClient owns retries, their log line and their time bound; MLflow's own HTTP retries would add minutes
# of silent waiting on top (7 by default), so they are off unless the environment asks for them.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# Against a server, ending a run would also fetch it again just to print its address: a request per trial.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# TrialRun.flush re-sends a batch that failed asynchronously; MLflow's own error line for it would only alarm.
logging.getLogger("mlflow.utils.async_logging.async_logging_queue").setLevel(logging.CRITICAL)

PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"
RUN_KEY_TAG = "trainlib.run_key"
WEIGHTS_FILE = "model_state.pt"
_TRANSIENT_HTTP_STATUS = (429, 502, 503, 504)


def _now_ms() -> int:
    return int(time.time() * 1000)


def tracking_unreachable(error: BaseException) -> bool:
    """True when ``error`` means the tracking server is down, restarting or overloaded (not a bad request)."""
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

    Attribute access forwards to MlflowClient, each call wrapped in stores.call_patiently; create_run is
    made idempotent (a retried create finds the run the lost response created instead of making a second one).
    """

    def __init__(self, tracking_uri: str, max_outage_seconds: float = MAX_OUTAGE_SECONDS) -> None:
        self.tracking_uri = tracking_uri
        self.max_outage_seconds = max_outage_seconds
        self.client = MlflowClient(tracking_uri)

    def patiently(self, call: Callable[[], Any]) -> Any:
        """Run ``call()`` (which talks to the tracking server), retrying while the server is unreachable."""
        return call_patiently(
            call,
            store="tracking",
            label=f"tracking server {redact(self.tracking_uri)}",
            is_transient=tracking_unreachable,
            max_outage_seconds=self.max_outage_seconds,
            secret_url=self.tracking_uri,
        )

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

    def end_run(self, run_id: str, status: str) -> None:
        """End a run as set_terminated does, without its pause of up to a second.

        MlflowClient.set_terminated first shuts down the process's async logging queue, whose idle thread polls
        once a second: ~1 s per trial once epochs were logged asynchronously. Callers here have already waited
        for their run's batches (TrialRun.flush), so the run is ended in the store directly.
        """
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if store is None:  # another MLflow layout: the public, slower way
            self.set_terminated(run_id, status)
            return
        self.patiently(lambda: store.update_run_info(run_id, RunStatus.from_string(status), _now_ms(), None))


@dataclass
class TrialRun:
    """One trial's child run; ``log_epoch`` is the engine callback."""

    client: PatientClient | None
    run_id: str | None
    pending: list[tuple[RunOperations, list[Metric]]] = field(default_factory=list)

    def log_epoch(self, result: EpochResult) -> None:
        """Log one epoch's metrics in a single asynchronous batch (step = epoch)."""
        if self.client is None or self.run_id is None:
            return
        timestamp = _now_ms()
        metrics = [Metric(key, value, timestamp, result.epoch) for key, value in result.metrics().items()]
        operation = self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
        if operation is not None:
            self.pending.append((operation, metrics))

    def flush(self) -> None:
        """Wait until every queued batch of this run has reached the store; re-send failed ones synchronously."""
        for operation, metrics in self.pending:
            try:
                operation.wait()
            except MlflowException:
                # The server was unreachable when the batch went out: send it again, waiting out the outage.
                # A batch that did arrive is not doubled: the store drops identical (key, step, timestamp, value).
                log.info("re-sending %d metrics of run %s that failed asynchronously", len(metrics), self.run_id)
                self.client.log_batch(self.run_id, metrics=metrics)
        self.pending.clear()


class SweepTracker:
    """Records a study in MLflow: experiment, parent run, child runs, and the end-of-sweep summary."""

    def __init__(self, tracking_uri: str, experiment_name: str, max_outage_seconds: float = MAX_OUTAGE_SECONDS) -> None:
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = PatientClient(tracking_uri, max_outage_seconds)
        self.experiment_id = ensure_experiment(self.client, tracking_uri, experiment_name)
        self.parent_run_id: str | None = None

    # ---- parent run ----

    def attach(self, parent_run_id: str) -> None:
        """Use an existing parent run (worker processes and other machines)."""
        self.parent_run_id = parent_run_id

    def start_sweep(
        self,
        study: optuna.Study,
        created_study: bool,
        fixed_params: dict[str, Any],
        tags: dict[str, str],
        config_file: Path,
    ) -> str:
        """Create the study's parent run, or join the one another command made (any machine); return its id.

        Exactly one parent per study, however many commands start at once: a command creates it only while
        holding the study's parent claim (see _claim_parent) and after checking nobody published one meanwhile.
        """
        parent_run_id = _published_parent(study)
        if parent_run_id is None:
            parent_run_id = self._create_or_join_parent(study, fixed_params, config_file)
        elif not created_study:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.client.log_batch(parent_run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        self.parent_run_id = parent_run_id
        return parent_run_id

    def _create_or_join_parent(self, study: optuna.Study, fixed_params: dict[str, Any], config_file: Path) -> str:
        wait_seconds = self.client.max_outage_seconds + 60  # the claim holder may be waiting out an outage itself
        deadline = time.monotonic() + wait_seconds
        while True:
            with _claim_parent(study) as claimed:
                parent_run_id = _published_parent(study)
                if parent_run_id is not None:
                    return parent_run_id
                if claimed:
                    return self._create_parent(study, fixed_params, config_file)
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"study {study.study_name!r} has no MLflow parent run after {wait_seconds:.0f} s and another "
                    f"command holds the claim to create it; if that command died, delete study "
                    f"{_claim_name(study)!r} (optuna delete-study) and start again",
                    "storage",
                )
            time.sleep(0.5)

    def _create_parent(self, study: optuna.Study, fixed_params: dict[str, Any], config_file: Path) -> str:
        tags = {"trainlib.role": "study", "optuna.study": study.study_name}
        parent_run_id = self.client.create_run(self.experiment_id, run_name=study.study_name, tags=tags).info.run_id
        params = [Param(key, _param_text(value)) for key, value in fixed_params.items()]
        for chunk_start in range(0, len(params), 100):
            self.client.log_batch(parent_run_id, params=params[chunk_start : chunk_start + 100])
        self.client.log_artifact(parent_run_id, str(config_file), artifact_path="config")
        study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)  # published last: joiners find a complete parent
        return parent_run_id

    def end_sweep(self, status: str) -> None:
        """Mark the parent run FINISHED, FAILED or KILLED after flushing queued logging."""
        mlflow.flush_async_logging()
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, status)

    def on_trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str) -> None:
        """Optuna callback: log the study's best value so far at step = trial number."""
        try:
            best = study.best_value
        except ValueError:  # no complete trial yet
            return
        self.client.log_metric(self.parent_run_id, f"best_{metric}", best, step=trial.number)

    # ---- child runs ----

    @contextlib.contextmanager
    def trial_run(self, trial: optuna.Trial, params: dict[str, Any]) -> Iterator[TrialRun]:
        """A child run for ``trial``; its end status follows how the trial ended."""
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "trainlib.role": "trial",
            "optuna.study": trial.study.study_name,
            "optuna.trial_number": str(trial.number),
            "trainlib.worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        retry_of = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        if retry_of is not None:  # a retry of a trial whose worker died (RetryHeartbeatStaleTrialCallback)
            tags["optuna.retry_of"] = str(retry_of)
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number:04d}", tags=tags)
        run_id = run.info.run_id
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        logged_params = {**params, "trial_number": trial.number}
        self.client.log_batch(run_id, params=[Param(k, _param_text(v)) for k, v in logged_params.items()])
        trial_run = TrialRun(self.client, run_id)
        try:
            yield trial_run
        except optuna.TrialPruned as pruned:
            self._end_trial(trial_run, "FINISHED", {"optuna.state": "PRUNED", "optuna.reason": str(pruned)})
            raise
        except TrainingDiverged as diverged:
            tags = {"optuna.state": "FAIL", "optuna.reason": str(diverged), "optuna.failed_epoch": str(diverged.epoch)}
            self._end_trial(trial_run, "FAILED", tags)
            raise
        except KeyboardInterrupt:
            self._end_trial(trial_run, "KILLED", {"optuna.state": "FAIL", "optuna.reason": "interrupted (SIGINT)"})
            raise
        except StoreUnavailable as lost:
            if lost.store != "tracking":  # with the tracking server gone for good there is no one to tell
                self._end_trial(trial_run, "FAILED", {"optuna.state": "FAIL", "optuna.reason": str(lost)[:500]})
            raise
        except BaseException as error:
            self._end_trial(trial_run, "FAILED", {"optuna.state": "FAIL", "optuna.reason": repr(error)[:500]})
            raise
        else:
            self._end_trial(trial_run, "FINISHED", {"optuna.state": "COMPLETE"})

    def _end_trial(self, trial_run: TrialRun, status: str, tags: dict[str, str]) -> None:
        trial_run.flush()
        self.client.log_batch(trial_run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.end_run(trial_run.run_id, status)

    def log_trial_result(self, trial_run: TrialRun, metric: str, best_value: float, weights: dict[str, Any]) -> None:
        """Log the trial's best metric and the weights of its best epoch (for the final model)."""
        self.client.log_metric(trial_run.run_id, f"best_{metric}", best_value)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / WEIGHTS_FILE
            torch.save(weights, path)
            self.client.log_artifact(trial_run.run_id, str(path))

    def load_trial_weights(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
        """The best-epoch weights a trial logged, or None when it logged none."""
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is None:
            return None
        with tempfile.TemporaryDirectory() as folder:
            path = self.client.download_artifacts(run_id, WEIGHTS_FILE, folder)
            return torch.load(path, map_location="cpu", weights_only=True)

    # ---- end of sweep ----

    def log_summary(self, counts: dict[str, int], files: list[Path]) -> None:
        """Trial counts as metrics, report files (trials.csv, plots) as parent artifacts."""
        self.client.log_batch(
            self.parent_run_id, metrics=[Metric(f"n_{state}", value, _now_ms(), 0) for state, value in counts.items()]
        )
        for path in files:
            self.client.log_artifact(self.parent_run_id, str(path), artifact_path="report")

    def log_best_model(
        self, model: torch.nn.Module, example: torch.Tensor, test_accuracy: float, trial_number: int
    ) -> None:
        """Log the best trial's model with signature and input example, and its held-out test accuracy."""
        from mlflow.models import infer_signature

        model.eval()
        with torch.inference_mode():
            output = model(example).numpy()
        signature = infer_signature(example.numpy(), output)

        def log_model() -> None:
            with mlflow.start_run(run_id=self.parent_run_id, experiment_id=self.experiment_id):
                model_info = mlflow.pytorch.log_model(
                    model,
                    name="best_model",
                    signature=signature,
                    input_example=example.numpy()[:5],
                    pip_requirements=[],
                    step=trial_number,  # links the parent's best-so-far metric at the best trial to the model
                )
                # Linked to the logged model too, so the model's own page shows the held-out score.
                mlflow.log_metric("test_accuracy", test_accuracy, model_id=model_info.model_id)

        self.client.patiently(log_model)
        self.client.set_tag(self.parent_run_id, "best_trial_number", str(trial_number))

    def end_lost_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> list[str]:
        """End the child run of a trial whose worker died (heartbeat-stale) as KILLED; return the runs ended."""
        run_ids = {trial.user_attrs.get(RUN_ID_ATTR)} - {None}
        # A worker killed between creating the run and recording its id leaves a run only its tags can find.
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`optuna.study` = '{study.study_name}' and tags.`optuna.trial_number` = '{trial.number}' "
                "and attributes.status = 'RUNNING'"
            ),
        )
        run_ids |= {run.info.run_id for run in found}
        ended = []
        for run_id in sorted(run_ids):
            if self.client.get_run(run_id).info.status != "RUNNING":  # e.g. an earlier attempt's run, already ended
                continue
            tags = {"optuna.state": "FAIL", "optuna.reason": reason}
            self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
            self.client.end_run(run_id, "KILLED")
            ended.append(run_id)
        return ended


class NullTracker:
    """--no-tracking: the same interface, writing nothing to any store (weights kept in a temp folder)."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self._weights_dir = tempfile.TemporaryDirectory(prefix="trainlib-weights-")

    def attach(self, parent_run_id: str) -> None:
        pass

    def start_sweep(self, *args: Any, **kwargs: Any) -> None:
        return None

    def end_sweep(self, status: str) -> None:
        pass

    def on_trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str) -> None:
        pass

    @contextlib.contextmanager
    def trial_run(self, trial: optuna.Trial, params: dict[str, Any]) -> Iterator[TrialRun]:
        trial.set_user_attr(RUN_ID_ATTR, None)
        yield TrialRun(None, f"local-{trial.number}")

    def log_trial_result(self, trial_run: TrialRun, metric: str, best_value: float, weights: dict[str, Any]) -> None:
        torch.save(weights, Path(self._weights_dir.name) / f"{trial_run.run_id}.pt")

    def load_trial_weights(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
        path = Path(self._weights_dir.name) / f"local-{trial.number}.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def log_summary(self, counts: dict[str, int], files: list[Path]) -> None:
        pass

    def log_best_model(
        self, model: torch.nn.Module, example: torch.Tensor, test_accuracy: float, trial_number: int
    ) -> None:
        pass


def ensure_experiment(client: PatientClient | MlflowClient, tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with a local artifact folder where embedded) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=local_artifact_location(tracking_uri, name))
    except mlflow.exceptions.MlflowException:
        experiment = client.get_experiment_by_name(name)  # another worker created it first
        if experiment is None:
            raise
        return experiment.experiment_id


def _published_parent(study: optuna.Study) -> str | None:
    """The parent run id published in the study (read fresh from the storage), or None."""
    return study._storage.get_study_user_attrs(study._study_id).get(PARENT_RUN_ATTR)


def _claim_name(study: optuna.Study) -> str:
    return f"{study.study_name}:mlflow-parent-claim"  # ':' cannot occur in a config's study name


@contextlib.contextmanager
def _claim_parent(study: optuna.Study) -> Iterator[bool]:
    """Try to hold the study's parent claim; yields whether this command holds it, releases it on exit.

    The claim is a second study: creating a study is atomic in every Optuna storage (a unique name in the
    database, a lock on the journal file), so at most one command, on any machine, holds it at a time.
    """
    storage = study._storage
    try:
        claim_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], _claim_name(study))
    except optuna.exceptions.DuplicatedStudyError:
        yield False
        return
    try:
        yield True
    finally:
        storage.delete_study(claim_id)


def _param_text(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text[:6000]


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
        "optuna_version": optuna.__version__,
        "python_version": platform.python_version(),
        "git_commit": _git_commit(),
        "host": socket.gethostname(),
        "optuna_storage": redact(storage_url),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True, cwd=os.getcwd()
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
