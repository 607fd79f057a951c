"""MLflow adapter: one parent run per study, one nested child run per trial, per-epoch metrics.

The engine never sees MLflow: a child run's epoch logger is just a callback. Logging is one batched,
asynchronous call per epoch, flushed before each run ends, so it does not slow training down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.async_logging.run_operations import RunOperations

from trainlib.engine import EpochResult, TrainingDiverged
from trainlib.stores import local_artifact_location, redact

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own progress bar is enough

PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"
WEIGHTS_FILE = "model_state.pt"


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TrialRun:
    """One trial's child run; ``log_epoch`` is the engine callback."""

    client: MlflowClient | None
    run_id: str | None
    pending: list[RunOperations] = field(default_factory=list)

    def log_epoch(self, result: EpochResult) -> None:
        """Log one epoch's metrics in a single asynchronous batch (step = epoch)."""
        if self.client is None or self.run_id is None:
            return
        timestamp = _now_ms()
        metrics = [Metric(key, value, timestamp, result.epoch) for key, value in result.metrics().items()]
        operation = self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
        if operation is not None:
            self.pending.append(operation)

    def flush(self) -> None:
        """Wait until every queued batch of this run has reached the store."""
        for operation in self.pending:
            operation.wait()
        self.pending.clear()


class SweepTracker:
    """Records a study in MLflow: experiment, parent run, child runs, and the end-of-sweep summary."""

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
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
        """Create the study's parent run (first command) or reopen it (resume); return its id."""
        parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if parent_run_id is None and not created_study:
            parent_run_id = _wait_for_parent(study)
        if parent_run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=study.study_name, tags={"trainlib.role": "study"})
            parent_run_id = run.info.run_id
            study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)
            params = [Param(key, _param_text(value)) for key, value in fixed_params.items()]
            for chunk_start in range(0, len(params), 100):
                self.client.log_batch(parent_run_id, params=params[chunk_start : chunk_start + 100])
            self.client.log_artifact(parent_run_id, str(config_file), artifact_path="config")
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.client.log_batch(parent_run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        self.parent_run_id = parent_run_id
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
        self.client.log_metric(self.parent_run_id, f"best_{metric}", best, step=trial.number, synchronous=False)

    # ---- child runs ----

    @contextlib.contextmanager
    def trial_run(self, trial: optuna.Trial, params: dict[str, Any]) -> Iterator[TrialRun]:
        """A child run for ``trial``; its end status follows how the trial ended."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial.number:04d}",
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "trainlib.role": "trial",
                "optuna.study": trial.study.study_name,
            },
        )
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
        except BaseException as error:
            self._end_trial(trial_run, "FAILED", {"optuna.state": "FAIL", "optuna.reason": repr(error)[:500]})
            raise
        else:
            self._end_trial(trial_run, "FINISHED", {"optuna.state": "COMPLETE"})

    def _end_trial(self, trial_run: TrialRun, status: str, tags: dict[str, str]) -> None:
        trial_run.flush()
        self.client.log_batch(trial_run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(trial_run.run_id, status)

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
        with mlflow.start_run(run_id=self.parent_run_id, experiment_id=self.experiment_id):
            mlflow.pytorch.log_model(
                model, name="best_model", signature=signature, input_example=example.numpy()[:5], pip_requirements=[]
            )
        self.client.log_metric(self.parent_run_id, "test_accuracy", test_accuracy)
        self.client.set_tag(self.parent_run_id, "best_trial_number", str(trial_number))


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


def ensure_experiment(client: MlflowClient, tracking_uri: str, name: str) -> str:
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


def _wait_for_parent(study: optuna.Study, timeout_seconds: float = 60.0) -> str | None:
    """Another process created the study; wait for it to publish the parent run id."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        study_attrs = study._storage.get_study_user_attrs(study._study_id)
        if PARENT_RUN_ATTR in study_attrs:
            return study_attrs[PARENT_RUN_ATTR]
        time.sleep(0.5)
    log.warning("no parent run appeared for study %s within %.0f s; creating one", study.study_name, timeout_seconds)
    return None


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
