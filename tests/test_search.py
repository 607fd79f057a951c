"""The search space and each trial's suggest step, drawn by real Optuna samplers on an in-memory study."""

from __future__ import annotations

import math

import optuna
import pytest

from trainlib.optim import OPTIMIZER_NAMES, optimizer_options
from trainlib.sweep.search import PRUNERS, SAMPLERS, SearchSpace, TrialParams, suggest

SPACE = {
    "lr": {"low": 1e-3, "high": 3e-2},
    "batch_size": [32, 64, 128],
    "optimizer": list(OPTIMIZER_NAMES),
    "momentum": {"low": 0.5, "high": 0.9},
    "nesterov": True,
    "weight_decay": {"low": 1e-6, "high": 1e-3},
}


def draw(space: dict, n: int = 60, seed: int = 0) -> list[tuple[TrialParams, optuna.trial.FrozenTrial]]:
    """``n`` trials suggested by a seeded random sampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    validated = SearchSpace.model_validate(space)
    drawn = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, validated)
        study.tell(trial, 0.0)
        drawn.append((params, study.trials[-1]))
    return drawn


def test_draws_stay_within_bounds_and_choices() -> None:
    for params, _ in draw(SPACE):
        assert 1e-3 <= params.lr <= 3e-2
        assert params.batch_size in (32, 64, 128)
        assert params.optimizer in OPTIMIZER_NAMES
        if "momentum" in params.optimizer_options:
            assert 0.5 <= params.optimizer_options["momentum"] <= 0.9
        if "weight_decay" in params.optimizer_options:
            assert 1e-6 <= params.optimizer_options["weight_decay"] <= 1e-3


def test_conditional_parameters_are_drawn_only_for_the_optimizers_that_take_them() -> None:
    seen = set()
    for params, frozen in draw(SPACE, n=80):
        accepted = optimizer_options(params.optimizer)
        assert set(params.optimizer_options) <= set(accepted), params
        assert ("momentum" in params.optimizer_options) == ("momentum" in accepted)
        assert ("nesterov" in params.optimizer_options) == (params.optimizer == "sgd")
        assert params.as_dict() == frozen.params  # what is logged is exactly what Optuna recorded
        seen.add(params.optimizer)
    assert seen == set(OPTIMIZER_NAMES)


def test_options_left_out_of_the_space_are_not_drawn() -> None:
    space = {key: value for key, value in SPACE.items() if key not in ("momentum", "nesterov", "weight_decay")}
    for params, _ in draw(space, n=20):
        assert params.optimizer_options == {}


@pytest.mark.parametrize(("log", "expected"), [(True, True), (False, False)], ids=["log", "uniform"])
def test_the_lr_range_is_sampled_as_its_log_key_says(log: bool, expected: bool) -> None:
    space = {**SPACE, "lr": {"low": 1e-3, "high": 3e-2, "log": log}}
    drawn = draw(space, n=200)

    assert {frozen.distributions["lr"].log for _, frozen in drawn} == {expected}
    # Uniform on [1e-3, 3e-2] puts about 83% of draws above the range's log-midpoint (5.5e-3); log-uniform 50%.
    above = sum(params.lr > math.sqrt(1e-3 * 3e-2) for params, _ in drawn) / len(drawn)
    assert (above > 0.7) if not log else (0.35 < above < 0.65), above


def test_weight_decay_log_key_is_honoured() -> None:
    space = {**SPACE, "optimizer": ["adam"], "weight_decay": {"low": 1e-6, "high": 1e-3, "log": False}}
    assert {frozen.distributions["weight_decay"].log for _, frozen in draw(space, n=5)} == {False}


def test_every_sampler_and_pruner_name_builds() -> None:
    for name, make in SAMPLERS.items():
        assert isinstance(make(0), optuna.samplers.BaseSampler), name
    for name, make in PRUNERS.items():
        assert isinstance(make(5, 3), optuna.pruners.BasePruner), name
