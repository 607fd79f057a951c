"""One trial: suggest, build, train, report. Tracking and pruning arrive as engine callbacks."""

from __future__ import annotations

import math

import optuna
import torch

from trainlib._compat import frozen_trial
from trainlib.data import DatasetSplits, make_loader
from trainlib.engine import Callback, EpochResult, TrainingDiverged, train_model
from trainlib.factories import describe
from trainlib.seeding import seed_everything
from trainlib.store_failures import StoreDamaged, StoreUnavailable
from trainlib.sweep.config import SweepConfig
from trainlib.sweep.interrupts import raise_if_interrupted, received_signal
from trainlib.sweep.search import suggest
from trainlib.sweep.stale_trials import WORKER_ATTR, retried_trial_number, worker_identity
from trainlib.sweep.study import RUN_ID_ATTR
from trainlib.tracking import Tracker, TrialLog, TrialOutcome
from trainlib.workload import Workload, build_workload_model


class TrialFailed(Exception):
    """Training raised (in the user's model, say): the trial fails with the reason and the study goes on."""


def run_trial(
    trial: optuna.Trial,
    config: SweepConfig,
    workload: Workload,
    splits: DatasetSplits,
    device: torch.device,
    tracker: Tracker,
) -> float:
    """One trial: suggest hyperparameters, build the model, train it with tracking and pruning callbacks."""
    raise_if_interrupted()
    trial.set_user_attr(WORKER_ATTR, worker_identity())  # its own machine never fails it as stale while it runs
    params = suggest(trial, config.search)
    trial_seed = config.training.seed + trial.number  # weights and batch order differ per trial, fixed per study
    seed_everything(trial_seed)
    model = build_workload_model(workload, splits)
    train_loader = make_loader(
        splits.train, params.batch_size, True, config.data.num_workers, device=device, seed=trial_seed
    )
    val_loader = make_loader(splits.val, config.data.eval_batch_size, False, device=device)
    metric = config.study.metric
    best = BestEpoch(model, metric, maximize=config.study.direction == "maximize")

    retry_of = retried_trial_number(frozen_trial(trial))
    trial_log = tracker.start_trial(trial.study.study_name, trial.number, params.as_dict(), retry_of)
    try:
        try:
            train_model(
                model,
                train_loader,
                val_loader,
                config.training.epochs,
                params.lr,
                device,
                optimizer=params.optimizer,
                optimizer_options=params.optimizer_options,
                callbacks=[raise_if_interrupted, trial_log.log_epoch, best.update, pruning_callback(trial, metric)],
                divergence_threshold=config.training.divergence_threshold,
                lr_schedule=config.training.lr_schedule,
            )
        except Exception as error:
            if isinstance(error, EXPECTED_IN_TRAINING):
                raise
            raise TrialFailed(f"training raised {describe(error)}") from error
        tracker.log_trial_result(trial_log, metric, best.value, best.weights)
    except BaseException as error:
        outcome = outcome_of(error)
        if outcome is not None:
            _record_end(trial, tracker, trial_log, outcome)
        raise
    _record_end(trial, tracker, trial_log, TrialOutcome("FINISHED", "COMPLETE"))
    return best.value


# What a training run raises on purpose (pruned, diverged, a lost store); anything else fails just the trial.
EXPECTED_IN_TRAINING = (optuna.TrialPruned, TrainingDiverged, StoreUnavailable, StoreDamaged)


def outcome_of(error: BaseException) -> TrialOutcome | None:
    """How a trial that raised ``error`` ended; None when the store cannot be told (the sweep's way out tries)."""
    if isinstance(error, optuna.TrialPruned):
        return TrialOutcome("FINISHED", "PRUNED", str(error))
    if isinstance(error, TrainingDiverged):
        return TrialOutcome("FAILED", "FAIL", str(error), {"optuna.failed_epoch": str(error.epoch)})
    if isinstance(error, KeyboardInterrupt):
        return TrialOutcome("KILLED", "FAIL", f"interrupted ({received_signal()})")
    if isinstance(error, StoreUnavailable):
        return None if error.store == "tracking" else TrialOutcome("FAILED", "FAIL", str(error))
    if isinstance(error, StoreDamaged):  # perhaps the tracking store: the way out ends the run if it can
        return None
    if isinstance(error, TrialFailed):
        return TrialOutcome("FAILED", "FAIL", str(error))
    return TrialOutcome("FAILED", "FAIL", repr(error))


def _record_end(trial: optuna.Trial, tracker: Tracker, trial_log: TrialLog, outcome: TrialOutcome) -> None:
    # Recorded while the trial still runs (Optuna refuses attributes of finished trials).
    trial.set_user_attr(RUN_ID_ATTR, tracker.end_trial(trial_log, outcome))


def pruning_callback(trial: optuna.Trial, metric: str) -> Callback:
    """An engine callback reporting ``metric`` each epoch, and raising TrialPruned when the pruner says so."""

    def report(result: EpochResult) -> None:
        value = result.metrics()[metric]
        trial.report(value, result.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch} ({metric}={value:.4f})")

    return report


class BestEpoch:
    """Callback keeping the best epoch's metric and a CPU copy of its weights."""

    def __init__(self, model: torch.nn.Module, metric: str, maximize: bool) -> None:
        self.model, self.metric, self.maximize = model, metric, maximize
        self.value = -math.inf if maximize else math.inf
        self.weights: dict[str, torch.Tensor] = {}

    def update(self, result: EpochResult) -> None:
        value = result.metrics()[self.metric]
        if (value > self.value) if self.maximize else (value < self.value):
            self.value = value
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
