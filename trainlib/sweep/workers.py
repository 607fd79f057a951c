"""Running trials: in this process, or shared among worker processes, with progress and interrupts."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable

import optuna
import torch
from tqdm import tqdm

from trainlib._compat import quiet_logger_of_optimize_loop
from trainlib.device import resolve_device, round_robin_device, visible_gpu_count
from trainlib.engine import TrainingDiverged
from trainlib.store_failures import StoreDamaged, StoreUnavailable
from trainlib.sweep.config import SweepConfig
from trainlib.sweep.front import hypervolume, hypervolume_reference
from trainlib.sweep.interrupts import EndingRuns, SweepInterrupted, install_interrupt_handler
from trainlib.sweep.objective import TrialFailed, run_trial
from trainlib.sweep.plan import SweepPlan
from trainlib.sweep.stale_trials import retried_trial_number
from trainlib.sweep.study import open_study
from trainlib.tracking import MlflowTracker, NullTracker, Tracker
from trainlib.workload import load_splits

log = logging.getLogger(__name__)

LOST_STORE_EXIT = 3  # a worker process that gave up on a store (the CLI uses the same code)
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def prepare_process() -> None:
    """Process-wide settings of a sweep command or worker: Optuna's log level, and its log of a lost store."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna logs a trial that raised with its traceback; for a lost store our own one line says it all.
    quiet_logger_of_optimize_loop(
        lambda record: bool(record.exc_info) and isinstance(record.exc_info[1], (StoreUnavailable, StoreDamaged))
    )


def make_tracker(plan: SweepPlan) -> Tracker:
    """The MLflow tracker of the plan, or one that records nothing (--no-tracking)."""
    if plan.tracking_uri is None:
        return NullTracker()
    return MlflowTracker(plan.tracking_uri, plan.config.study.name, plan.max_outage_seconds)


def run_new_trials(
    study: optuna.Study, plan: SweepPlan, tracker: Tracker, new_trials: int, on_trial: TrialCallback | None = None
) -> None:
    """Run ``new_trials`` new trials; retries of dead workers' trials that come this way run in addition."""
    if new_trials > 0:
        _optimize(study, plan, tracker, [NewTrialBudget(new_trials), *([on_trial] if on_trial else [])])


def run_one_trial(study: optuna.Study, plan: SweepPlan, tracker: Tracker) -> None:
    """Run one trial, a waiting one (a retry) first; used once this command's share is done."""
    _optimize(study, plan, tracker, [], n_trials=1)


def _optimize(
    study: optuna.Study, plan: SweepPlan, tracker: Tracker, callbacks: list[TrialCallback], n_trials: int | None = None
) -> None:
    config = plan.config
    device = resolve_device(config.training.device)
    workload = plan.workload
    splits = load_splits(workload, config.training.seed)
    objective = functools.partial(
        run_trial, config=config, workload=workload, splits=splits, device=device, tracker=tracker
    )
    timeout = None if plan.deadline is None else plan.deadline - time.time()
    if timeout is not None and timeout <= 0:
        return  # the time budget is spent: no trial starts
    progress = functools.partial(log_study_progress, tracker=tracker, config=config)
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=timeout,  # Optuna starts no trial once it is spent; the running one finishes
        catch=(TrainingDiverged, TrialFailed),
        callbacks=[progress, *callbacks],
    )


def log_study_progress(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, tracker: Tracker, config: SweepConfig
) -> None:
    """Optuna callback: the best value so far (one objective) or the front's hypervolume (several) on the parent."""
    settings = config.study
    if settings.multi_objective:
        reference = hypervolume_reference(study, settings)
        if reference is not None:
            front = study.best_trials
            tracker.log_study_metrics({"hypervolume": hypervolume(front, settings, reference)}, trial.number)
        return
    with contextlib.suppress(ValueError):  # no complete trial yet
        tracker.log_study_metrics({f"best_{settings.quality_metric}": study.best_value}, trial.number)


class NewTrialBudget:
    """Optuna callback: stop the study's optimize loop once ``n`` trials that are not retries have finished.

    Optuna runs a waiting trial (a dead worker's, enqueued for retry) before it draws a new one, and would count
    it against ``n_trials``; here a retry replaces the lost trial, so --n-trials new trials still run.
    """

    def __init__(self, n: int) -> None:
        self.remaining = n

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if retried_trial_number(trial) is None:
            self.remaining -= 1
        if self.remaining <= 0:
            study.stop()


def worker_main(plan: SweepPlan, worker_index: int, n_trials: int, threads: int, parent_run_id: str | None) -> None:
    """Entry point of one worker process: its share of the trials on the shared study.

    It ends its own trials' runs on every way out (EndingRuns); the parent run is the parent process's, which
    the worker only attaches to and never ends.
    """
    install_interrupt_handler()
    prepare_process()
    torch.set_num_threads(threads)
    device = round_robin_device(plan.config.training.device, worker_index, visible_gpu_count())
    plan = dataclasses.replace(plan, config=plan.config.on_device(device))  # one GPU per worker, round-robin
    tracker = make_tracker(plan)
    if parent_run_id is not None:
        tracker.attach(parent_run_id)
    try:
        with EndingRuns(tracker, plan.config.study.name):
            study = open_study(plan, worker_index).study
            run_new_trials(study, plan, tracker, n_trials)
    except SweepInterrupted:
        return  # the interrupted trial and its run are closed; the parent process reports the interrupt
    except (StoreUnavailable, StoreDamaged) as lost:
        log.error("%s", lost)
        sys.exit(LOST_STORE_EXIT)


def run_workers(plan: SweepPlan, parent_run_id: str | None, study: optuna.Study, progress: tqdm) -> None:
    """Share ``plan.n_trials`` among ``plan.workers`` processes; wait for them, showing progress."""
    baseline = count_finished(study)
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // plan.workers)
    shares = [plan.n_trials // plan.workers + (i < plan.n_trials % plan.workers) for i in range(plan.workers)]
    processes = [
        context.Process(target=worker_main, args=(plan, index, share, threads, parent_run_id), name=f"worker-{index}")
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
    lost = [process.name for process in processes if process.exitcode == LOST_STORE_EXIT]
    if lost:
        raise StoreUnavailable(f"worker processes {', '.join(lost)} gave up on an unreachable store (see above)", "")
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker processes {', '.join(failed)} exited with an error; see the log above")


def advance_progress(progress: tqdm, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna callback: one more trial on the progress bar (a retry also adds one to the total)."""
    if retried_trial_number(trial) is not None:
        progress.total += 1  # a dead worker's trial, run again in addition
    progress.update(1)
    _show_best(progress, study)


def count_finished(study: optuna.Study) -> int:
    """How many of the study's trials are complete, pruned or failed."""
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def _show_progress(progress: tqdm, study: optuna.Study, baseline: int) -> None:
    done = min(count_finished(study) - baseline, progress.total)
    progress.update(done - progress.n)
    _show_best(progress, study)


def _show_best(progress: tqdm, study: optuna.Study) -> None:
    if len(study.directions) > 1:
        progress.set_postfix(front=len(study.best_trials))
        return
    with contextlib.suppress(ValueError):  # no complete trial yet
        progress.set_postfix(best=f"{study.best_value:.4f}")
