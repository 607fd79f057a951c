"""CurvePruner: the median and successive-halving rules on recorded curves, for studies with several objectives."""

from __future__ import annotations

import optuna
import pytest

from trainlib.sweep.curve_pruning import CURVE_ATTR, CurvePruner

State = optuna.trial.TrialState


def trial(number: int, curve: list[float], state: State = State.COMPLETE) -> optuna.trial.FrozenTrial:
    """A finished (or running) trial of a two-objective study whose accuracy curve is ``curve``."""
    values = [max(curve), 10.0] if state == State.COMPLETE else None
    made = optuna.trial.create_trial(state=state, values=values, user_attrs={CURVE_ATTR: curve})
    made.number = number
    return made


COMPLETED = [trial(0, [0.5, 0.6, 0.7]), trial(1, [0.3, 0.4, 0.5]), trial(2, [0.6, 0.8, 0.9])]


def test_the_median_rule_stops_a_trial_whose_best_is_below_the_median_at_its_epoch() -> None:
    pruner = CurvePruner("median", startup_trials=3, warmup_epochs=2, maximize=True)

    assert pruner.should_prune([0.2, 0.55], COMPLETED)  # best 0.55 < median at epoch 2 (0.6)
    assert not pruner.should_prune([0.2, 0.65], COMPLETED)
    assert not pruner.should_prune([0.1], COMPLETED)  # within the warm-up epochs


def test_the_median_rule_uses_the_best_value_so_far_and_minimizes_losses() -> None:
    accuracy = CurvePruner("median", startup_trials=1, warmup_epochs=1, maximize=True)
    assert not accuracy.should_prune([0.65, 0.2], COMPLETED)  # best so far 0.65 >= median 0.6 at epoch 2

    losses = [trial(0, [1.0, 0.8]), trial(1, [0.9, 0.6]), trial(2, [1.2, 1.0])]
    loss = CurvePruner("median", startup_trials=1, warmup_epochs=1, maximize=False)
    assert loss.should_prune([1.1, 0.9], losses)  # median at epoch 2 is 0.8; best so far 0.9 is worse
    assert not loss.should_prune([1.1, 0.7], losses)


def test_the_median_rule_waits_for_its_startup_trials_and_ignores_running_ones() -> None:
    pruner = CurvePruner("median", startup_trials=4, warmup_epochs=1, maximize=True)
    assert not pruner.should_prune([0.0, 0.0], COMPLETED)  # 3 complete < 4

    running = [trial(5, [0.9, 0.95], State.RUNNING), trial(6, [0.9], State.PRUNED)]
    pruner = CurvePruner("median", startup_trials=0, warmup_epochs=1, maximize=True)
    assert not pruner.should_prune([0.1], running)  # no complete trial: nothing to compare with


def test_successive_halving_keeps_the_best_third_at_each_rung() -> None:
    pruner = CurvePruner("hyperband", startup_trials=0, warmup_epochs=1, maximize=True)
    others = [
        trial(n, [value] * 3, State.PRUNED if n % 2 else State.COMPLETE)
        for n, value in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])
    ]

    # Rungs at epochs 1, 3, 9, ...: six values at epoch 1, the best 6 // 3 = 2 go on.
    assert not pruner.should_prune([0.45], others)  # second best of 0.1..0.5 and 0.45
    assert pruner.should_prune([0.35], others)
    assert not pruner.should_prune([0.0, 0.0], others)  # epoch 2 is not a rung
    assert pruner.should_prune([0.9, 0.9, 0.35], others)  # epoch 3 is


def test_a_nan_value_stops_the_trial_and_none_never_prunes() -> None:
    assert CurvePruner("median", 0, 0, maximize=True).should_prune([float("nan")], COMPLETED)
    assert not CurvePruner("none", 0, 0, maximize=True).should_prune([0.0, 0.0, 0.0], COMPLETED)


@pytest.mark.parametrize("rule", ["median", "hyperband", "none"])
def test_an_empty_curve_never_prunes(rule: str) -> None:
    assert not CurvePruner(rule, 0, 0, maximize=True).should_prune([], COMPLETED)
