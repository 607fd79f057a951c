"""Pruning for studies with several objectives, which Optuna's pruners cannot serve (optuna#3450).

A trial of such a study records its quality metric's curve (one value per epoch) as a user attribute; the rule of
the study's pruner is applied to those curves, as Optuna's own pruner would apply it to reported values:

- median (MedianPruner's rule): once ``startup_trials`` trials completed and from epoch ``warmup_epochs`` on,
  stop a trial whose best value so far is worse than the median of the completed trials' values at that epoch.
- hyperband: one bracket of successive halving (SuccessiveHalvingPruner's rule, reduction factor 3): at epochs
  m, 3m, 9m, ... (m = max(1, warmup_epochs)) a trial goes on only if its value there is in the best third of all
  trials' values at that epoch.

The sampler still sees every objective of the trials that finish; pruned trials count as worse than any complete
one. The front is therefore drawn from complete trials only: a configuration that is slow to start but fast to
finish can be cut before it shows it, exactly as in a single-objective study.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import optuna

CURVE_ATTR = "trainlib_curve"  # the trial's quality metric per epoch, updated after each epoch
REDUCTION_FACTOR = 3
TrialState = optuna.trial.TrialState


class CurvePruner:
    """Decides, after each epoch, whether a trial of a multi-objective study stops (see the module docstring)."""

    def __init__(self, rule: str, startup_trials: int, warmup_epochs: int, maximize: bool) -> None:
        self.rule = rule
        self.startup_trials = startup_trials
        self.warmup_epochs = warmup_epochs
        self.maximize = maximize

    def should_prune(self, curve: Sequence[float], others: Sequence[optuna.trial.FrozenTrial]) -> bool:
        """True if the trial whose curve so far is ``curve`` stops, given the study's ``others`` trials."""
        if not curve:
            return False
        if math.isnan(curve[-1]):
            return True
        if self.rule == "median":
            return self._below_median(curve, others)
        if self.rule == "hyperband":
            return self._not_promoted(curve, others)
        return False

    def _below_median(self, curve: Sequence[float], others: Sequence[optuna.trial.FrozenTrial]) -> bool:
        epoch = len(curve)
        completed = [trial for trial in others if trial.state == TrialState.COMPLETE]
        if not completed or len(completed) < self.startup_trials or epoch < self.warmup_epochs:
            return False
        at_epoch = [value for value in _values_at(completed, epoch) if not math.isnan(value)]
        if not at_epoch:
            return False
        median = statistics.median(at_epoch)
        best = max(curve) if self.maximize else min(curve)
        return best < median if self.maximize else best > median

    def _not_promoted(self, curve: Sequence[float], others: Sequence[optuna.trial.FrozenTrial]) -> bool:
        epoch = len(curve)
        if not _is_rung(epoch, max(1, self.warmup_epochs)):
            return False
        value = curve[-1]
        competing = sorted([*_values_at(others, epoch), value], reverse=self.maximize)
        promotable_index = max(0, len(competing) // REDUCTION_FACTOR - 1)
        threshold = competing[promotable_index]
        return value < threshold if self.maximize else value > threshold


def _values_at(trials: Sequence[optuna.trial.FrozenTrial], epoch: int) -> list[float]:
    """Each trial's curve value at ``epoch`` (1-based), for trials whose curve reaches it."""
    curves = (trial.user_attrs.get(CURVE_ATTR) or [] for trial in trials)
    return [curve[epoch - 1] for curve in curves if len(curve) >= epoch]


def _is_rung(epoch: int, min_resource: int) -> bool:
    rung = min_resource
    while rung < epoch:
        rung *= REDUCTION_FACTOR
    return rung == epoch
