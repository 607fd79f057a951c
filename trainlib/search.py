"""The search vocabulary in one home: samplers, pruners and the suggest step of every trial."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from trainlib.optim import optimizer_options

if TYPE_CHECKING:
    from trainlib.config import SearchSpace


def _quietly(factory: Callable[..., Any], **options: Any) -> Any:
    """Build with Optuna's 'experimental feature' notice silenced: it would repeat at every start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factory(**options)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: _quietly(optuna.samplers.TPESampler, seed=seed, multivariate=True, group=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
}
# Each pruner factory takes (startup trials, warm-up epochs) from the study settings.
PRUNERS: dict[str, Callable[[int, int], optuna.pruners.BasePruner]] = {
    "none": lambda startup, warmup: optuna.pruners.NopPruner(),
    "median": lambda startup, warmup: optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup),
    "hyperband": lambda startup, warmup: optuna.pruners.HyperbandPruner(
        min_resource=max(1, warmup), reduction_factor=3
    ),
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
