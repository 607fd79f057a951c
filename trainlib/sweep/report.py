"""The end of a sweep: counts, top trials, plots, and the best model tested once on the held-out split."""

from __future__ import annotations

import functools
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch

from trainlib.data import make_loader
from trainlib.engine import evaluate_model
from trainlib.sweep.config import METRICS, StudySettings
from trainlib.sweep.front import (
    candidates_of,
    complete_trials,
    front_frame,
    pick_fastest_accurate,
    pick_rule,
    speed_metric,
)
from trainlib.sweep.measures import measures_of
from trainlib.sweep.plan import SweepPlan
from trainlib.sweep.reevaluate import Reevaluation, reevaluate, reevaluation_frame, top_configurations
from trainlib.sweep.study import RUN_ID_ATTR
from trainlib.sweep.workers import FINISHED_STATES
from trainlib.tracking import RunNote, Tracker
from trainlib.workload import build_workload_model, load_splits

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    """What a sweep command leaves behind, for the CLI to print."""

    study_name: str
    counts: dict[str, int]
    top_trials: pd.DataFrame
    best_params: dict[str, Any] | None  # the chosen trial's
    best_value: float | None  # the chosen trial's quality metric
    test_accuracy: float | None
    parent_run_id: str | None
    tracking_uri: str | None
    seconds: float
    report_deferred: bool = False  # other workers are alive and running trials; the last to finish writes the report
    chosen_trial: int | None = None
    selection_rule: str = ""
    front: pd.DataFrame | None = None  # several objectives: the Pareto front
    reevaluation: pd.DataFrame | None = None
    budget_spent: bool = False  # the time budget stopped the study before its --n-trials


def summarize(
    study: optuna.Study, plan: SweepPlan, tracker: Tracker, started: float, report: bool, budget_spent: bool = False
) -> SweepSummary:
    """The summary of the study; with ``report``, also pick, test and log the model and log the report files."""
    settings = plan.config.study
    trials = study.get_trials(deepcopy=False)
    seen = trial_states(trials)  # copied now: the storage may update the trial objects it handed out
    counts = {
        name: sum(trial.state == state for trial in trials)
        for name, state in zip(("complete", "pruned", "failed"), FINISHED_STATES, strict=True)
    }
    frame = trials_table(trials, settings)
    front = front_frame(study, settings) if settings.multi_objective and counts["complete"] else None
    chosen, test_accuracy, reevaluation = None, None, None
    tags: dict[str, str] = {}
    if counts["complete"] and report:
        chosen, test_accuracy, reevaluation = pick_and_test(study, plan, tracker)
        tags["trainlib.selection_rule"] = selection_rule(settings, reevaluation is not None)
    elif counts["complete"] and not settings.multi_objective:
        chosen = study.best_trial  # for the summary only: the reporting command picks and logs the model
    if budget_spent:
        tags["trainlib.stopped_by"] = f"time budget of {plan.time_budget_seconds:g} s"
    with tempfile.TemporaryDirectory(prefix="trainlib-report-") as folder_name:
        tables = {"trials": frame, "pareto_front": front, "reevaluation": reevaluation}
        files = write_report_files(study, settings, tables, Path(folder_name)) if len(frame) and report else []
        if files and trial_states(study.get_trials(deepcopy=False)) != seen:
            # Another command started or ended a trial since this one judged itself the last: it is alive and
            # writes the report when it ends. Uploading this older picture now could land after its newer one.
            files, report = [], False
        tracker.log_summary(counts, files, tags)
    quality_index = settings.metric_names.index(settings.quality_metric)
    return SweepSummary(
        study_name=study.study_name,
        counts=counts,
        top_trials=top_trials(frame, settings),
        best_params=chosen.params if chosen else None,
        best_value=chosen.values[quality_index] if chosen else None,
        test_accuracy=test_accuracy,
        parent_run_id=tracker.wait_for_parent_run_id(),
        tracking_uri=plan.tracking_uri,
        seconds=time.perf_counter() - started,
        report_deferred=not report,
        chosen_trial=chosen.number if chosen else None,
        selection_rule=selection_rule(settings, reevaluation is not None),
        front=front,
        reevaluation=reevaluation,
        budget_spent=budget_spent,
    )


def trial_states(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[int, optuna.trial.TrialState]]:
    """Each trial's number and state, as they are now."""
    return [(trial.number, trial.state) for trial in trials]


def pick_and_test(
    study: optuna.Study, plan: SweepPlan, tracker: Tracker
) -> tuple[optuna.trial.FrozenTrial, float | None, pd.DataFrame | None]:
    """Re-evaluate (if asked), pick the model, test it once; annotate the trial runs. Chosen trial, test accuracy,
    the re-evaluation table."""
    settings = plan.config.study
    reevaluations, reevaluation = [], None
    if plan.reevaluate_top:
        top = top_configurations(study, settings, plan.reevaluate_top)
        reevaluations = [result for result in reevaluate(study, plan, tracker, top) if result.runs]
        if reevaluations:  # none when the time budget was spent before the first run
            reevaluation = reevaluation_frame(reevaluations, {trial.number: measures_of(trial) for trial in top})
    chosen = choose_trial(study, settings, reevaluations)
    test_accuracy = score_best_model(chosen, plan, tracker)  # the tracking thread logs it while the report is drawn
    tracker.annotate_runs(run_notes(study, settings, reevaluations))
    return chosen, test_accuracy, reevaluation


def write_report_files(
    study: optuna.Study, settings: StudySettings, tables: dict[str, pd.DataFrame | None], folder: Path
) -> list[Path]:
    """The report's tables as CSV files (those that exist) and Optuna's plots as PNG files, in ``folder``."""
    files = []
    for name, table in tables.items():
        if table is not None:
            path = folder / f"{name}.csv"
            table.to_csv(path, index=False)
            files.append(path)
    files.extend(plot_study(study, folder, settings.quality_metric if settings.multi_objective else None))
    return files


def trials_table(trials: list[optuna.trial.FrozenTrial], settings: StudySettings) -> pd.DataFrame:
    """Every trial: number, its objectives ('value' with one), state, parameters, training and wall seconds."""
    rows = []
    names = settings.metric_names if settings.multi_objective else ["value"]
    for trial in trials:
        row: dict[str, Any] = {"number": trial.number}
        row.update(zip(names, trial.values or [None] * len(names), strict=True))
        row["state"] = trial.state.name
        row.update(trial.params)
        measures = measures_of(trial)
        for extra in ("train_seconds", "time_to_target"):
            if extra in measures and extra not in names:
                row[extra] = measures[extra]
        duration = trial.duration
        row["seconds"] = round(duration.total_seconds(), 1) if duration is not None else None
        rows.append(row)
    return pd.DataFrame(rows)


def top_trials(frame: pd.DataFrame, settings: StudySettings) -> pd.DataFrame:
    """The ten best complete trials by the quality metric."""
    if not len(frame):
        return frame
    column = settings.quality_metric if settings.multi_objective else "value"
    complete = frame[frame["state"] == "COMPLETE"]
    ascending = METRICS[settings.quality_metric] == "minimize"
    return complete.sort_values(column, ascending=ascending, kind="stable").head(10)


def choose_trial(
    study: optuna.Study, settings: StudySettings, reevaluations: list[Reevaluation]
) -> optuna.trial.FrozenTrial:
    """The trial whose model the study hands on (see selection_rule); the study has a complete trial."""
    by_number = {trial.number: trial for trial in complete_trials(study)}
    measured = [result for result in reevaluations if result.runs]
    if settings.multi_objective:
        if measured:
            speed = speed_metric(settings)
            means = {r.trial_number: (r.mean("val_accuracy"), r.mean(speed)) for r in measured}
            candidates = candidates_of([by_number[number] for number in means], settings, means)
        else:
            candidates = candidates_of(list(by_number.values()), settings)
        pick = pick_fastest_accurate(candidates, settings.select_within)
        return pick.trial if pick is not None else min(study.best_trials, key=lambda trial: trial.number)
    if measured:
        quality = settings.quality_metric
        sign = -1 if METRICS[quality] == "maximize" else 1
        return by_number[min(measured, key=lambda r: sign * r.mean(quality)).trial_number]
    return study.best_trial


def selection_rule(settings: StudySettings, reevaluated: bool) -> str:
    """How the model was picked, in words (on the parent run and in the summary)."""
    rule = pick_rule(settings)
    return f"{rule}, by means over re-evaluation seeds" if reevaluated else rule


def run_notes(study: optuna.Study, settings: StudySettings, reevaluations: list[Reevaluation]) -> dict[str, RunNote]:
    """Tags and metrics for trial runs: pareto_front true/false (several objectives), re-evaluation means."""
    notes: dict[str, RunNote] = {}
    on_front = {trial.number for trial in study.best_trials} if settings.multi_objective else set()
    by_number = {trial.number: trial for trial in complete_trials(study)}
    for number, trial in by_number.items():
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is None:
            continue
        tags = {"pareto_front": str(number in on_front).lower()} if settings.multi_objective else {}
        metrics: dict[str, float] = {}
        for result in reevaluations:
            if result.trial_number == number and result.runs:
                for metric in ("val_accuracy", "train_seconds"):
                    metrics[f"reevaluated_{metric}_mean"] = result.mean(metric)
                    if len(result.runs) > 1:
                        metrics[f"reevaluated_{metric}_std"] = result.std(metric)
        if tags or metrics:
            notes[run_id] = RunNote(tags=tags, metrics=metrics)
    return notes


def plot_study(study: optuna.Study, folder: Path, quality: str | None = None) -> list[Path]:
    """Optuna's plots as PNG files; a plot that needs more trials than exist is skipped. ``quality``: the objective
    the one-objective plots show in a study with several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "pareto_front": optuna_plots.plot_pareto_front,  # several objectives only (raises with one)
        "optimization_history": optuna_plots.plot_optimization_history,
        "param_importances": optuna_plots.plot_param_importances,
        "parallel_coordinate": optuna_plots.plot_parallel_coordinate,
        "slice": optuna_plots.plot_slice,
    }
    if quality is not None:  # several objectives: the other plots show the quality objective
        index = study.metric_names.index(quality) if study.metric_names else 0
        for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice"):
            plots[name] = functools.partial(
                plots[name], target=lambda trial, index=index: trial.values[index], target_name=quality
            )
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


def score_best_model(best_trial: optuna.trial.FrozenTrial, plan: SweepPlan, tracker: Tracker) -> float | None:
    """Rebuild the chosen trial's best epoch, measure it once on the held-out test split, and log it."""
    weights = tracker.load_trial_weights(best_trial.user_attrs.get(RUN_ID_ATTR), best_trial.number)
    if weights is None:
        log.warning("best trial %d logged no weights; no test accuracy", best_trial.number)
        return None
    config = plan.config
    workload = plan.workload
    splits = load_splits(workload, config.training.seed)
    model = build_workload_model(workload, splits)
    model.load_state_dict(weights)
    test_loader = make_loader(splits.test, config.data.eval_batch_size, False)
    _, test_accuracy = evaluate_model(model, test_loader, torch.nn.CrossEntropyLoss(), "cpu")
    example = next(iter(make_loader(splits.test, 5, False)))[0].clone()
    tracker.log_best_model(model, example, test_accuracy, best_trial.number)
    return test_accuracy
