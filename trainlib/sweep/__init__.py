"""The sweep recipe: an Optuna study whose trials call the engine, tracked through a Tracker.

plan_sweep (config + flags -> SweepPlan) -> run_sweep: open the study, start the parent run, run the trials
(objective.run_trial: suggest, build, train, report), wait for other workers' trials, write the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any

import optuna
from tqdm import tqdm

from trainlib.device import resolve_device
from trainlib.errors import InvalidArgument
from trainlib.sweep.config import SweepConfig, load_config
from trainlib.sweep.interrupts import EndingRuns, SweepInterrupted, install_interrupt_handler, raise_if_interrupted
from trainlib.sweep.plan import SweepPlan, plan_sweep
from trainlib.sweep.report import SweepSummary, summarize
from trainlib.sweep.stale_trials import StaleTrialReaper, wait_for_other_trials
from trainlib.sweep.study import StudyParentSlot, check_study_exists, open_study
from trainlib.sweep.workers import (
    advance_progress,
    count_finished,
    make_tracker,
    prepare_process,
    run_new_trials,
    run_one_trial,
    run_workers,
)
from trainlib.tracking import Tracker, environment_tags
from trainlib.workload import build_workload_model, check_workload, provenance

__all__ = [
    "SweepConfig",
    "SweepInterrupted",
    "SweepPlan",
    "SweepSummary",
    "install_interrupt_handler",
    "load_config",
    "plan_sweep",
    "run_sweep",
]


def run_sweep(plan: SweepPlan, show_progress: bool = True) -> SweepSummary:
    """Run ``plan.n_trials`` trials of the study (in ``plan.workers`` processes) and record the summary.

    Every way out (the end, Ctrl-C, SIGTERM, a lost or broken store, an error) leaves through EndingRuns,
    which ends every run this command started. Stores are checked before any trial: the MLflow store is
    opened first (created under a lock on first use), then the study, then its parent run is found or made.
    """
    started = time.perf_counter()
    if plan.time_budget_seconds is not None:  # counted from the command's start; workers get the same deadline
        plan = dataclasses.replace(plan, deadline=time.time() + plan.time_budget_seconds)
    config = plan.config
    prepare_process()
    workload = plan.workload
    try:  # mistakes in the data or the model (the user's own too), found before any store is opened
        splits = check_workload(workload, config.training.seed)
        if any(knobs.channels_last for knobs in config.speed_choices()):  # the one knob that depends on the model
            config.check_speed_on(build_workload_model(workload, splits))
    except InvalidArgument as error:
        raise InvalidArgument(f"{plan.config_file}: {error}") from None
    if plan.n_trials == 0:
        check_study_exists(plan)  # only finishes a study: never creates one
    tracker = make_tracker(plan)
    progress: tqdm | None = None
    try:
        with EndingRuns(tracker, config.study.name) as ending:
            tracker.wait_until_open()
            opened = open_study(plan)
            study = opened.study
            tags = environment_tags(
                resolve_device(config.training.device), plan.storage_url, config.study.sampler, config.study.pruner
            )
            tags.update(provenance(workload, splits))
            slot = StudyParentSlot(study, opened.storage)
            tracker.start_sweep(slot, opened.created, fixed_params(config), tags, plan.config_file)
            parent_run_id = tracker.wait_for_parent_run_id()  # stores that disagree stop here, before any trial
            ending.during = "trials"
            finished_before = count_finished(study)
            progress = tqdm(
                total=plan.n_trials, desc=f"study {config.study.name}", unit="trial", disable=not show_progress
            )
            with _reaper(study, plan) as reaper:
                if plan.workers == 1:
                    on_trial = functools.partial(advance_progress, progress)
                    run_new_trials(study, plan, tracker, plan.n_trials, on_trial=on_trial)
                else:
                    run_workers(plan, parent_run_id, study, progress)
                last_alive = _finish_study(study, plan, tracker, reaper)
            progress.close()
            ending.during = "report"
            budget_spent = (
                plan.deadline is not None
                and time.time() >= plan.deadline
                and count_finished(study) < finished_before + plan.n_trials
            )
            summary = summarize(study, plan, tracker, started, report=last_alive, budget_spent=budget_spent)
            ending.status = "FINISHED" if last_alive else None  # else the last live command ends the parent run
    finally:
        if progress is not None:
            progress.close()
    return summary


def _reaper(study: optuna.Study, plan: SweepPlan) -> contextlib.AbstractContextManager[StaleTrialReaper | None]:
    """While the command lives, fail dead workers' trials every heartbeat interval (heartbeat storages only)."""
    return StaleTrialReaper(study, plan.heartbeat_interval) if plan.uses_heartbeats else contextlib.nullcontext()


def _finish_study(study: optuna.Study, plan: SweepPlan, tracker: Tracker, reaper: StaleTrialReaper | None) -> bool:
    """After this command's share: wait for other workers' trials, retry dead ones; True if this command reports.

    Without heartbeats a dead worker cannot be told from a live one, so every command writes the report.
    """
    if reaper is None:
        return True
    return wait_for_other_trials(
        study,
        reaper,
        grace_period=plan.grace_period,
        heartbeat_interval=plan.heartbeat_interval,
        run_retry=lambda: run_one_trial(study, plan, tracker),
        before_poll=raise_if_interrupted,
        may_start_trials=lambda: plan.deadline is None or time.time() < plan.deadline,
    )


def fixed_params(config: SweepConfig) -> dict[str, Any]:
    """The settings every trial shares, flattened for MLflow params (the search space as text)."""
    dumped = config.model_dump(exclude_none=True)
    study = dumped["study"]
    study.pop("objectives", None)
    if config.study.multi_objective:
        del study["metric"], study["direction"]
    study["objectives"] = ", ".join(
        f"{metric} ({direction})"
        for metric, direction in zip(config.study.metric_names, config.study.directions, strict=True)
    )
    flat: dict[str, Any] = {}
    for section in ("study", "data", "model", "training"):
        for key, value in dumped[section].items():
            flat[f"{section}.{key}"] = value
    for key, value in dumped["search"].items():
        flat[f"search.{key}"] = value
    return flat
