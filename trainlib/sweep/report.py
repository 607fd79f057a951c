"""The end of a sweep: counts, top trials, plots, and the best model tested once on the held-out split."""

from __future__ import annotations

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
from trainlib.sweep.plan import SweepPlan
from trainlib.sweep.study import RUN_ID_ATTR
from trainlib.sweep.workers import FINISHED_STATES
from trainlib.tracking import Tracker
from trainlib.workload import build_workload_model, load_splits

log = logging.getLogger(__name__)


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
    report_deferred: bool = False  # other workers are alive and running trials; the last to finish writes the report


def summarize(study: optuna.Study, plan: SweepPlan, tracker: Tracker, started: float, report: bool) -> SweepSummary:
    """The summary of the study; with ``report``, also test and log the best model and log the report files."""
    trials = study.get_trials(deepcopy=False)
    counts = {
        name: sum(trial.state == state for trial in trials)
        for name, state in zip(("complete", "pruned", "failed"), FINISHED_STATES, strict=True)
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
    if best_trial is not None and report:  # first: the tracking thread logs the model while the report is drawn
        test_accuracy = score_best_model(best_trial, plan, tracker)
    with tempfile.TemporaryDirectory(prefix="trainlib-report-") as folder_name:
        folder = Path(folder_name)
        if len(frame) and report:
            csv_path = folder / "trials.csv"
            study.trials_dataframe().to_csv(csv_path, index=False)
            files.append(csv_path)
            files.extend(plot_study(study, folder))
        tracker.log_summary(counts, files)
    return SweepSummary(
        study_name=study.study_name,
        counts=counts,
        top_trials=top,
        best_params=best_trial.params if best_trial else None,
        best_value=best_trial.value if best_trial else None,
        test_accuracy=test_accuracy,
        parent_run_id=tracker.wait_for_parent_run_id(),
        tracking_uri=plan.tracking_uri,
        seconds=time.perf_counter() - started,
        report_deferred=not report,
    )


def plot_study(study: optuna.Study, folder: Path) -> list[Path]:
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


def score_best_model(best_trial: optuna.trial.FrozenTrial, plan: SweepPlan, tracker: Tracker) -> float | None:
    """Rebuild the best trial's best epoch, measure it once on the held-out test split, and log it."""
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
