"""The user's data as a file: .npz, .pt/.pth, .csv or .parquet, read into checked arrays x, y (x_test, y_test)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from trainlib.errors import InvalidArgument
from trainlib.factories import describe

ARRAY_SUFFIXES = (".npz", ".pt", ".pth")
TABLE_SUFFIXES = (".csv", ".parquet")
DATA_FILE_SUFFIXES = ARRAY_SUFFIXES + TABLE_SUFFIXES
ARRAY_NAMES = ("x", "y", "x_test", "y_test")


def read_data_file(path: Path, label_column: str | None = None) -> dict[str, np.ndarray]:
    """Arrays x and y (and x_test, y_test where the file has them), checked; InvalidArgument names the problem.

    .npz is read with allow_pickle=False and .pt/.pth with weights_only=True: a data file cannot run code.
    """
    suffix = path.suffix.lower()
    if suffix not in DATA_FILE_SUFFIXES:
        raise InvalidArgument(f"data.path {str(path)!r}: unknown file type; use one of {', '.join(DATA_FILE_SUFFIXES)}")
    if not path.is_file():
        raise InvalidArgument(f"data.path {str(path)!r}: no such file")
    if suffix in TABLE_SUFFIXES:
        arrays = _read_table(path, label_column)
    else:
        if label_column is not None:
            raise InvalidArgument(f"data.label_column applies to .csv and .parquet files, not {path.name!r}")
        arrays = _read_npz(path) if suffix == ".npz" else _read_torch(path)
    check_arrays(arrays, f"data.path {str(path)!r}")
    return arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InvalidArgument(f"data.path {str(path)!r}: not a readable .npz file ({describe(error)})") from None
    return _named_arrays(arrays, path)


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or unsafe file
        raise InvalidArgument(f"data.path {str(path)!r}: not a readable tensor file ({describe(error)})") from None
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise InvalidArgument(
            f"data.path {str(path)!r}: holds a {type(loaded).__name__}; expected a dict of tensors "
            "{'x': ..., 'y': ..., and optionally 'x_test': ..., 'y_test': ...}"
        )
    return _named_arrays({str(name): tensor.numpy() for name, tensor in loaded.items()}, path)


def _named_arrays(arrays: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    found = ", ".join(sorted(arrays)) or "none"
    if "x" not in arrays or "y" not in arrays:
        raise InvalidArgument(
            f"data.path {str(path)!r}: has arrays {found}; expected x and y (and optionally x_test and y_test)"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise InvalidArgument(f"data.path {str(path)!r}: has arrays {found}; x_test and y_test come together")
    return {name: arrays[name] for name in ARRAY_NAMES if name in arrays}


def _read_table(path: Path, label_column: str | None) -> dict[str, np.ndarray]:
    import pandas as pd

    if label_column is None:
        raise InvalidArgument(f"data.path {str(path)!r}: a table needs data.label_column, the column of class labels")
    try:
        table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as error:  # pandas' parsers raise their own types for a damaged file
        raise InvalidArgument(f"data.path {str(path)!r}: not a readable table ({describe(error)})") from None
    if label_column not in table.columns:
        columns = ", ".join(map(str, table.columns[:12]))
        raise InvalidArgument(f"data.label_column {label_column!r} is not a column of {path.name!r}; it has: {columns}")
    features = table.drop(columns=[label_column]).select_dtypes(include="number")
    if features.shape[1] == 0:
        raise InvalidArgument(f"data.path {str(path)!r}: no numeric feature columns besides {label_column!r}")
    return {"x": features.to_numpy(dtype=np.float32), "y": table[label_column].to_numpy()}


def check_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raise InvalidArgument unless x/y (and x_test/y_test) are numeric samples and integer class labels."""
    for x_name, y_name in (("x", "y"), ("x_test", "y_test")):
        if x_name not in arrays:
            continue
        x, y = arrays[x_name], arrays[y_name]
        if x.ndim < 2 or x.shape[0] == 0:
            raise InvalidArgument(f"{source}: {x_name} has shape {x.shape}; expected (samples, ...) with samples > 0")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise InvalidArgument(f"{source}: {x_name} holds {x.dtype} values; expected numbers")
        if not np.isfinite(x).all():
            raise InvalidArgument(f"{source}: {x_name} holds NaN or infinite values")
        if y.ndim != 1:
            raise InvalidArgument(f"{source}: {y_name} has shape {y.shape}; expected one class label per sample")
        if len(x) != len(y):
            raise InvalidArgument(f"{source}: {x_name} has {len(x)} samples but {y_name} has {len(y)} labels")
        if not np.issubdtype(y.dtype, np.integer):
            example = y[:3].tolist()
            raise InvalidArgument(
                f"{source}: {y_name} holds {y.dtype} values such as {example}; expected integer class labels 0, 1, ..."
            )
        if y.min() < 0:
            raise InvalidArgument(f"{source}: {y_name} holds the negative label {int(y.min())}; labels count from 0")
    if "x_test" in arrays and arrays["x_test"].shape[1:] != arrays["x"].shape[1:]:
        raise InvalidArgument(
            f"{source}: x_test samples have shape {arrays['x_test'].shape[1:]}, x samples {arrays['x'].shape[1:]}"
        )


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
