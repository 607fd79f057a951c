"""The search vocabulary in one home: samplers, pruners and the suggest step of every trial."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from trainlib.optim import optimizer_options

if TYPE_CHECKING:
    from trainlib.config import SearchSpace

SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
}
PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=2, reduction_factor=3),
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
PRUNER_NAMES: tuple[str, ...] = tuple(PRUNERS)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Draw one trial's hyperparameters: lr, batch_size, optimizer and the options that optimizer takes."""
    params: dict[str, Any] = {
        "lr": trial.suggest_float("lr", space.lr.low, space.lr.high, log=True),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_size),
        "optimizer": trial.suggest_categorical("optimizer", space.optimizer),
    }
    accepted = optimizer_options(params["optimizer"])
    # Conditional parameters: only drawn for the optimizers that take them, so TPE sees clean subspaces.
    if space.momentum is not None and "momentum" in accepted:
        params["momentum"] = trial.suggest_float("momentum", space.momentum.low, space.momentum.high)
    if space.nesterov and "nesterov" in accepted and params.get("momentum", 0) > 0:
        params["nesterov"] = trial.suggest_categorical("nesterov", [False, True])
    if space.weight_decay is not None and "weight_decay" in accepted:
        params["weight_decay"] = trial.suggest_float(
            "weight_decay", space.weight_decay.low, space.weight_decay.high, log=space.weight_decay.log
        )
    return params
