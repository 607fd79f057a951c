"""The sweep recipe: an Optuna study whose trials call the engine, tracked in MLflow through callbacks.

Each trial reads as: suggest, build, train, report. Tracking and pruning arrive as engine callbacks.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import multiprocessing
import os
import signal
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from tqdm import tqdm

from trainlib.config import SweepConfig
from trainlib.data import DatasetSplits, load_dataset, make_loader
from trainlib.device import resolve_device
from trainlib.engine import EpochResult, TrainingDiverged, evaluate_model, train_model
from trainlib.errors import InvalidArgument, check_positive_int
from trainlib.models import build_model
from trainlib.search import PRUNERS, SAMPLERS, suggest
from trainlib.seeding import seed_everything
from trainlib.stores import is_sqlite, redact, resolve_storage_url, resolve_tracking_uri
from trainlib.tracking import NullTracker, SweepTracker, environment_tags

log = logging.getLogger(__name__)

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep command needs, validated: what each worker process receives."""

    config: SweepConfig
    config_file: Path
    n_trials: int
    storage_url: str
    tracking_uri: str | None
    workers: int


@dataclass
class SweepSummary:
    """What a sweep command leaves behind, for the CLI to print."""

    study_name: str
    counts: dict[str, int]
    top_trials: pd.DataFrame
    best_params: dict[str, Any] | None
    best_value: float | None
    test_accuracy: float | None
    parent_run_id: str | None
    tracking_uri: str | None
    seconds: float


class SweepInterrupted(Exception):
    """SIGINT stopped the sweep; every run and trial it touched has been closed."""


def plan_sweep(
    config: SweepConfig,
    config_file: str | Path,
    *,
    n_trials: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    workers: int = 1,
    tracking: bool = True,
) -> SweepPlan:
    """Check every command-line choice before anything is created; raise InvalidArgument on the first bad one."""
    n_trials = config.study.n_trials if n_trials is None else n_trials
    check_positive_int("--n-trials", n_trials)
    check_positive_int("--workers", workers)
    storage_url = resolve_storage_url(storage)
    if workers > 1 and is_sqlite(storage_url):
        raise InvalidArgument(
            "sqlite storage is not safe with --workers > 1; use the default journal file, journal:///path or postgresql://"
        )
    return SweepPlan(
        config=config,
        config_file=Path(config_file),
        n_trials=n_trials,
        storage_url=storage_url,
        tracking_uri=resolve_tracking_uri(tracking_uri) if tracking else None,
        workers=workers,
    )


def open_storage(storage_url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``storage_url`` (journal:///file, sqlite, postgresql, mysql)."""
    if storage_url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage_url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if is_sqlite(storage_url):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(storage_url, engine_kwargs={"pool_pre_ping": True})
    except Exception as error:  # sqlalchemy raises many kinds; the user needs one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidArgument(f"cannot open Optuna storage {redact(storage_url)}: {first_line}") from None


def open_study(plan: SweepPlan, worker_index: int = 0) -> tuple[optuna.Study, bool]:
    """Create the study, or load it to resume; returns (study, whether this call created it)."""
    settings = plan.config.study
    storage = open_storage(plan.storage_url)
    pruner = PRUNERS[settings.pruner]()
    try:
        study = optuna.create_study(
            storage=storage, pruner=pruner, study_name=settings.name, direction=settings.direction
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, pruner=pruner, study_name=settings.name)
        created = False
        if study.direction.name.lower() != settings.direction:
            raise InvalidArgument(
                f"study {settings.name!r} exists with direction {study.direction.name.lower()}, "
                f"the config says {settings.direction}"
            ) from None
    # A resumed study or a second worker must not replay the first command's random draws.
    seed_offset = len(study.get_trials(deepcopy=False)) + 10_007 * worker_index
    study.sampler = SAMPLERS[settings.sampler](settings.seed + seed_offset)
    return study, created


@functools.lru_cache(maxsize=4)
def _load_splits(dataset: str, seed: int, val_fraction: float, num_samples: int | None) -> DatasetSplits:
    return load_dataset(dataset, seed=seed, val_fraction=val_fraction, num_samples=num_samples)


def run_trial(
    trial: optuna.Trial, config: SweepConfig, splits: DatasetSplits, device: torch.device, tracker: Any
) -> float:
    """One trial: suggest hyperparameters, build the model, train it with tracking and pruning callbacks."""
    params = suggest(trial, config.search)
    seed_everything(config.training.seed + trial.number)
    model = build_model(config.model.name, splits.num_features, splits.num_classes, **config.model.options())
    optimizer_options = {key: params[key] for key in params if key not in ("lr", "batch_size", "optimizer")}
    train_loader = make_loader(
        splits.train, params["batch_size"], True, config.data.num_workers, device=device, seed=trial.number
    )
    val_loader = make_loader(splits.val, config.data.eval_batch_size, False, device=device)
    metric, maximize = config.study.metric, config.study.direction == "maximize"
    best = _BestEpoch(model, metric, maximize)

    def report(result: EpochResult) -> None:
        value = result.metrics()[metric]
        trial.report(value, result.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch} ({metric}={value:.4f})")

    with tracker.trial_run(trial, params) as trial_run:
        train_model(
            model,
            train_loader,
            val_loader,
            config.training.epochs,
            params["lr"],
            device,
            optimizer=params["optimizer"],
            callbacks=[trial_run.log_epoch, best.update, report],
            optimizer_options=optimizer_options,
        )
        tracker.log_trial_result(trial_run, metric, best.value, best.weights)
    return best.value


class _BestEpoch:
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


def _make_tracker(plan: SweepPlan) -> SweepTracker | NullTracker:
    return SweepTracker(plan.tracking_uri, plan.config.study.name) if plan.tracking_uri else NullTracker()


def _optimize(
    study: optuna.Study, plan: SweepPlan, tracker: Any, n_trials: int, on_trial: Callable[..., None] | None = None
) -> None:
    config = plan.config
    device = resolve_device(config.training.device)
    data = config.data
    splits = _load_splits(data.dataset, config.training.seed, data.val_fraction, data.num_samples)
    objective = functools.partial(run_trial, config=config, splits=splits, device=device, tracker=tracker)
    callbacks = [functools.partial(tracker.on_trial_finished, metric=config.study.metric)]
    if on_trial is not None:
        callbacks.append(on_trial)
    study.optimize(objective, n_trials=n_trials, catch=(TrainingDiverged,), callbacks=callbacks)


def _worker_main(plan: SweepPlan, worker_index: int, n_trials: int, threads: int, parent_run_id: str | None) -> None:
    """Entry point of one worker process: its share of the trials on the shared study."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _ = open_study(plan, worker_index)
    tracker = _make_tracker(plan)
    if parent_run_id is not None:
        tracker.attach(parent_run_id)
    # On SIGINT the interrupted trial and its run are closed on the way out; the parent process reports it.
    with contextlib.suppress(KeyboardInterrupt):
        _optimize(study, plan, tracker, n_trials)


def run_sweep(plan: SweepPlan, show_progress: bool = True) -> SweepSummary:
    """Run ``plan.n_trials`` trials of the study (in ``plan.workers`` processes) and record the summary."""
    started = time.perf_counter()
    config = plan.config
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, created = open_study(plan)
    tracker = _make_tracker(plan)
    device = resolve_device(config.training.device)
    fixed_params = _fixed_params(config)
    tags = environment_tags(device, plan.storage_url, config.study.sampler, config.study.pruner)
    parent_run_id = tracker.start_sweep(study, created, fixed_params, tags, plan.config_file)
    already_finished = _count_finished(study)
    progress = tqdm(total=plan.n_trials, desc=f"study {config.study.name}", unit="trial", disable=not show_progress)
    try:
        if plan.workers == 1:
            _optimize(study, plan, tracker, plan.n_trials, on_trial=lambda s, t: _advance(progress, s))
        else:
            _run_workers(plan, parent_run_id, study, progress, already_finished)
    except KeyboardInterrupt:
        progress.close()
        tracker.end_sweep("KILLED")
        raise SweepInterrupted(config.study.name) from None
    except BaseException:
        progress.close()
        tracker.end_sweep("FAILED")
        raise
    progress.close()
    summary = _summarize(study, plan, tracker, started)
    tracker.end_sweep("FINISHED")
    return summary


def _advance(progress: tqdm, study: optuna.Study) -> None:
    progress.update(1)
    with contextlib.suppress(ValueError):
        progress.set_postfix(best=f"{study.best_value:.4f}")


def _count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def _run_workers(
    plan: SweepPlan, parent_run_id: str | None, study: optuna.Study, progress: tqdm, baseline: int
) -> None:
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // plan.workers)
    shares = [plan.n_trials // plan.workers + (i < plan.n_trials % plan.workers) for i in range(plan.workers)]
    processes = [
        context.Process(target=_worker_main, args=(plan, index, share, threads, parent_run_id), name=f"worker-{index}")
        for index, share in enumerate(shares)
        if share > 0
    ]
    for process in processes:
        process.start()
    try:
        while any(process.is_alive() for process in processes):
            time.sleep(1.0)
            _show_progress(progress, study, baseline)
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    _show_progress(progress, study, baseline)
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker processes {', '.join(failed)} exited with an error; see the log above")


def _show_progress(progress: tqdm, study: optuna.Study, baseline: int) -> None:
    done = min(_count_finished(study) - baseline, progress.total)
    progress.update(done - progress.n)
    with contextlib.suppress(ValueError):
        progress.set_postfix(best=f"{study.best_value:.4f}")


def _fixed_params(config: SweepConfig) -> dict[str, Any]:
    """The settings every trial shares, flattened for MLflow params (the search space as text)."""
    dumped = config.model_dump()
    flat: dict[str, Any] = {}
    for section in ("study", "data", "model", "training"):
        for key, value in dumped[section].items():
            flat[f"{section}.{key}"] = value
    for key, value in dumped["search"].items():
        flat[f"search.{key}"] = value
    return flat


def _summarize(study: optuna.Study, plan: SweepPlan, tracker: Any, started: float) -> SweepSummary:
    trials = study.get_trials(deepcopy=False)
    counts = {
        state.name.lower(): sum(t.state == state for t in trials)
        for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    }
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration"))
    if len(frame):
        frame["seconds"] = frame.pop("duration").dt.total_seconds().round(1)
        frame.columns = [column.removeprefix("params_") for column in frame.columns]
    complete = frame[frame["state"] == "COMPLETE"] if len(frame) else frame
    ascending = plan.config.study.direction == "minimize"
    top = complete.sort_values("value", ascending=ascending).head(10) if len(complete) else complete
    best_trial = study.best_trial if counts["complete"] else None
    test_accuracy = None
    files: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="trainlib-report-") as folder_name:
        folder = Path(folder_name)
        if len(frame):
            csv_path = folder / "trials.csv"
            study.trials_dataframe().to_csv(csv_path, index=False)
            files.append(csv_path)
            files.extend(_plot_study(study, folder))
        tracker.log_summary(counts, files)
    if best_trial is not None:
        test_accuracy = _test_best_model(best_trial, plan.config, tracker)
    return SweepSummary(
        study_name=study.study_name,
        counts=counts,
        top_trials=top,
        best_params=best_trial.params if best_trial else None,
        best_value=best_trial.value if best_trial else None,
        test_accuracy=test_accuracy,
        parent_run_id=tracker.parent_run_id,
        tracking_uri=plan.tracking_uri,
        seconds=time.perf_counter() - started,
    )


def _plot_study(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's plots as PNG files; a plot that needs more trials than exist is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "optimization_history": optuna_plots.plot_optimization_history,
        "param_importances": optuna_plots.plot_param_importances,
        "parallel_coordinate": optuna_plots.plot_parallel_coordinate,
        "slice": optuna_plots.plot_slice,
    }
    written = []
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" notices and small-sample caveats, every run
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            log.info("skipped plot %s: %s", name, error)
            continue
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        figure.set_size_inches(10, 6)
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def _test_best_model(best_trial: optuna.trial.FrozenTrial, config: SweepConfig, tracker: Any) -> float | None:
    """Rebuild the best trial's best epoch and measure it once on the held-out test split."""
    weights = tracker.load_trial_weights(best_trial)
    if weights is None:
        log.warning("best trial %d logged no weights; no test accuracy", best_trial.number)
        return None
    data = config.data
    splits = _load_splits(data.dataset, config.training.seed, data.val_fraction, data.num_samples)
    model = build_model(config.model.name, splits.num_features, splits.num_classes, **config.model.options())
    model.load_state_dict(weights)
    test_loader = make_loader(splits.test, data.eval_batch_size, False)
    _, test_accuracy = evaluate_model(model, test_loader, torch.nn.CrossEntropyLoss(), "cpu")
    example = copy.deepcopy(splits.test.tensors[0][:5])
    tracker.log_best_model(model, example, test_accuracy, best_trial.number)
    return test_accuracy
