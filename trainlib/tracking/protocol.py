"""What a sweep asks of a tracker (a Protocol, as torchtune's MetricLoggerInterface), and the one that logs nothing.

The sweep decides; a tracker records. A trial's outcome (complete, pruned, failed, interrupted) is decided by
the objective and handed over as a TrialOutcome; the tracker never inspects exceptions or Optuna objects.
"""

from __future__ import annotations

import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from trainlib.engine import EpochResult

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: its run's status, Optuna's state for it, and why (tags on the trial's run)."""

    run_status: str  # FINISHED, FAILED or KILLED
    state: str  # COMPLETE, PRUNED or FAIL
    reason: str | None = None
    details: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """The run tags that record this outcome (optuna.state, optuna.reason, ...)."""
        reason = {} if self.reason is None else {"optuna.reason": self.reason[:500]}
        return {"optuna.state": self.state, **reason, **self.details}


@dataclass(frozen=True)
class RunNote:
    """Tags and metrics (step 0) to add to a run that has ended."""

    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class ParentRunSlot(Protocol):
    """Where a study publishes its parent run's id, with a claim so that one command (on any machine) creates it."""

    def published(self) -> str | None:
        """The parent run id published so far (read fresh), or None."""

    def claim(self) -> AbstractContextManager[bool]:
        """Try to hold the claim; yields whether this command holds it, and releases it on exit."""

    def publish(self, run_id: str) -> None:
        """Publish the parent run id for every later command."""

    def claim_hint(self) -> str:
        """How a person removes a claim that a dead command left behind."""


@runtime_checkable
class TrialLog(Protocol):
    """One trial's log; ``log_epoch`` is an engine callback."""

    trial_number: int

    def log_epoch(self, result: EpochResult) -> None:
        """Record one epoch's metrics (step = epoch)."""


@runtime_checkable
class Tracker(Protocol):
    """Records a study: a parent run, one child run per trial, the end-of-sweep report and best model."""

    def wait_until_open(self) -> None:
        """Wait until the store is open (created the first time); raise what went wrong there."""

    def start_sweep(
        self, slot: ParentRunSlot, created_study: bool, params: dict[str, Any], tags: dict[str, str], config: Path
    ) -> None:
        """Create the study's parent run, or join the one another command made (without waiting for the store)."""

    def attach(self, parent_run_id: str) -> None:
        """Use an existing parent run (worker processes)."""

    def wait_for_parent_run_id(self) -> str | None:
        """The parent run's id, once the store has it; None when there is none (no tracking)."""

    def log_study_metrics(self, metrics: dict[str, float], trial_number: int) -> None:
        """The study's progress after trial ``trial_number`` (best value, hypervolume): parent metrics, step = trial."""

    def start_trial(
        self, study_name: str, trial_number: int, params: dict[str, Any], retry_of: int | None, device: str = ""
    ) -> TrialLog:
        """A child run for a trial that starts now (``retry_of``: the dead trial it runs again; ``device``: where it
        trains, tagged trainlib.device)."""

    def start_reevaluation(self, study_name: str, trial_number: int, seed: int, params: dict[str, Any]) -> TrialLog:
        """A child run for trial ``trial_number``'s configuration trained again from ``seed``."""

    def log_trial_result(self, trial: TrialLog, metrics: dict[str, float], weights: dict[str, Any] | None) -> None:
        """The trial's figures (best metric, training seconds, ...), and the weights of its best epoch (if given)."""

    def end_trial(self, trial: TrialLog, outcome: TrialOutcome) -> str | None:
        """End the trial's run as ``outcome`` says once its log is stored; return its run id (None: not tracked)."""

    def load_trial_weights(self, run_id: str | None, trial_number: int) -> dict[str, Any] | None:
        """The best-epoch weights a trial logged, or None."""

    def end_lost_trial(self, study_name: str, trial_number: int, run_id: str | None, reason: str) -> list[str]:
        """End the run of a trial whose worker died as KILLED; return the run ids ended."""

    def annotate_runs(self, notes: dict[str, RunNote]) -> None:
        """Add tags and metrics to runs, by run id (Pareto-front tags, re-evaluation means), after they ended."""

    def log_summary(self, counts: dict[str, int], files: list[Path], tags: dict[str, str] | None = None) -> None:
        """Trial counts, report files and tags on the parent run; waits until all is stored."""

    def log_best_model(
        self, model: torch.nn.Module, example: torch.Tensor, test_accuracy: float, trial_number: int
    ) -> None:
        """The chosen model (signature, input example) and its held-out test accuracy, on the parent run."""

    def flush(self) -> None:
        """Wait until everything handed over so far is in the store; raise what went wrong there."""

    def end_sweep(self, status: str | None, reason: str | None = None) -> None:
        """End the parent run and any trial run still open FINISHED, FAILED or KILLED, recording ``reason``, and stop.

        ``status`` None leaves the parent for another command. Never raises: a tracker that cannot reach its
        store says so in one log line.
        """


@dataclass(frozen=True)
class UntrackedTrial:
    """A trial's log that records nothing."""

    trial_number: int

    def log_epoch(self, result: EpochResult) -> None:
        pass


class NullTracker:
    """``--no-tracking``: records nothing in any store (best-epoch weights go to a temporary folder)."""

    def __init__(self) -> None:
        self._weights_dir = tempfile.TemporaryDirectory(prefix="trainlib-weights-")

    def wait_until_open(self) -> None:
        pass

    def start_sweep(
        self, slot: ParentRunSlot, created_study: bool, params: dict[str, Any], tags: dict[str, str], config: Path
    ) -> None:
        pass

    def attach(self, parent_run_id: str) -> None:
        pass

    def wait_for_parent_run_id(self) -> str | None:
        return None

    def log_study_metrics(self, metrics: dict[str, float], trial_number: int) -> None:
        pass

    def start_trial(
        self, study_name: str, trial_number: int, params: dict[str, Any], retry_of: int | None, device: str = ""
    ) -> TrialLog:
        return UntrackedTrial(trial_number)

    def start_reevaluation(self, study_name: str, trial_number: int, seed: int, params: dict[str, Any]) -> TrialLog:
        return UntrackedTrial(trial_number)

    def log_trial_result(self, trial: TrialLog, metrics: dict[str, float], weights: dict[str, Any] | None) -> None:
        if weights is not None:
            torch.save(weights, self._weights_path(trial.trial_number))

    def end_trial(self, trial: TrialLog, outcome: TrialOutcome) -> str | None:
        return None

    def load_trial_weights(self, run_id: str | None, trial_number: int) -> dict[str, Any] | None:
        path = self._weights_path(trial_number)
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def end_lost_trial(self, study_name: str, trial_number: int, run_id: str | None, reason: str) -> list[str]:
        return []

    def annotate_runs(self, notes: dict[str, RunNote]) -> None:
        pass

    def log_summary(self, counts: dict[str, int], files: list[Path], tags: dict[str, str] | None = None) -> None:
        pass

    def log_best_model(
        self, model: torch.nn.Module, example: torch.Tensor, test_accuracy: float, trial_number: int
    ) -> None:
        pass

    def flush(self) -> None:
        pass

    def end_sweep(self, status: str | None, reason: str | None = None) -> None:
        pass

    def _weights_path(self, trial_number: int) -> Path:
        return Path(self._weights_dir.name) / f"trial-{trial_number}.pt"
