"""Studies with several objectives: the Pareto front, its hypervolume, and the one model a study hands on.

Optuna finds the front (``study.best_trials``); this module turns it into what a person reads (a table, the
hypervolume after each trial) and applies the documented rule that picks one model from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd

from trainlib._compat import compute_hypervolume
from trainlib.sweep.config import METRICS, StudySettings
from trainlib.sweep.measures import measures_of

REFERENCE_ATTR = "trainlib_hypervolume_reference"
TrialState = optuna.trial.TrialState


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def hypervolume_reference(study: optuna.Study, settings: StudySettings) -> list[float] | None:
    """The study's reference point: the config's, else the one fixed when its first trial completed.

    The default puts 0 for maximized objectives and twice the first complete trial's value for minimized ones;
    it is stored in the study so that every command and every later resume measures against the same point.
    """
    if settings.hypervolume_reference is not None:
        return list(settings.hypervolume_reference)
    stored = study.user_attrs.get(REFERENCE_ATTR)
    if stored is not None:
        return list(stored)
    complete = complete_trials(study)
    if not complete:
        return None
    first = min(complete, key=lambda trial: trial.number)
    reference = [
        0.0 if METRICS[metric] == "maximize" else 2.0 * abs(value)
        for metric, value in zip(settings.metric_names, first.values, strict=True)
    ]
    study.set_user_attr(REFERENCE_ATTR, reference)
    return reference


def hypervolume(
    trials: Sequence[optuna.trial.FrozenTrial], settings: StudySettings, reference: Sequence[float]
) -> float:
    """The objective-space volume the ``trials`` dominate up to ``reference`` (points beyond it add nothing)."""
    signs = np.array([-1.0 if METRICS[metric] == "maximize" else 1.0 for metric in settings.metric_names])
    reference_loss = signs * np.asarray(reference, dtype=float)
    points = [signs * np.asarray(trial.values, dtype=float) for trial in trials]
    inside = [point for point in points if np.all(np.isfinite(point)) and np.all(point < reference_loss)]
    if not inside:
        return 0.0
    return compute_hypervolume(np.stack(inside), reference_loss)


def front_frame(study: optuna.Study, settings: StudySettings) -> pd.DataFrame:
    """The Pareto front as a table: trial number, each objective, training seconds, time to target, parameters."""
    rows = []
    for trial in sorted(study.best_trials, key=lambda trial: trial.number):
        measures = measures_of(trial)
        row: dict[str, object] = {"number": trial.number}
        row.update(zip(settings.metric_names, trial.values, strict=True))
        for extra in ("val_accuracy", "train_seconds", "time_to_target"):
            if extra not in row and extra in measures:
                row[extra] = measures[extra]
        row.update(trial.params)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        quality = settings.quality_metric
        frame = frame.sort_values(quality, ascending=METRICS[quality] == "minimize", kind="stable")
    return frame


@dataclass(frozen=True)
class Candidate:
    """What the pick compares for one configuration: its validation accuracy and its seconds (means when
    re-evaluated with several seeds)."""

    trial: optuna.trial.FrozenTrial
    val_accuracy: float
    seconds: float


def speed_metric(settings: StudySettings) -> str:
    """What 'fastest' means in the pick: time to target where it is an objective, else training seconds."""
    return "time_to_target" if "time_to_target" in settings.metric_names else "train_seconds"


def candidates_of(
    trials: Sequence[optuna.trial.FrozenTrial],
    settings: StudySettings,
    means: Mapping[int, tuple[float, float]] | None = None,
) -> list[Candidate]:
    """The complete trials as candidates; ``means`` (trial number -> accuracy, seconds) replaces single draws."""
    speed = speed_metric(settings)
    candidates = []
    for trial in trials:
        measures = measures_of(trial)
        if means is not None and trial.number in means:
            accuracy, seconds = means[trial.number]
        elif "val_accuracy" in measures and speed in measures:
            accuracy, seconds = measures["val_accuracy"], measures[speed]
        else:
            continue
        candidates.append(Candidate(trial, accuracy, seconds))
    return candidates


def pick_fastest_accurate(candidates: Sequence[Candidate], within: float) -> Candidate | None:
    """The fastest candidate whose accuracy is within ``within`` of the best one (ties: the more accurate)."""
    if not candidates:
        return None
    best_accuracy = max(candidate.val_accuracy for candidate in candidates)
    close = [c for c in candidates if c.val_accuracy >= best_accuracy - within - 1e-12]
    return min(close, key=lambda c: (c.seconds if math.isfinite(c.seconds) else math.inf, -c.val_accuracy))


def pick_rule(settings: StudySettings) -> str:
    """The pick rule in words, for the parent run and the summary."""
    if not settings.multi_objective:
        return f"the best {settings.quality_metric}"
    speed = speed_metric(settings).replace("_", " ")
    return f"the least {speed} within {settings.select_within * 100:g} points of the best val_accuracy"
