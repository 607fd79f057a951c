"""The Pareto front's hypervolume, its reference point, and the rule that picks one model from a front."""

from __future__ import annotations

import optuna
import pytest

from trainlib.sweep.config import StudySettings
from trainlib.sweep.front import (
    REFERENCE_ATTR,
    candidates_of,
    hypervolume,
    hypervolume_reference,
    pick_fastest_accurate,
    pick_rule,
)
from trainlib.sweep.measures import MEASURES_ATTR

TWO = StudySettings.model_validate(
    {
        "name": "front",
        "n_trials": 5,
        "objectives": [{"metric": "val_accuracy"}, {"metric": "train_seconds"}],
    }
)


def trial(number: int, accuracy: float, seconds: float) -> optuna.trial.FrozenTrial:
    made = optuna.trial.create_trial(
        values=[accuracy, seconds], user_attrs={MEASURES_ATTR: {"val_accuracy": accuracy, "train_seconds": seconds}}
    )
    made.number = number
    return made


def test_the_hypervolume_of_two_objectives_is_the_area_the_front_dominates() -> None:
    # Maximized accuracy, minimized seconds, reference (0, 10): boxes of 0.9 x 6 and 0.5 x (10 - 2) overlapping.
    front = [trial(0, 0.9, 4.0), trial(1, 0.5, 2.0)]
    expected = 0.9 * 6 + 0.5 * (4 - 2)
    assert hypervolume(front, TWO, [0.0, 10.0]) == pytest.approx(expected)
    assert hypervolume([*front, trial(2, 0.4, 3.0)], TWO, [0.0, 10.0]) == pytest.approx(expected)  # dominated
    assert hypervolume([trial(3, 0.9, 12.0)], TWO, [0.0, 10.0]) == 0.0  # beyond the reference: adds nothing


def test_the_default_reference_is_fixed_by_the_first_complete_trial_and_kept() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert hypervolume_reference(study, TWO) is None
    study.add_trial(trial(0, 0.8, 5.0))
    study.add_trial(trial(1, 0.9, 1.0))

    assert hypervolume_reference(study, TWO) == [0.0, 10.0]  # 0 for accuracy, twice the first trial's seconds
    assert study.user_attrs[REFERENCE_ATTR] == [0.0, 10.0]
    given = TWO.model_copy(update={"hypervolume_reference": [0.5, 3.0]})
    assert hypervolume_reference(study, given) == [0.5, 3.0]


def test_the_pick_is_the_fastest_trial_within_half_a_point_of_the_best_accuracy() -> None:
    trials = [trial(0, 0.960, 30.0), trial(1, 0.957, 12.0), trial(2, 0.954, 5.0), trial(3, 0.90, 1.0)]
    candidates = candidates_of(trials, TWO)

    assert pick_fastest_accurate(candidates, within=0.005).trial.number == 1  # 0.954 is 0.6 points below
    assert pick_fastest_accurate(candidates, within=0.0).trial.number == 0  # 0 picks the most accurate
    assert pick_fastest_accurate(candidates, within=0.1).trial.number == 3
    assert pick_fastest_accurate([], within=0.005) is None
    assert pick_rule(TWO) == "the least train seconds within 0.5 points of the best val_accuracy"


def test_means_from_re_evaluation_replace_a_trial_s_single_draw() -> None:
    trials = [trial(0, 0.960, 30.0), trial(1, 0.957, 12.0)]
    means = {0: (0.950, 29.0), 1: (0.958, 11.0)}  # the lucky trial 0 falls back on new seeds

    candidates = candidates_of(trials, TWO, means)
    assert [(c.val_accuracy, c.seconds) for c in candidates] == [(0.950, 29.0), (0.958, 11.0)]
    assert pick_fastest_accurate(candidates, within=0.0).trial.number == 1
