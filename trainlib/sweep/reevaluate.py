"""Re-evaluation: the top configurations trained again from new seeds, so that the pick rests on means.

A trial's validation accuracy is one draw of weights and batch order; the best of many trials is partly the
luckiest draw. ``--reevaluate K --seeds N`` trains the K best configurations N more times, each from a seed no
trial used, and the model is picked on the means of those new runs (the original draws are left out: they were
selected for being high). The test split is still used once, on the picked configuration's original model.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import optuna
import pandas as pd

from trainlib.device import resolve_device
from trainlib.engine import TrainingDiverged
from trainlib.sweep.config import METRICS, StudySettings
from trainlib.sweep.front import complete_trials
from trainlib.sweep.measures import TrialMeasures
from trainlib.sweep.objective import TrialFailed, outcome_of, run_metrics, train_configuration
from trainlib.sweep.plan import SweepPlan
from trainlib.sweep.search import params_from_trial
from trainlib.tracking import Tracker, TrialOutcome
from trainlib.workload import load_splits

log = logging.getLogger(__name__)
SEED_STRIDE = 1_000_003  # re-evaluation seed s of trial t: training.seed + t + s * SEED_STRIDE (no trial uses it)


@dataclass
class Reevaluation:
    """One configuration's new runs: the figures of each seed that trained to the end."""

    trial_number: int
    seeds: list[int] = field(default_factory=list)
    runs: list[dict[str, float]] = field(default_factory=list)  # measures of each seed's run
    failed_seeds: list[int] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [run[metric] for run in self.runs if metric in run]

    def mean(self, metric: str) -> float:
        values = self.values(metric)
        return statistics.fmean(values) if values else float("nan")

    def std(self, metric: str) -> float:
        """The sample standard deviation over seeds (nan with fewer than two)."""
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else float("nan")


def top_configurations(study: optuna.Study, settings: StudySettings, count: int) -> list[optuna.trial.FrozenTrial]:
    """The ``count`` complete trials with the best quality metric (the study's value with one objective)."""
    index = settings.metric_names.index(settings.quality_metric)
    maximize = METRICS[settings.quality_metric] == "maximize"
    ranked = sorted(complete_trials(study), key=lambda trial: (-1 if maximize else 1) * trial.values[index])
    return ranked[:count]


def reevaluate(
    study: optuna.Study, plan: SweepPlan, tracker: Tracker, trials: Sequence[optuna.trial.FrozenTrial]
) -> list[Reevaluation]:
    """Train each of ``trials``' configurations from ``plan.reevaluate_seeds`` new seeds, each run tracked.

    Like trials, no run starts once the time budget is spent.
    """
    config = plan.config
    workload = plan.workload
    splits = load_splits(workload, config.training.seed)
    device = resolve_device(config.training.device)
    results = []
    for trial in trials:
        params = params_from_trial(trial.params)
        result = Reevaluation(trial.number)
        results.append(result)
        for index in range(1, plan.reevaluate_seeds + 1):
            if plan.deadline is not None and time.time() >= plan.deadline:
                log.warning("the time budget is spent: no more re-evaluation runs start (the pick uses those done)")
                return results
            seed = config.training.seed + trial.number + index * SEED_STRIDE
            log.info("re-evaluating trial %d: seed %d (%d of %d)", trial.number, seed, index, plan.reevaluate_seeds)
            run = tracker.start_reevaluation(study.study_name, trial.number, seed, params.as_dict())
            measures = TrialMeasures(device, config.study.target_accuracy)
            try:
                best = train_configuration(
                    params, seed, config, workload, splits, device, [run.log_epoch, measures.update]
                )
            except (TrainingDiverged, TrialFailed) as error:
                tracker.end_trial(run, outcome_of(error))
                result.failed_seeds.append(seed)
                continue
            except BaseException as error:
                outcome = outcome_of(error)
                if outcome is not None:
                    tracker.end_trial(run, outcome)
                raise
            measured = {**measures.as_dict(), config.study.quality_metric: best.value}
            tracker.log_trial_result(run, run_metrics(measured, config.study.quality_metric), None)
            tracker.end_trial(run, TrialOutcome("FINISHED", "COMPLETE"))
            result.seeds.append(seed)
            result.runs.append(measured)
    return results


REPORTED_METRICS = ("val_accuracy", "val_loss", "train_seconds", "time_to_target")


def reevaluation_frame(results: Sequence[Reevaluation], originals: dict[int, dict[str, float]]) -> pd.DataFrame:
    """One row per configuration: its trial's own figures, and the mean and standard deviation over new seeds."""
    rows = []
    for result in results:
        row: dict[str, object] = {"number": result.trial_number, "seeds": len(result.runs)}
        for metric in REPORTED_METRICS:
            if not result.values(metric):
                continue
            row[f"trial_{metric}"] = originals.get(result.trial_number, {}).get(metric)
            row[f"{metric}_mean"] = result.mean(metric)
            row[f"{metric}_std"] = result.std(metric)
        row["failed_seeds"] = len(result.failed_seeds)
        rows.append(row)
    return pd.DataFrame(rows)
