"""The search vocabulary in one home: the search space, samplers, pruners, and each trial's suggest step."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainlib.optim import LR_SCHEDULES, OPTIMIZER_NAMES, optimizer_options
from trainlib.speed import PRECISIONS


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
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
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
SEARCHABLE_KNOBS: tuple[str, ...] = ("precision", "compile", "channels_last")  # speed knobs [search] may draw
PRUNER_NAMES: tuple[str, ...] = tuple(PRUNERS)


class StrictModel(BaseModel):
    """A config table: unknown keys refused, values of exactly the declared type (no "false" for false, no true
    for 1), finite numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class FloatRange(StrictModel):
    """A positive float range, sampled log-uniformly unless ``log = false``."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class UnitRange(StrictModel):
    """A range within [0, 1), sampled uniformly (momentum)."""

    low: float = Field(ge=0, lt=1)
    high: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> UnitRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class SearchSpace(StrictModel):
    """The ``[search]`` table: what each trial draws."""

    lr: FloatRange
    batch_size: list[int] = Field(min_length=1)
    optimizer: list[Literal[OPTIMIZER_NAMES]] = Field(min_length=1)  # type: ignore[valid-type]
    momentum: UnitRange | None = None
    nesterov: bool = False
    weight_decay: FloatRange | None = None
    lr_schedule: list[Literal[LR_SCHEDULES]] | None = Field(None, min_length=1)  # type: ignore[valid-type]
    # Speed knobs a trial may draw (otherwise [training] fixes them): the trade-off a study can then see.
    precision: list[Literal[PRECISIONS]] | None = Field(None, min_length=1)  # type: ignore[valid-type]
    compile: list[bool] | None = Field(None, min_length=1)
    channels_last: list[bool] | None = Field(None, min_length=1)

    @field_validator("batch_size")
    @classmethod
    def _powers_of_two(cls, sizes: list[int]) -> list[int]:
        for size in sizes:
            if size <= 0 or size & (size - 1):
                raise ValueError(f"batch sizes must be positive powers of two, got {size}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"batch sizes must not repeat, got {sizes}")
        return sizes

    @field_validator("optimizer", "lr_schedule", "precision", "compile", "channels_last")
    @classmethod
    def _unique(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(set(names)) != len(names):
            raise ValueError(f"choices must not repeat, got {names}")
        return names


@dataclass(frozen=True)
class TrialParams:
    """One trial's hyperparameters: what train_model takes, and the optimizer's own options."""

    lr: float
    batch_size: int
    optimizer: str
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    lr_schedule: str | None = None  # None: the study's fixed training.lr_schedule
    speed: dict[str, Any] = field(default_factory=dict)  # drawn speed knobs (precision, ...); others: [training]

    def as_dict(self) -> dict[str, Any]:
        """Flat, as Optuna names them (lr, batch_size, optimizer, momentum, ..., lr_schedule, precision, ...)."""
        schedule = {} if self.lr_schedule is None else {"lr_schedule": self.lr_schedule}
        return {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            **self.optimizer_options,
            **schedule,
            **self.speed,
        }


def suggest(trial: optuna.Trial, space: SearchSpace) -> TrialParams:
    """Draw one trial's hyperparameters: lr, batch_size, optimizer and the options that optimizer takes."""
    lr = trial.suggest_float("lr", space.lr.low, space.lr.high, log=space.lr.log)
    batch_size = trial.suggest_categorical("batch_size", space.batch_size)
    optimizer = trial.suggest_categorical("optimizer", space.optimizer)
    accepted = optimizer_options(optimizer)
    options: dict[str, Any] = {}
    # Conditional parameters: only drawn for the optimizers that take them, so TPE sees clean subspaces.
    if space.momentum is not None and "momentum" in accepted:
        options["momentum"] = trial.suggest_float("momentum", space.momentum.low, space.momentum.high)
    if space.nesterov and "nesterov" in accepted and options.get("momentum", 0) > 0:
        options["nesterov"] = trial.suggest_categorical("nesterov", [False, True])
    if space.weight_decay is not None and "weight_decay" in accepted:
        options["weight_decay"] = trial.suggest_float(
            "weight_decay", space.weight_decay.low, space.weight_decay.high, log=space.weight_decay.log
        )
    schedule = None if space.lr_schedule is None else trial.suggest_categorical("lr_schedule", space.lr_schedule)
    speed = {
        name: trial.suggest_categorical(name, getattr(space, name))
        for name in SEARCHABLE_KNOBS
        if getattr(space, name) is not None
    }
    return TrialParams(lr, batch_size, optimizer, options, schedule, speed)


def params_from_trial(params: dict[str, Any]) -> TrialParams:
    """The TrialParams of a finished trial's ``params`` (to train the same configuration again)."""
    known = ("lr", "batch_size", "optimizer", "lr_schedule", *SEARCHABLE_KNOBS)
    options = {key: value for key, value in params.items() if key not in known}
    speed = {key: params[key] for key in SEARCHABLE_KNOBS if key in params}
    return TrialParams(
        params["lr"], params["batch_size"], params["optimizer"], options, params.get("lr_schedule"), speed
    )


def search_distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    """The distributions ``suggest`` draws from, by parameter name (conditional ones included)."""
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        "lr": optuna.distributions.FloatDistribution(space.lr.low, space.lr.high, log=space.lr.log),
        "batch_size": optuna.distributions.CategoricalDistribution(space.batch_size),
        "optimizer": optuna.distributions.CategoricalDistribution(space.optimizer),
        "nesterov": optuna.distributions.CategoricalDistribution([False, True]),
    }
    if space.momentum is not None:
        distributions["momentum"] = optuna.distributions.FloatDistribution(space.momentum.low, space.momentum.high)
    if space.weight_decay is not None:
        low, high, log = space.weight_decay.low, space.weight_decay.high, space.weight_decay.log
        distributions["weight_decay"] = optuna.distributions.FloatDistribution(low, high, log=log)
    if space.lr_schedule is not None:
        distributions["lr_schedule"] = optuna.distributions.CategoricalDistribution(space.lr_schedule)
    for name in SEARCHABLE_KNOBS:
        if getattr(space, name) is not None:
            distributions[name] = optuna.distributions.CategoricalDistribution(getattr(space, name))
    return distributions
