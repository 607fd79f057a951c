"""MLflow adapter: one parent run per study, one nested child run per trial, per-epoch metrics.

The engine never sees MLflow: a child run's epoch logger is just a callback. Training does not wait for the
store: every store call runs on one tracking thread, in order (SweepTracker), each epoch's metrics are one
batch, a run's batches are coalesced to at most one write every LOG_INTERVAL_SECONDS and go out through
MLflow's async logging, and each run is flushed before it is ended.
Every call goes through PatientClient, which waits out a restarting tracking server (bounded, one log line
per retry); a batch that failed asynchronously is re-sent before its run ends, so no epoch metric is lost.
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
from concurrent.futures import Future, ThreadPoolExecutor
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
# A run's batches are coalesced into at most one store write every LOG_INTERVAL_SECONDS (see TrialRun).
LOG_INTERVAL_SECONDS = 2.0
MAX_ITEMS_PER_BATCH, MAX_PARAMS_OR_TAGS_PER_BATCH = 1000, 100  # MLflow's limits for one log_batch
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


def _empty_batch() -> dict[str, list[Any]]:
    return {"metrics": [], "params": [], "tags": []}


def _within_limits(batch: dict[str, list[Any]]) -> Iterator[dict[str, list[Any]]]:
    """``batch`` cut into batches MLflow accepts (at most 1000 items, 100 of them params and 100 tags)."""
    chunk, size = _empty_batch(), 0
    for kind in ("params", "tags", "metrics"):
        for item in batch[kind]:
            if size == MAX_ITEMS_PER_BATCH or (kind != "metrics" and len(chunk[kind]) == MAX_PARAMS_OR_TAGS_PER_BATCH):
                yield chunk
                chunk, size = _empty_batch(), 0
            chunk[kind].append(item)
            size += 1
    if size:
        yield chunk


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


@dataclass
class TrialRun:
    """What one run (a trial's child run, or the parent) has to log; ``log_epoch`` is an engine callback.

    Each epoch's metrics are one batch. A run's batches are coalesced into at most one write every
    ``interval_seconds`` (each write is a store transaction costing milliseconds of CPU), handed to the
    tracker's thread, which passes them to MLflow's async logging. Nothing here waits for the store.
    """

    tracker: SweepTracker | None
    run: Future | None  # the run id, once the tracking thread has created the run
    interval_seconds: float = LOG_INTERVAL_SECONDS
    trial_number: int | None = None
    buffered: dict[str, list[Any]] = field(default_factory=_empty_batch)
    last_write: float = field(default_factory=time.monotonic)
    pending: list[tuple[RunOperations, dict[str, list[Any]]]] = field(default_factory=list)  # tracking thread only

    @property
    def run_id(self) -> str | None:
        """The run id (waits for the tracking thread to have created the run)."""
        return None if self.run is None else self.run.result()

    def log_async(self, metrics: list[Metric] = (), params: list[Param] = (), tags: list[RunTag] = ()) -> None:
        """Add items to the run's next batch; hand it to the tracking thread once ``interval_seconds`` have passed."""
        if self.tracker is None:
            return
        for kind, items in (("metrics", metrics), ("params", params), ("tags", tags)):
            self.buffered[kind].extend(items)
        if time.monotonic() - self.last_write >= self.interval_seconds:
            self.write_buffered()

    def log_epoch(self, result: EpochResult) -> None:
        """Log one epoch's metrics as one batch (step = epoch); raise if the tracking thread has failed."""
        if self.tracker is None:
            return
        self.tracker.raise_if_failed()
        timestamp = _now_ms()
        self.log_async(metrics=[Metric(key, value, timestamp, result.epoch) for key, value in result.metrics().items()])

    def write_buffered(self) -> None:
        """Hand what is buffered to the tracking thread now."""
        batch, self.buffered, self.last_write = self.buffered, _empty_batch(), time.monotonic()
        if self.tracker is not None and any(batch.values()):
            self.tracker.submit(self._send, batch)

    def _send(self, batch: dict[str, list[Any]]) -> None:  # tracking thread
        for chunk in _within_limits(batch):
            operation = self.tracker.client.log_batch(self.run_id, **chunk, synchronous=False)
            if operation is not None:
                self.pending.append((operation, chunk))

    def flush(self) -> None:
        """Hand over what is buffered and wait until all of the run's batches are in the store."""
        self.write_buffered()
        if self.tracker is not None and self.run is not None:
            self.tracker.call(self.wait_for_sent)

    def wait_for_sent(self) -> None:  # tracking thread
        """Wait until MLflow's async logging has written every batch of the run; re-send failed ones."""
        for operation, batch in self.pending:
            try:
                operation.wait()
            except MlflowException:
                # The server was unreachable when the batch went out: send it again, waiting out the outage.
                # A batch that did arrive is not doubled: the store drops identical (key, step, timestamp, value)
                # metrics, and re-logging a param with the same value or a tag is allowed.
                log.info("re-sending a batch of run %s that failed asynchronously", self.run_id)
                self.tracker.client.log_batch(self.run_id, **batch)
        self.pending.clear()


class SweepTracker:
    """Records a study in MLflow: experiment, parent run, child runs, and the end-of-sweep summary.

    Every call to the store runs on one tracking thread, in the order the sweep made it, so training never
    waits for the store: opening (and, the first time, creating) it, creating and ending runs, batches,
    weights. The sweep waits only where it needs an answer (the parent's id for worker processes, the best
    trial's weights) and at the end. A failure on the tracking thread (e.g. StoreUnavailable) is raised in the
    sweep at its next epoch or trial; later calls are not attempted.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, max_outage_seconds: float = MAX_OUTAGE_SECONDS) -> None:
        self.tracking_uri = tracking_uri
        self.max_outage_seconds = max_outage_seconds
        self.client: PatientClient | None = None  # set on the tracking thread
        self.experiment_id: str | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainlib-tracking")
        self._jobs: list[Future] = []
        self._failure: BaseException | None = None
        self.parent_log = TrialRun(self, None)  # the parent's batches (best value so far)
        self.submit(self._open, experiment_name)

    def _open(self, experiment_name: str) -> None:  # tracking thread
        mlflow.set_tracking_uri(self.tracking_uri)
        self.client = PatientClient(self.tracking_uri, self.max_outage_seconds)
        self.experiment_id = ensure_experiment(self.client, self.tracking_uri, experiment_name)

    # ---- the tracking thread ----

    def submit(self, job: Callable[..., Any], *args: Any) -> Future:
        """Run ``job(*args)`` on the tracking thread after everything submitted before it."""
        self.raise_if_failed()
        self._jobs = [future for future in self._jobs if not future.done()]
        future = self._thread.submit(self._guarded, job, *args)
        self._jobs.append(future)
        return future

    def _guarded(self, job: Callable[..., Any], *args: Any) -> Any:
        if self._failure is not None:  # the store is gone or the record is broken: attempt nothing more
            raise self._failure
        try:
            return job(*args)
        except BaseException as error:
            self._failure = error
            raise

    def call(self, job: Callable[..., Any], *args: Any) -> Any:
        """Run ``job(*args)`` on the tracking thread and wait for its result."""
        return self.submit(job, *args).result()

    def raise_if_failed(self) -> None:
        """Raise the tracking thread's failure, if it had one."""
        if self._failure is not None:
            raise self._failure

    def flush(self) -> None:
        """Write the parent's buffered batches and wait until the tracking thread has done everything."""
        self.parent_log.flush()
        jobs, self._jobs = self._jobs, []
        for future in jobs:
            future.result()
        self.raise_if_failed()

    # ---- parent run ----

    @property
    def parent_run_id(self) -> str | None:
        """The parent run's id (waits until the tracking thread has it), or None before start_sweep/attach."""
        return self.parent_log.run_id

    def attach(self, parent_run_id: str) -> None:
        """Use an existing parent run (worker processes and other machines)."""
        self.parent_log.run = _done(parent_run_id)

    def start_sweep(
        self,
        study: optuna.Study,
        created_study: bool,
        fixed_params: dict[str, Any],
        tags: dict[str, str],
        config_file: Path,
    ) -> None:
        """Create the study's parent run, or join the one another command made (any machine), on the tracking thread.

        Exactly one parent per study, however many commands start at once: a command creates it only while
        holding the study's parent claim (see _claim_parent) and after checking nobody published one meanwhile.
        """
        self.parent_log.run = self.submit(self._start_sweep, study, created_study, fixed_params, tags, config_file)

    def _start_sweep(  # tracking thread
        self, study: optuna.Study, created_study: bool, fixed_params: dict[str, Any], tags: dict[str, str], config: Path
    ) -> str:
        parent_run_id = _published_parent(study)
        if parent_run_id is None:
            parent_run_id = self._create_or_join_parent(study, fixed_params, config)
        elif not created_study:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.client.log_batch(parent_run_id, tags=[RunTag(key, value) for key, value in tags.items()])
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

    def end_sweep(self, status: str | None) -> None:
        """Mark the parent run FINISHED, FAILED or KILLED (None: leave it) once everything queued is in the store."""
        try:
            self.flush()
            if self.parent_log.run is not None and status is not None:
                self.call(lambda: self.client.set_terminated(self.parent_run_id, status))
        finally:
            self._thread.shutdown(wait=False)

    def on_trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str) -> None:
        """Optuna callback: log the study's best value so far at step = trial number."""
        try:
            best = study.best_value
        except ValueError:  # no complete trial yet
            return
        self.parent_log.log_async(metrics=[Metric(f"best_{metric}", best, _now_ms(), trial.number)])

    # ---- child runs ----

    @contextlib.contextmanager
    def trial_run(self, trial: optuna.Trial, params: dict[str, Any]) -> Iterator[TrialRun]:
        """A child run for ``trial``; its end status follows how the trial ended."""
        tags = {
            "trainlib.role": "trial",
            "optuna.study": trial.study.study_name,
            "optuna.trial_number": str(trial.number),
            "trainlib.worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        retry_of = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        if retry_of is not None:  # a retry of a trial whose worker died (RetryHeartbeatStaleTrialCallback)
            tags["optuna.retry_of"] = str(retry_of)
        trial_run = TrialRun(self, self.submit(self._create_child, trial.number, tags), trial_number=trial.number)
        logged_params = {**params, "trial_number": trial.number}
        trial_run.log_async(params=[Param(k, _param_text(v)) for k, v in logged_params.items()])
        try:
            yield trial_run
        except optuna.TrialPruned as pruned:
            self._end_trial(trial, trial_run, "FINISHED", {"optuna.state": "PRUNED", "optuna.reason": str(pruned)})
            raise
        except TrainingDiverged as diverged:
            tags = {"optuna.state": "FAIL", "optuna.reason": str(diverged), "optuna.failed_epoch": str(diverged.epoch)}
            self._end_trial(trial, trial_run, "FAILED", tags)
            raise
        except KeyboardInterrupt:
            tags = {"optuna.state": "FAIL", "optuna.reason": "interrupted (SIGINT)"}
            self._end_trial(trial, trial_run, "KILLED", tags)
            raise
        except StoreUnavailable as lost:
            if lost.store != "tracking":  # with the tracking server gone for good there is no one to tell
                tags = {"optuna.state": "FAIL", "optuna.reason": str(lost)[:500]}
                self._end_trial(trial, trial_run, "FAILED", tags)
            raise
        except BaseException as error:
            tags = {"optuna.state": "FAIL", "optuna.reason": repr(error)[:500]}
            self._end_trial(trial, trial_run, "FAILED", tags)
            raise
        else:
            self._end_trial(trial, trial_run, "FINISHED", {"optuna.state": "COMPLETE"})

    def _create_child(self, trial_number: int, tags: dict[str, str]) -> str:  # tracking thread
        tags = {"mlflow.parentRunId": self.parent_run_id, **tags}
        return self.client.create_run(self.experiment_id, run_name=f"trial-{trial_number:04d}", tags=tags).info.run_id

    def _end_trial(self, trial: optuna.Trial, trial_run: TrialRun, status: str, tags: dict[str, str]) -> None:
        trial_run.buffered["tags"].extend(RunTag(k, v) for k, v in tags.items())
        trial_run.write_buffered()
        self.submit(self._end_child, trial_run, status)
        # Recorded here, while the trial still runs (Optuna refuses attributes of finished trials): the run
        # was created at the trial's start, so this normally does not wait.
        trial.set_user_attr(RUN_ID_ATTR, trial_run.run_id)

    def _end_child(self, trial_run: TrialRun, status: str) -> None:  # tracking thread
        trial_run.wait_for_sent()  # everything of the run is in the store before it is marked ended
        self.client.end_run(trial_run.run_id, status)

    def log_trial_result(self, trial_run: TrialRun, metric: str, best_value: float, weights: dict[str, Any]) -> None:
        """Log the trial's best metric and the weights of its best epoch (for the final model)."""
        trial_run.log_async(metrics=[Metric(f"best_{metric}", best_value, _now_ms(), 0)])
        self.submit(self._log_weights, trial_run, weights)

    def _log_weights(self, trial_run: TrialRun, weights: dict[str, Any]) -> None:  # tracking thread
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / WEIGHTS_FILE
            torch.save(weights, path)
            self.client.log_artifact(trial_run.run_id, str(path))

    def load_trial_weights(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
        """The best-epoch weights a trial logged, or None when it logged none."""
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is None:
            return None

        def load() -> dict[str, Any]:
            with tempfile.TemporaryDirectory() as folder:
                path = self.client.download_artifacts(run_id, WEIGHTS_FILE, folder)
                return torch.load(path, map_location="cpu", weights_only=True)

        return self.call(load)

    # ---- end of sweep ----

    def log_summary(self, counts: dict[str, int], files: list[Path]) -> None:
        """Trial counts as metrics, report files (trials.csv, plots) as parent artifacts; waits until all is stored."""

        def log() -> None:
            metrics = [Metric(f"n_{state}", value, _now_ms(), 0) for state, value in counts.items()]
            self.client.log_batch(self.parent_run_id, metrics=metrics)
            for path in files:
                self.client.log_artifact(self.parent_run_id, str(path), artifact_path="report")

        self.submit(log)
        self.flush()

    def log_best_model(
        self, model: torch.nn.Module, example: torch.Tensor, test_accuracy: float, trial_number: int
    ) -> None:
        """Log the best trial's model with signature and input example, and its held-out test accuracy."""
        from mlflow.models import infer_signature

        model.eval()
        with torch.inference_mode():
            output = model(example).numpy()
        signature = infer_signature(example.numpy(), output)

        def log_model() -> None:  # tracking thread
            with mlflow.start_run(run_id=self.parent_run_id, experiment_id=self.experiment_id):
                model_info = mlflow.pytorch.log_model(
                    model,
                    name="best_model",
                    signature=signature,
                    input_example=example.numpy()[:5],
                    pip_requirements=[],
                    step=trial_number,  # links the parent's best-so-far metric at the best trial to the model
                    # MLflow would load the saved model back and predict on the example (~0.4 s) only to warn on
                    # failure; the model classes are ours, and tests/test_sweep.py validates a logged model.
                    validate_serving_input=False,
                )
                # Linked to the logged model too, so the model's own page shows the held-out score.
                mlflow.log_metric("test_accuracy", test_accuracy, model_id=model_info.model_id)
            self.client.set_tag(self.parent_run_id, "best_trial_number", str(trial_number))

        def log_after_best_values() -> None:  # tracking thread
            self.parent_log.wait_for_sent()  # the best value at every trial is in the store before the model links
            self.client.patiently(log_model)

        self.parent_log.write_buffered()
        self.submit(log_after_best_values)  # the sweep writes its report meanwhile; log_summary waits for both

    def end_lost_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> list[str]:
        """End the child run of a trial whose worker died (heartbeat-stale) as KILLED; return the runs ended."""
        return self.call(self._end_lost_trial, study, trial, reason)

    def _end_lost_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> list[str]:
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

    def flush(self) -> None:
        pass

    def end_sweep(self, status: str | None) -> None:
        pass

    def on_trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str) -> None:
        pass

    @contextlib.contextmanager
    def trial_run(self, trial: optuna.Trial, params: dict[str, Any]) -> Iterator[TrialRun]:
        trial.set_user_attr(RUN_ID_ATTR, None)
        yield TrialRun(None, None, trial_number=trial.number)

    def log_trial_result(self, trial_run: TrialRun, metric: str, best_value: float, weights: dict[str, Any]) -> None:
        torch.save(weights, Path(self._weights_dir.name) / f"local-{trial_run.trial_number}.pt")

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
