"""One trial: suggest, build, train, report. Tracking and pruning arrive as engine callbacks."""

from __future__ import annotations

import dataclasses
import math

import optuna
import torch

from trainlib._compat import frozen_trial
from trainlib.data import DatasetSplits, make_loader
from trainlib.device import device_name
from trainlib.engine import Callback, EpochResult, TrainingDiverged, train_model
from trainlib.factories import describe
from trainlib.loader_tuning import LoaderSettings, training_step, tuned_loader_settings
from trainlib.seeding import seed_everything
from trainlib.store_failures import StoreDamaged, StoreUnavailable
from trainlib.sweep.config import METRICS, SweepConfig
from trainlib.sweep.curve_pruning import CURVE_ATTR, CurvePruner
from trainlib.sweep.interrupts import raise_if_interrupted, received_signal
from trainlib.sweep.measures import MEASURES_ATTR, TrialMeasures
from trainlib.sweep.search import TrialParams, suggest
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
) -> float | tuple[float, ...]:
    """One trial: suggest hyperparameters, train them with tracking and pruning callbacks, return its objectives."""
    raise_if_interrupted()
    trial.set_user_attr(WORKER_ATTR, worker_identity())  # its own machine never fails it as stale while it runs
    params = suggest(trial, config.search)
    settings = config.study
    measures = TrialMeasures(device, settings.target_accuracy)
    retry_of = retried_trial_number(frozen_trial(trial))
    where = f"{device} ({device_name(device)})" if device.type == "cuda" else str(device)
    logged = params.as_dict()
    if config.data.num_workers == "auto":  # the probe's pick, beside the hyperparameters it was probed for
        logged.update(loader_settings(config, workload, splits, device, params.batch_size).as_params())
    trial_log = tracker.start_trial(trial.study.study_name, trial.number, logged, retry_of, where)
    try:
        best = train_configuration(
            params,
            config.training.seed + trial.number,  # weights and batch order differ per trial, fixed per study
            config,
            workload,
            splits,
            device,
            callbacks=[trial_log.log_epoch, measures.update, pruning_callback(trial, config)],
        )
        measured = {**measures.as_dict(), settings.quality_metric: best.value}
        if "time_to_target" in settings.metric_names and "time_to_target" not in measured:
            raise optuna.TrialPruned(f"target accuracy {measures.target_note()}")
        tracker.log_trial_result(trial_log, run_metrics(measured, settings.quality_metric), best.weights)
        trial.set_user_attr(MEASURES_ATTR, measured)
    except BaseException as error:
        outcome = outcome_of(error)
        if outcome is not None:
            _record_end(trial, tracker, trial_log, outcome, measures.target_note())
        raise
    _record_end(trial, tracker, trial_log, TrialOutcome("FINISHED", "COMPLETE"), measures.target_note())
    values = tuple(measured[metric] for metric in settings.metric_names)
    return values if settings.multi_objective else values[0]


def train_configuration(
    params: TrialParams,
    seed: int,
    config: SweepConfig,
    workload: Workload,
    splits: DatasetSplits,
    device: torch.device,
    callbacks: list[Callback],
) -> BestEpoch:
    """Train one configuration from ``seed`` (model, loaders, engine); its best epoch by the quality metric.

    An error the study does not expect (in the user's model, say) becomes TrialFailed.
    """
    seed_everything(seed)
    model = build_workload_model(workload, splits)
    loading = loader_settings(config, workload, splits, device, params.batch_size)
    train_loader = make_loader(
        splits.train, params.batch_size, True, device=device, seed=seed, **loading.loader_options()
    )
    val_loader = make_loader(splits.val, config.data.eval_batch_size, False, device=device)
    quality = config.study.quality_metric
    best = BestEpoch(model, quality, maximize=METRICS[quality] == "maximize")
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
            callbacks=[raise_if_interrupted, best.update, *callbacks],
            divergence_threshold=config.training.divergence_threshold,
            lr_schedule=params.lr_schedule or config.training.lr_schedule,
            **config.speed_knobs(params.speed).as_keywords(),
        )
    except Exception as error:
        if isinstance(error, EXPECTED_IN_TRAINING):
            raise
        raise TrialFailed(f"training raised {describe(error)}") from error
    return best


def loader_settings(
    config: SweepConfig, workload: Workload, splits: DatasetSplits, device: torch.device, batch_size: int
) -> LoaderSettings:
    """The study's loader settings; with num_workers = "auto" the probe's pick for this batch size (cached)."""
    data = config.data
    if data.num_workers != "auto":
        return LoaderSettings(data.num_workers, data.prefetch_factor, data.persistent_workers, data.pin_memory)
    key = (workload.key(), batch_size, str(device))
    if key not in _PICKS:
        step = training_step(build_workload_model(workload, splits), device)
        _PICKS[key] = tuned_loader_settings(workload.key(), splits.train, batch_size, device, step).settings
    return _PICKS[key]


_PICKS: dict[tuple[str, int, str], LoaderSettings] = {}  # per process: the cache file is read once per batch size


def run_metrics(measured: dict[str, float], quality_metric: str) -> dict[str, float]:
    """A trial's figures as its run's metrics: best_<quality> and the whole-trial measures (not per-epoch names)."""
    renamed = {"samples_per_second": "mean_samples_per_second"}  # the per-epoch metric keeps its own name
    metrics = {f"best_{quality_metric}": measured[quality_metric]}
    for name in ("train_seconds", "samples_per_second", "time_to_target", "peak_memory_mb"):
        if name in measured:
            metrics[renamed.get(name, name)] = measured[name]
    return metrics


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


def _record_end(
    trial: optuna.Trial, tracker: Tracker, trial_log: TrialLog, outcome: TrialOutcome, target_note: str | None
) -> None:
    if target_note is not None:
        outcome = dataclasses.replace(outcome, details={**outcome.details, TARGET_TAG: target_note})
    # Recorded while the trial still runs (Optuna refuses attributes of finished trials).
    trial.set_user_attr(RUN_ID_ATTR, tracker.end_trial(trial_log, outcome))


TARGET_TAG = "trainlib.target"  # on each trial's run: when it reached the target accuracy, or that it did not


def pruning_callback(trial: optuna.Trial, config: SweepConfig) -> Callback:
    """An engine callback that stops the trial when the study's pruner says so (raises TrialPruned).

    One objective: the quality metric is reported to Optuna's pruner. Several: Optuna cannot prune
    (optuna#3450), so the curve is recorded on the trial and CurvePruner applies the same rule to it.
    """
    settings = config.study
    metric = settings.quality_metric
    if settings.multi_objective:
        return _curve_pruning_callback(trial, config)

    def report(result: EpochResult) -> None:
        value = result.metrics()[metric]
        trial.report(value, result.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch} ({metric}={value:.4f})")

    return report


def _curve_pruning_callback(trial: optuna.Trial, config: SweepConfig) -> Callback:
    settings = config.study
    metric = settings.quality_metric
    pruner = CurvePruner(
        settings.pruner, settings.pruner_startup_trials, settings.pruner_warmup_epochs, METRICS[metric] == "maximize"
    )
    curve: list[float] = []

    def record_and_judge(result: EpochResult) -> None:
        value = result.metrics()[metric]
        curve.append(value)
        trial.set_user_attr(CURVE_ATTR, curve)
        if settings.pruner == "none":
            return
        others = [other for other in trial.study.get_trials(deepcopy=False) if other.number != trial.number]
        if pruner.should_prune(curve, others):
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch} ({metric}={value:.4f}, {settings.pruner} rule)")

    return record_and_judge


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
