"""Experiment configs: a TOML file becomes a validated SweepConfig, once, at the edge."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from trainlib.data import DATASET_NAMES, SIZED_DATASETS
from trainlib.data_files import DATA_FILE_SUFFIXES, TABLE_SUFFIXES
from trainlib.device import resolve_device
from trainlib.errors import InvalidArgument
from trainlib.models import EXAMPLE_INPUT_SHAPES, MODEL_NAMES, build_model
from trainlib.optim import LR_SCHEDULES
from trainlib.speed import COMPILE_MODES, PRECISIONS, SpeedKnobs, check_speed
from trainlib.sweep.search import PRUNER_NAMES, SAMPLER_NAMES, SEARCHABLE_KNOBS, SearchSpace, StrictModel
from trainlib.workload import DATA_KINDS, Workload, workload_from_sections

# What a study may optimise, each with the only direction that makes sense. The quality metrics are measured
# on the validation split at the trial's best epoch; the others describe the whole trial (see sweep/measures.py).
METRICS = {
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "train_seconds": "minimize",  # training time of the whole trial, device synchronized (no evaluation)
    "samples_per_second": "maximize",  # training samples over train_seconds
    "time_to_target": "minimize",  # training seconds until val_accuracy first reached study.target_accuracy
    "peak_memory_mb": "minimize",  # CUDA only: the most memory tensors held during the trial
}
QUALITY_METRICS = ("val_accuracy", "val_loss")  # pruning and the kept weights follow these
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "gp", "random", "nsga2")


class Objective(StrictModel):
    """One objective of a study: a metric and its direction (the metric's own when left out)."""

    metric: Literal[tuple(METRICS)]  # type: ignore[valid-type]
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _direction_matches_metric(self) -> Objective:
        if self.direction is not None and METRICS[self.metric] != self.direction:
            raise ValueError(f"metric {self.metric!r} is optimised with direction {METRICS[self.metric]!r}")
        return self


class StudySettings(StrictModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: Literal[tuple(METRICS)] = "val_accuracy"  # type: ignore[valid-type]
    objectives: list[Objective] | None = Field(None, min_length=1)
    target_accuracy: float | None = Field(None, gt=0, le=1)
    time_budget_seconds: float | None = Field(None, gt=0)
    # The model of a study with several objectives: the fastest trial within this many accuracy points (0.005:
    # half a percentage point) of the best validation accuracy; 0 picks the most accurate.
    select_within: float = Field(0.005, ge=0, lt=1)
    hypervolume_reference: list[float] | None = None
    reevaluate_top: int = Field(0, ge=0)
    reevaluate_seeds: int = Field(3, ge=2)
    n_trials: int = Field(gt=0)
    sampler: Literal[SAMPLER_NAMES] = "tpe"  # type: ignore[valid-type]
    pruner: Literal[PRUNER_NAMES] = "median"  # type: ignore[valid-type]
    pruner_startup_trials: int = Field(5, ge=0)
    pruner_warmup_epochs: int = Field(3, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _objectives_make_sense(self) -> StudySettings:
        if self.objectives is not None and self.model_fields_set & {"metric", "direction"}:
            raise ValueError("give either metric and direction (one objective) or objectives, not both")
        if self.objectives is None and METRICS[self.metric] != self.direction:
            raise ValueError(f"metric {self.metric!r} is optimised with direction {METRICS[self.metric]!r}")
        metrics = [objective.metric for objective in self.objective_list]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives repeat a metric: {metrics}")
        if not set(metrics) & set(QUALITY_METRICS):
            raise ValueError(
                f"objectives {metrics} need val_accuracy or val_loss among them (pruning and the kept weights "
                f"follow it); metrics: {', '.join(METRICS)}"
            )
        if "time_to_target" in metrics and self.target_accuracy is None:
            raise ValueError("objective time_to_target needs study.target_accuracy (a fraction in (0, 1])")
        if len(metrics) > 1 and self.sampler not in MULTI_OBJECTIVE_SAMPLERS:
            raise ValueError(
                f"sampler {self.sampler!r} optimises one objective; with several use one of "
                f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}"
            )
        reference = self.hypervolume_reference
        if reference is not None and (len(metrics) < 2 or len(reference) != len(metrics)):
            raise ValueError(f"hypervolume_reference needs one value per objective ({len(metrics)}), got {reference}")
        return self

    @property
    def objective_list(self) -> tuple[Objective, ...]:
        """The study's objectives in order (one, from metric and direction, unless objectives is given)."""
        if self.objectives is None:
            return (Objective(metric=self.metric, direction=self.direction),)
        return tuple(self.objectives)

    @property
    def metric_names(self) -> list[str]:
        return [objective.metric for objective in self.objective_list]

    @property
    def directions(self) -> list[str]:
        return [METRICS[metric] for metric in self.metric_names]

    @property
    def quality_metric(self) -> str:
        """The objective that pruning follows and whose best epoch's weights a trial keeps."""
        return next(metric for metric in self.metric_names if metric in QUALITY_METRICS)

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_list) > 1


REFERENCE_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"  # package.module:function


class DataSettings(StrictModel):
    """Exactly one of dataset (built-in), factory or path; a factory also takes keys of its own."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, allow_inf_nan=False)
    dataset: Literal[DATASET_NAMES] | None = None  # type: ignore[valid-type]
    factory: str | None = Field(None, pattern=REFERENCE_PATTERN)
    path: str | None = Field(None, min_length=1)
    val_fraction: float | None = Field(None, gt=0, lt=1)
    num_samples: int | None = Field(None, gt=0)
    label_column: str | None = Field(None, min_length=1)
    # "auto": a short probe on this machine picks workers, prefetching and pinning (trainlib.loader_tuning)
    num_workers: int | str = 0
    prefetch_factor: int | None = Field(None, gt=0)  # batches each worker loads ahead (torch's default: 2)
    persistent_workers: bool | None = None  # workers outlive an epoch (trainlib's default with workers: true)
    pin_memory: bool | None = None  # page-locked batches (default: true when training on CUDA)
    eval_batch_size: int = Field(1000, gt=0)

    @field_validator("num_workers")
    @classmethod
    def _workers_or_auto(cls, workers: int | str) -> int | str:
        if workers != "auto" and not (isinstance(workers, int) and workers >= 0):
            raise ValueError('give a non-negative number of worker processes, or "auto" (a short probe picks them)')
        return workers

    @model_validator(mode="after")
    def _one_source(self) -> DataSettings:
        sources = [key for key in DATA_KINDS if getattr(self, key) is not None]
        if len(sources) != 1:
            raise ValueError(
                f"give exactly one of dataset ({', '.join(DATASET_NAMES)}), factory ('package.module:function') "
                f"or path (a {', '.join(DATA_FILE_SUFFIXES)} file); got {', '.join(sources) or 'none'}"
            )
        if self.factory is None and self.model_extra:
            raise ValueError(f"unknown key {next(iter(self.model_extra))!r}: only a data factory takes keys of its own")
        fixed_workers = [key for key in ("prefetch_factor", "persistent_workers") if getattr(self, key) is not None]
        if fixed_workers and self.num_workers in (0, "auto"):
            raise ValueError(
                f"{' and '.join(fixed_workers)} set how worker processes load: give num_workers > 0 "
                '(with num_workers = "auto" the probe chooses them)'
            )
        if self.num_samples is not None and self.dataset not in (None, *SIZED_DATASETS):
            raise ValueError(
                f"num_samples applies to datasets {', '.join(SIZED_DATASETS)} (or a factory that takes it)"
            )
        if self.path is not None and not self.path.lower().endswith(DATA_FILE_SUFFIXES):
            raise ValueError(f"path {self.path!r}: unknown file type; use one of {', '.join(DATA_FILE_SUFFIXES)}")
        tables = self.path is not None and self.path.lower().endswith(TABLE_SUFFIXES)
        if (self.label_column is not None) != tables and self.factory is None:
            raise ValueError("label_column names the label column of a .csv or .parquet path, and such a path needs it")
        return self


class ModelSettings(StrictModel):
    """Exactly one of name (built-in) or factory; the other keys are the model's options."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, allow_inf_nan=False)
    name: Literal[MODEL_NAMES] | None = None  # type: ignore[valid-type]
    factory: str | None = Field(None, pattern=REFERENCE_PATTERN)

    @model_validator(mode="after")
    def _known_options(self) -> ModelSettings:
        if (self.name is None) == (self.factory is None):
            raise ValueError(
                f"give exactly one of name ({', '.join(MODEL_NAMES)}) or factory ('package.module:function')"
            )
        if self.name is None:
            return self  # a factory's options are checked against its signature once its data is loaded
        try:  # building a throwaway copy checks every option with the factory's own rules
            build_model(self.name, EXAMPLE_INPUT_SHAPES[self.name], 10, **self.options())
        except InvalidArgument as error:
            raise ValueError(str(error)) from None
        return self

    def options(self) -> dict[str, Any]:
        """The model's own settings (hidden sizes, channels, dropout, ...)."""
        return dict(self.model_extra or {})


class TrainingSettings(StrictModel):
    epochs: int = Field(gt=0)
    # A trial whose training loss exceeds this (or is NaN/inf) fails at once; ln(10) ~ 2.3 is chance level.
    divergence_threshold: float = Field(100.0, gt=0)
    lr_schedule: Literal[LR_SCHEDULES] = "constant"  # type: ignore[valid-type]  (or drawn: search.lr_schedule)
    device: str = "auto"
    seed: int = 0
    # Speed knobs (trainlib.speed); precision, compile and channels_last may be drawn instead ([search]).
    precision: Literal[PRECISIONS] = "fp32"  # type: ignore[valid-type]
    compile: bool = False
    compile_mode: Literal[COMPILE_MODES] = "default"  # type: ignore[valid-type]
    channels_last: bool = False
    cudnn_benchmark: bool = False  # CUDA only: cuDNN times its algorithms per input shape (not bit-reproducible)

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str) -> str:
        try:
            resolve_device(device)
        except InvalidArgument as error:
            raise ValueError(str(error)) from None
        return device


class SweepConfig(StrictModel):
    study: StudySettings
    data: DataSettings
    model: ModelSettings
    training: TrainingSettings
    search: SearchSpace

    @model_validator(mode="after")
    def _device_can_run_it(self) -> SweepConfig:
        device = resolve_device(self.training.device)
        if "peak_memory_mb" in self.study.metric_names and device.type != "cuda":
            raise ValueError(
                f"objective peak_memory_mb is measured on CUDA devices only; training.device resolves to {device} here"
            )
        for knobs in self.speed_choices():
            try:
                check_speed(knobs, device)
            except InvalidArgument as error:
                raise ValueError(str(error)) from None
        return self

    def speed_knobs(self, drawn: dict[str, Any] | None = None) -> SpeedKnobs:
        """The speed knobs a trial trains with: [training]'s, with the ones its search drew (``drawn``) instead."""
        training = self.training
        fixed = {name: getattr(training, name) for name in SpeedKnobs.__dataclass_fields__}
        return SpeedKnobs(**{**fixed, **(drawn or {})})

    def check_speed_on(self, model: torch.nn.Module) -> None:
        """InvalidArgument when a knob the study may use cannot apply to ``model`` (channels_last without Conv2d)."""
        device = resolve_device(self.training.device)
        for knobs in self.speed_choices():
            check_speed(knobs, device, model)

    def speed_choices(self) -> list[SpeedKnobs]:
        """Every combination of speed knobs a trial may draw (one when nothing is searched)."""
        combinations: list[dict[str, Any]] = [{}]
        for name in SEARCHABLE_KNOBS:
            choices = getattr(self.search, name)
            if choices is not None:
                combinations = [{**combination, name: choice} for combination in combinations for choice in choices]
        return [self.speed_knobs(combination) for combination in combinations]

    def workload(self, base_dir: Path | None) -> Workload:
        """The model and data this study trains; ``base_dir`` is the study file's folder."""
        return workload_from_sections(
            self.model.model_dump(exclude_none=True), self.data.model_dump(exclude_none=True), base_dir
        )

    def on_device(self, device: str) -> SweepConfig:
        """A copy that trains on ``device`` (a sweep worker's own GPU)."""
        return self.model_copy(update={"training": self.training.model_copy(update={"device": device})})

    def with_overrides(self, overrides: dict[str, tuple[str, Any]]) -> SweepConfig:
        """A copy with command-line overrides applied, e.g. {'training.epochs': ('--epochs', 3)}; None keeps.

        A bad override is reported under its flag's name, not the config file's key.
        """
        sections = self.model_dump(exclude_unset=True)  # defaults stay defaults (metric beside objectives, say)
        flags = {}
        for dotted, (flag, value) in overrides.items():
            if value is not None:
                section, key = dotted.split(".")
                sections[section][key] = value
                flags[(section, key)] = flag
        try:
            return SweepConfig.model_validate(sections)
        except ValidationError as error:
            first_location = tuple(str(part) for part in error.errors()[0]["loc"][:2])
            if first_location in flags:
                value = sections[first_location[0]][first_location[1]]
                message = error.errors()[0]["msg"].removeprefix("Value error, ")
                raise InvalidArgument(f"{flags[first_location]} {value}: {message}") from None
            raise InvalidArgument(describe_validation_error(error, "<command line>")) from None


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate an experiment TOML file; every mistake is an InvalidArgument naming file and key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"{path}: cannot read config file ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"{path}: not valid TOML: {error}") from None
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "<config>") -> SweepConfig:
    """Validate a config mapping; raise InvalidArgument with the first problem as one line."""
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as error:
        raise InvalidArgument(describe_validation_error(error, source)) from None


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line: source, dotted key, the message and the bad value (plus how many more problems there are)."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])  # empty for checks across tables (the message names keys)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    value = "" if first["type"] == "missing" else f" (got {first['input']!r})"
    if isinstance(first.get("input"), dict):
        value = ""
    more = len(error.errors()) - 1
    suffix = f"; and {more} more problem{'s' if more > 1 else ''}" if more else ""
    return f"{source}: {key + ': ' if key else ''}{message}{value}{suffix}"
