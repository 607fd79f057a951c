"""What a study or a benchmark trains: a model and a dataset, each a built-in name or the user's own.

``[model]`` names ``name`` (a built-in) or ``factory`` ("package.module:function"); ``[data]`` names ``dataset``
(a built-in), ``factory`` or ``path`` (a .npz, .pt/.pth, .csv or .parquet file). Relative paths and modules resolve
against the study file's folder, then the working directory. check_workload() loads the data, builds the model and
runs one batch through it, so a mistake is one line before any store is touched.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from trainlib.data import DATASET_NAMES, DatasetSplits, load_dataset, make_loader, splits_from_arrays
from trainlib.data_files import DATA_FILE_SUFFIXES, file_sha256, read_data_file
from trainlib.errors import InvalidArgument
from trainlib.factories import check_options, describe, is_reference, resolve_reference
from trainlib.models import MODEL_NAMES, build_model

log = logging.getLogger(__name__)

DataKind = Literal["dataset", "factory", "path"]
DATA_KINDS: tuple[DataKind, ...] = ("dataset", "factory", "path")
# How trainlib feeds the data, never passed to a factory.
LOADER_KEYS = ("num_workers", "eval_batch_size", "prefetch_factor", "persistent_workers", "pin_memory")
DEFAULT_VAL_FRACTION = 0.2


@dataclass(frozen=True)
class Workload:
    """A model and a dataset by reference, with their options; ``base_dir`` is the study file's folder."""

    model: str  # a built-in name ('cnn1d') or 'package.module:function'
    data: str  # a built-in dataset name, 'package.module:function', or a file path
    data_kind: DataKind
    model_options: Mapping[str, Any] = field(default_factory=dict)
    data_options: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None

    @property
    def search_dirs(self) -> tuple[Path, ...]:
        """Where relative paths and modules are looked up: the study file's folder, then the working directory."""
        cwd = Path.cwd()
        return (self.base_dir, cwd) if self.base_dir is not None and self.base_dir.resolve() != cwd else (cwd,)

    def data_file(self) -> Path:
        """The data file (kind 'path'), resolved against search_dirs; InvalidArgument when it is in neither."""
        path = Path(self.data).expanduser()
        if path.is_absolute():
            return path
        candidates = [folder / path for folder in self.search_dirs]
        for candidate in candidates:
            if candidate.exists():
                return candidate.resolve()
        raise InvalidArgument(
            f"data.path {self.data!r}: no such file in {' or '.join(str(folder) for folder in self.search_dirs)}"
        )

    def key(self) -> str:
        """A stable text form (for caches)."""
        return json.dumps(
            [self.model, self.data, self.data_kind, self.model_options, self.data_options, str(self.base_dir)],
            sort_keys=True,
            default=str,
        )


def workload_from_sections(model: Mapping[str, Any], data: Mapping[str, Any], base_dir: Path | None) -> Workload:
    """A Workload from a study file's raw [model] and [data] tables (the bench reads them without pydantic)."""
    model_refs = {key: model[key] for key in ("name", "factory") if key in model}
    if len(model_refs) != 1:
        raise InvalidArgument(
            f"[model] needs exactly one of name ({', '.join(MODEL_NAMES)}) or factory ('package.module:function')"
        )
    data_refs = {key: data[key] for key in DATA_KINDS if key in data}
    if len(data_refs) != 1:
        raise InvalidArgument(
            f"[data] needs exactly one of dataset ({', '.join(DATASET_NAMES)}), factory ('package.module:function') "
            f"or path (a {', '.join(DATA_FILE_SUFFIXES)} file)"
        )
    (data_kind, data_ref), (_, model_ref) = next(iter(data_refs.items())), next(iter(model_refs.items()))
    if not isinstance(model_ref, str) or not isinstance(data_ref, str):
        raise InvalidArgument("[model] name/factory and [data] dataset/factory/path must be strings")
    model_options = {key: value for key, value in model.items() if key not in model_refs}
    data_options = {key: value for key, value in data.items() if key not in data_refs and key not in LOADER_KEYS}
    return Workload(model_ref, data_ref, data_kind, model_options, data_options, base_dir)


_LOADED: dict[tuple[str, int], DatasetSplits] = {}


def load_splits(workload: Workload, seed: int) -> DatasetSplits:
    """The workload's train/val/test splits (``seed`` draws train/val); loaded once per process."""
    key = (workload.key(), seed)
    if key not in _LOADED:
        if len(_LOADED) >= 4:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = _read_splits(workload, seed)
    return _LOADED[key]


def _read_splits(workload: Workload, seed: int) -> DatasetSplits:
    options = dict(workload.data_options)
    if workload.data_kind == "dataset":
        return load_dataset(workload.data, seed=seed, **options)
    if workload.data_kind == "path":
        arrays = read_data_file(workload.data_file(), options.pop("label_column", None))
        val_fraction = options.pop("val_fraction", DEFAULT_VAL_FRACTION)
        if options:
            raise InvalidArgument(f"data.path takes val_fraction and label_column, not {', '.join(sorted(options))}")
        try:
            return splits_from_arrays(
                arrays["x"],
                arrays["y"],
                arrays.get("x_test"),
                arrays.get("y_test"),
                seed=seed,
                val_fraction=val_fraction,
            )
        except InvalidArgument as error:
            raise InvalidArgument(f"data.path {workload.data!r}: {error}") from None
    return _splits_from_factory(workload, seed, options)


def _splits_from_factory(workload: Workload, seed: int, options: dict[str, Any]) -> DatasetSplits:
    reference = workload.data
    factory = resolve_reference(reference, "data.factory", workload.search_dirs)
    check_options(factory, "data.factory", reference, (), {"seed": seed, **options}, given=("seed",))
    try:
        made = factory(seed=seed, **options)
    except InvalidArgument as error:
        raise InvalidArgument(f"data.factory {reference!r}: {error}") from None
    except Exception as error:
        raise InvalidArgument(f"data.factory {reference!r} raised {describe(error)}") from None
    if isinstance(made, DatasetSplits):
        parts, input_shape, num_classes = (made.train, made.val, made.test), made.input_shape, made.num_classes
    elif isinstance(made, (tuple, list)) and len(made) == 3 and all(isinstance(part, Dataset) for part in made):
        parts, input_shape, num_classes = tuple(made), None, None
    else:
        raise InvalidArgument(
            f"data.factory {reference!r} returned {_kind_of(made)}; expected trainlib.DatasetSplits or a tuple of "
            "(train, val, test) torch datasets"
        )
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        if len(part) == 0:  # type: ignore[arg-type]
            raise InvalidArgument(f"data.factory {reference!r} returned an empty {name} dataset")
    first = parts[0][0]
    if not (isinstance(first, (tuple, list)) and len(first) == 2 and isinstance(first[0], torch.Tensor)):
        raise InvalidArgument(
            f"data.factory {reference!r}: a sample of its train dataset is {_kind_of(first)}; "
            "expected a pair (input tensor, integer label)"
        )
    return DatasetSplits(
        *parts,
        input_shape=input_shape or tuple(first[0].shape),
        num_classes=num_classes or _count_classes(parts, reference),
    )


def _count_classes(parts: Sequence[Dataset], reference: str) -> int:
    """The largest label plus one: from the label tensors of TensorDatasets, else from ``classes`` or every label."""
    if all(isinstance(part, TensorDataset) and len(part.tensors) == 2 for part in parts):
        labels = [part.tensors[1] for part in parts]  # type: ignore[attr-defined]
    elif hasattr(parts[0], "num_classes"):
        return int(parts[0].num_classes)  # type: ignore[attr-defined]
    elif hasattr(parts[0], "classes"):
        return len(parts[0].classes)  # type: ignore[attr-defined]
    else:
        labels = [torch.as_tensor([int(part[index][1]) for index in range(len(part))]) for part in parts]  # type: ignore[arg-type]
    if any(label.is_floating_point() or label.is_complex() for label in labels):
        raise InvalidArgument(f"data.factory {reference!r}: labels are {labels[0].dtype}; expected integer classes")
    return int(max(int(label.max()) for label in labels)) + 1


def _kind_of(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(item).__name__ for item in value[:4])})"
    return f"a {type(value).__name__}"


def build_workload_model(workload: Workload, splits: DatasetSplits) -> nn.Module:
    """The workload's model for its data's sample shape and classes."""
    return build_model(
        workload.model,
        splits.input_shape,
        splits.num_classes,
        search_dirs=workload.search_dirs,
        **workload.model_options,
    )


def check_workload(workload: Workload, seed: int) -> DatasetSplits:
    """Load the data, build the model and run one batch of two samples through it; InvalidArgument on any mistake."""
    splits = load_splits(workload, seed)
    model = build_workload_model(workload, splits)
    inputs = next(iter(make_loader(splits.train, min(2, len(splits.train)), shuffle=False)))[0]  # type: ignore[arg-type]
    try:
        with torch.no_grad():
            outputs = model.eval()(inputs)
    except Exception as error:
        raise InvalidArgument(
            f"model {workload.model!r} cannot take a batch of shape {tuple(inputs.shape)} (samples of shape "
            f"{splits.input_shape}) from data.{workload.data_kind} {workload.data!r}: {describe(error)}"
        ) from None
    expected = (len(inputs), splits.num_classes)
    if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != expected:
        got = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else f"a {type(outputs).__name__}"
        raise InvalidArgument(
            f"model {workload.model!r} returns {got} for a batch of shape {tuple(inputs.shape)}; expected a tensor "
            f"of shape {expected}: one logit for each of the {splits.num_classes} classes (the largest label + 1)"
        )
    return splits


def provenance(workload: Workload, splits: DatasetSplits) -> dict[str, str]:
    """What traces a run back: the references, the data file's SHA-256 and shapes, the user code's version."""
    facts = {
        "model": workload.model,
        f"data.{workload.data_kind}": workload.data,
        "data.input_shape": str(tuple(splits.input_shape)),
        "data.num_classes": str(splits.num_classes),
        "data.sizes": f"train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}",  # type: ignore[arg-type]
    }
    if workload.data_kind == "path":
        path = workload.data_file()
        facts["data.file"] = str(path)
        facts["data.sha256"] = file_sha256(path)
    for role, reference in (("model", workload.model), ("data", workload.data)):
        if is_reference(reference) and (version := code_version(reference.partition(":")[0])):
            facts[f"{role}.code_version"] = version
    return facts


def code_version(module_name: str) -> str | None:
    """The installed distribution's version of ``module_name``'s package, else the git commit of its folder."""
    package = module_name.split(".")[0]
    for distribution in importlib.metadata.packages_distributions().get(package, []):
        return f"{distribution} {importlib.metadata.version(distribution)}"
    module = sys.modules.get(module_name)
    source = getattr(module, "__file__", None)
    return git_commit(Path(source).parent) if source else None


def git_commit(folder: Path | None = None) -> str | None:
    """HEAD of the git repository holding ``folder`` (default: the working directory), '+dirty' when changed."""
    folder = folder or Path(os.getcwd())
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, timeout=5, check=True, cwd=folder
    ).stdout.strip()
