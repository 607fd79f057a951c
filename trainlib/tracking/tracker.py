"""MlflowTracker: one parent run per study, one nested child run per trial, per-epoch metrics, off the training thread.

Every store call runs on one TrackingThread, in the order the sweep made it, so training never waits for the
store: opening (and, the first time, creating) it, creating and ending runs, batches, weights. The sweep waits
only where it needs an answer (the parent's id for worker processes, a trial's run id, the best trial's
weights) and at the end. Every call goes through PatientClient, which waits out a restarting tracking server.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from trainlib.errors import InvalidArgument
from trainlib.store_failures import MAX_OUTAGE_SECONDS, StoreUnavailable, first_line
from trainlib.stores import redact
from trainlib.tracking.client import PatientClient, ensure_experiment, using_tracking_uri
from trainlib.tracking.protocol import ParentRunSlot, RunNote, TrialOutcome
from trainlib.tracking.runs import Batch, RunLog, TrackingThread, done, now_ms

log = logging.getLogger(__name__)
WEIGHTS_FILE = "model_state.pt"
END_REASON_TAG = "trainlib.end_reason"


class StoresDisagree(InvalidArgument):
    """The Optuna study names an MLflow parent run that the tracking store does not have."""


class MlflowTracker:
    """Records a study in MLflow (implements trainlib.tracking.Tracker); see the module docstring."""

    def __init__(self, tracking_uri: str, experiment_name: str, max_outage_seconds: float = MAX_OUTAGE_SECONDS) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name  # the study's name
        self.max_outage_seconds = max_outage_seconds
        self.thread = TrackingThread()
        self.client: PatientClient | None = None  # set on the tracking thread, as is experiment_id
        self.experiment_id: str | None = None
        self.parent = RunLog(self.thread, self.write_batch)  # the parent's batches (best value so far)
        self.parent_run_id: str | None = None  # set on the tracking thread as soon as the parent run exists
        self.open_trials: dict[int, RunLog] = {}  # trial runs started and not yet ended, by trial number
        self.reevaluation_keys = itertools.count(1)
        self.opened = self.thread.submit(self._open, experiment_name)

    def _open(self, experiment_name: str) -> None:  # tracking thread
        self.client = PatientClient(self.tracking_uri, self.max_outage_seconds)  # opens (or creates) the store
        self.experiment_id = ensure_experiment(self.client, self.tracking_uri, experiment_name)

    def wait_until_open(self) -> None:
        """Wait until the store is open and the experiment exists; raise what went wrong (StoreDamaged, ...)."""
        self.opened.result()

    def write_batch(self, run_id: str, batch: Batch) -> None:
        """Store ``batch`` in run ``run_id`` now (on the tracking thread; RunLog hands batches to it)."""
        self.client.log_batch(run_id, metrics=batch.metrics, params=batch.params, tags=batch.tags)

    def flush(self) -> None:
        """Hand over the parent's buffered batches and wait until the tracking thread has done everything."""
        self.parent.hand_over()
        self.thread.wait()

    # ---- the parent run ----

    def start_sweep(
        self, slot: ParentRunSlot, created_study: bool, params: dict[str, Any], tags: dict[str, str], config: Path
    ) -> None:
        """Create the study's parent run, or join the one another command made (any machine), on the tracking thread.

        Exactly one parent per study, however many commands start at once: a command creates it only while
        holding the study's claim and after checking that nobody published one meanwhile.
        """
        self.parent.created = self.thread.submit(self._start_sweep, slot, created_study, params, tags, config)

    def _start_sweep(  # tracking thread
        self, slot: ParentRunSlot, created_study: bool, params: dict[str, Any], tags: dict[str, str], config: Path
    ) -> str:
        parent_run_id = slot.published()
        if parent_run_id is None:
            parent_run_id = self._create_or_join_parent(slot, params, config)
        else:
            self._check_parent_exists(parent_run_id)
            if not created_study:
                self.client.update_run(parent_run_id, status="RUNNING")
        self.parent_run_id = parent_run_id
        self.client.log_batch(parent_run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        return parent_run_id

    def _check_parent_exists(self, parent_run_id: str) -> None:  # tracking thread
        try:
            run = self.client.get_run(parent_run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.experiment_id != self.experiment_id:
            raise StoresDisagree(
                f"study {self.experiment_name!r} records MLflow parent run {parent_run_id}, which "
                f"{redact(self.tracking_uri)} does not hold in experiment {self.experiment_name!r} (a new or another "
                "MLflow store?); give --tracking-uri of the store that holds it, or a new --study-name"
            )

    def _create_or_join_parent(self, slot: ParentRunSlot, params: dict[str, Any], config: Path) -> str:
        wait_seconds = self.max_outage_seconds + 60  # the claim holder may be waiting out an outage itself
        deadline = time.monotonic() + wait_seconds
        while True:
            with slot.claim() as claimed:
                parent_run_id = slot.published()
                if parent_run_id is not None:
                    return parent_run_id
                if claimed:
                    parent_run_id = self._create_parent(params, config)
                    slot.publish(parent_run_id)  # published last: joiners find a complete parent
                    return parent_run_id
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"study {self.experiment_name!r} has no MLflow parent run after {wait_seconds:.0f} s and another "
                    f"command holds the claim to create it; if that command died, {slot.claim_hint()} and start again",
                    "storage",
                )
            time.sleep(0.5)

    def _create_parent(self, params: dict[str, Any], config: Path) -> str:  # tracking thread
        tags = {"trainlib.role": "study", "optuna.study": self.experiment_name}
        parent_run_id = self.client.create_run(self.experiment_id, run_name=self.experiment_name, tags=tags).info.run_id
        self.parent_run_id = parent_run_id  # ended on the way out even if what follows fails
        batch = Batch(params=[Param(key, param_text(value)) for key, value in params.items()])
        for chunk in batch.within_limits():
            self.write_batch(parent_run_id, chunk)
        self.client.log_artifact(parent_run_id, str(config), artifact_path="config")
        return parent_run_id

    def attach(self, parent_run_id: str) -> None:
        """Use an existing parent run (worker processes); end_sweep then ends this process's trial runs only."""
        self.parent.created = done(parent_run_id)

    def wait_for_parent_run_id(self) -> str | None:
        """The parent run's id once the tracking thread has it; None before start_sweep or attach."""
        return None if self.parent.created is None else self.parent.created.result()

    def log_study_metrics(self, metrics: dict[str, float], trial_number: int) -> None:
        """The study's progress after trial ``trial_number`` (best value, hypervolume): parent metrics, step = trial."""
        self.parent.log(metrics=[Metric(name, value, now_ms(), trial_number) for name, value in metrics.items()])

    def end_sweep(self, status: str | None, reason: str | None = None) -> None:
        """End the parent (status None: leave it) and every trial run still open, once everything queued is stored.

        If the tracking thread failed (a store that broke, a bug), the runs are ended from this thread with a
        client of its own, so that no run is left RUNNING by a command that is gone. Never raises.
        """
        try:
            self.flush()
            self.thread.call(self._end_runs, status, reason, self.client)
        except BaseException as error:  # the tracking thread failed, or a signal cut the wait short
            if isinstance(error, StoreUnavailable) and error.store == "tracking":
                if self.parent_run_id is not None or self.open_trials:
                    log.error("runs of study %r left RUNNING: %s", self.experiment_name, error)
            else:
                self._end_runs_after_failure(status, reason or first_line(error))
        finally:
            self.thread.shutdown()

    def _end_runs(self, status: str | None, reason: str | None, client: PatientClient) -> None:
        if self.open_trials:
            trial_status = status if status in ("FAILED", "KILLED") else "FAILED"
            tags = TrialOutcome(trial_status, "FAIL", reason or "the sweep ended during the trial").tags()
            for number, trial in sorted(self.open_trials.items()):
                if trial.created is not None and trial.created.done() and trial.created.exception() is None:
                    run_id = trial.created.result()
                    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
                    client.set_terminated(run_id, trial_status)
                self.open_trials.pop(number, None)
        if status is not None and self.parent_run_id is not None:
            if reason:
                client.set_tag(self.parent_run_id, END_REASON_TAG, reason[:500])
            client.set_terminated(self.parent_run_id, status)

    def _end_runs_after_failure(self, status: str | None, reason: str) -> None:  # the calling thread
        if self.parent_run_id is None and not self.open_trials:
            return  # nothing was started (e.g. the store could not be opened)
        try:
            self._end_runs(status or "FAILED", reason, PatientClient(self.tracking_uri, self.max_outage_seconds))
        except BaseException as error:
            log.error("runs of study %r left RUNNING: the store cannot end them: %s", self.experiment_name, error)

    # ---- child runs ----

    def start_trial(
        self, study_name: str, trial_number: int, params: dict[str, Any], retry_of: int | None, device: str = ""
    ) -> RunLog:
        """A child run for a trial that starts now; created on the tracking thread."""
        tags = {
            "trainlib.role": "trial",
            "optuna.study": study_name,
            "optuna.trial_number": str(trial_number),
            "trainlib.worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        if device:
            tags["trainlib.device"] = device
        if retry_of is not None:  # a retry of a trial whose worker died
            tags["optuna.retry_of"] = str(retry_of)
        params = {**params, "trial_number": trial_number}
        return self._start_child(f"trial-{trial_number:04d}", trial_number, tags, params)

    def start_reevaluation(self, study_name: str, trial_number: int, seed: int, params: dict[str, Any]) -> RunLog:
        """A child run for trial ``trial_number``'s configuration trained again from ``seed``."""
        tags = {"trainlib.role": "reevaluation", "optuna.study": study_name, "trainlib.reevaluates": str(trial_number)}
        key = -next(self.reevaluation_keys)  # apart from trial numbers among the open runs the way out ends
        return self._start_child(f"trial-{trial_number:04d}-seed-{seed}", key, tags, {**params, "seed": seed})

    def _start_child(self, run_name: str, key: int, tags: dict[str, str], params: dict[str, Any]) -> RunLog:
        created = self.thread.submit(self._create_child, run_name, tags)
        trial = RunLog(self.thread, self.write_batch, created, trial_number=key)
        self.open_trials[key] = trial
        trial.log(params=[Param(name, param_text(value)) for name, value in params.items()])
        return trial

    def _create_child(self, run_name: str, tags: dict[str, str]) -> str:  # tracking thread
        tags = {"mlflow.parentRunId": self.parent.created.result(), **tags}
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id

    def log_trial_result(self, trial: RunLog, metrics: dict[str, float], weights: dict[str, Any] | None) -> None:
        """Log the trial's figures (best metric, training seconds, ...) and the weights of its best epoch (if given)."""
        trial.log(metrics=[Metric(name, value, now_ms(), 0) for name, value in metrics.items()])
        if weights is not None:
            self.thread.submit(self._log_weights, trial, weights)

    def _log_weights(self, trial: RunLog, weights: dict[str, Any]) -> None:  # tracking thread
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / WEIGHTS_FILE
            torch.save(weights, path)
            self.client.log_artifact(trial.created.result(), str(path))

    def end_trial(self, trial: RunLog, outcome: TrialOutcome) -> str:
        """Record ``outcome`` and end the run once all of its log is stored; return its id (waits for its creation)."""
        trial.log(tags=[RunTag(key, value) for key, value in outcome.tags().items()])
        trial.hand_over()
        self.thread.submit(self._end_trial_run, trial, outcome.run_status)
        return trial.created.result()

    def _end_trial_run(self, trial: RunLog, status: str) -> None:  # tracking thread
        self.client.set_terminated(trial.created.result(), status)
        self.open_trials.pop(trial.trial_number, None)

    def load_trial_weights(self, run_id: str | None, trial_number: int) -> dict[str, Any] | None:
        """The best-epoch weights a trial logged to run ``run_id``, or None when it logged none."""
        if run_id is None:
            return None

        def load() -> dict[str, Any]:  # tracking thread
            with tempfile.TemporaryDirectory() as folder:
                path = self.client.download_artifacts(run_id, WEIGHTS_FILE, folder)
                return torch.load(path, map_location="cpu", weights_only=True)

        return self.thread.call(load)

    def end_lost_trial(self, study_name: str, trial_number: int, run_id: str | None, reason: str) -> list[str]:
        """End the child run of a trial whose worker died (heartbeat-stale) as KILLED; return the runs ended."""
        return self.thread.call(self._end_lost_trial, study_name, trial_number, run_id, reason)

    def _end_lost_trial(  # tracking thread
        self, study_name: str, trial_number: int, run_id: str | None, reason: str
    ) -> list[str]:
        run_ids = {run_id} - {None}
        # A worker killed between creating the run and recording its id leaves a run only its tags can find.
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`optuna.study` = '{study_name}' and tags.`optuna.trial_number` = '{trial_number}' "
                "and attributes.status = 'RUNNING'"
            ),
        )
        run_ids |= {run.info.run_id for run in found}
        ended = []
        for lost_run_id in sorted(run_ids):
            if self.client.get_run(lost_run_id).info.status != "RUNNING":  # e.g. an earlier attempt's, ended
                continue
            tags = TrialOutcome("KILLED", "FAIL", reason).tags()
            self.write_batch(lost_run_id, Batch(tags=[RunTag(key, value) for key, value in tags.items()]))
            self.client.set_terminated(lost_run_id, "KILLED")
            ended.append(lost_run_id)
        return ended

    # ---- end of sweep ----

    def annotate_runs(self, notes: dict[str, RunNote]) -> None:
        """Add tags and step-0 metrics to runs that ended (Pareto-front tags, re-evaluation means)."""

        def annotate() -> None:  # tracking thread
            for run_id, note in notes.items():
                tags = [RunTag(key, value) for key, value in note.tags.items()]
                metrics = [Metric(key, value, now_ms(), 0) for key, value in note.metrics.items()]
                self.write_batch(run_id, Batch(metrics=metrics, tags=tags))

        self.thread.submit(annotate)

    def log_summary(self, counts: dict[str, int], files: list[Path], tags: dict[str, str] | None = None) -> None:
        """Trial counts as metrics, report files (trials.csv, plots) as parent artifacts, and ``tags``; waits until
        all is stored."""

        def log() -> None:  # tracking thread
            parent_run_id = self.parent.created.result()
            metrics = [Metric(f"n_{state}", value, now_ms(), 0) for state, value in counts.items()]
            run_tags = [RunTag(key, value) for key, value in (tags or {}).items()]
            self.write_batch(parent_run_id, Batch(metrics=metrics, tags=run_tags))
            for path in files:
                self.client.log_artifact(parent_run_id, str(path), artifact_path="report")

        self.parent.hand_over()
        self.thread.submit(log)
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

        def log_model() -> None:  # tracking thread, after the best value at every trial is stored
            parent_run_id = self.parent.created.result()
            with (
                using_tracking_uri(self.tracking_uri),
                mlflow.start_run(run_id=parent_run_id, experiment_id=self.experiment_id),
            ):
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
            self.client.set_tag(parent_run_id, "best_trial_number", str(trial_number))

        self.parent.hand_over()
        self.thread.submit(lambda: self.client.patiently(log_model))  # log_summary waits for it


def param_text(value: Any) -> str:
    """A parameter as MLflow stores it: lists joined by commas, at most 6000 characters."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text[:6000]
