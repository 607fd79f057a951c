"""The user's own model and data (trainlib.workload): factories by import path, data files, one-line mistakes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainlib import InvalidArgument, load_dataset, make_loader
from trainlib.workload import (
    Workload,
    build_workload_model,
    check_workload,
    load_splits,
    provenance,
    workload_from_sections,
)

USER_PROJECT = Path(__file__).resolve().parent / "user_project"
USER_MODULES = ("tiny_models", "tiny_data", "broken_module")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the user project in a folder of its own, with digits images written as an .npz."""
    folder = tmp_path / "project"
    shutil.copytree(USER_PROJECT, folder)
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(folder / "digits.npz", x=(digits.images / 16).astype(np.float32)[:, None], y=digits.target)
    yield folder
    for name in USER_MODULES:  # another test's copy must be imported afresh
        sys.modules.pop(name, None)


def workload(project: Path, model: dict, data: dict) -> Workload:
    return workload_from_sections(model, data, project)


def test_an_npz_of_images_and_a_model_factory_make_a_checked_workload(project: Path) -> None:
    work = workload(project, {"factory": "tiny_models:tiny_cnn", "width": 4}, {"path": "digits.npz"})
    splits = check_workload(work, seed=0)

    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1149, 288, 360)
    model = build_workload_model(work, splits)
    assert model[0].out_channels == 4  # the option reached the factory
    assert model(splits.train.tensors[0][:3]).shape == (3, 10)


def test_the_held_out_part_of_a_file_is_the_built_in_digits_split_whatever_the_seed(project: Path) -> None:
    work = workload(project, {"name": "mlp"}, {"path": "digits.npz"})
    first, other_seed = load_splits(work, seed=0), load_splits(work, seed=5)
    built_in = load_dataset("digits", seed=0)

    assert torch.equal(first.test.tensors[0], other_seed.test.tensors[0])  # the seed draws train/val only
    assert not torch.equal(first.val.tensors[1], other_seed.val.tensors[1])
    assert torch.equal(first.test.tensors[0].flatten(1), built_in.test.tensors[0])
    assert torch.equal(first.test.tensors[1], built_in.test.tensors[1])
    assert torch.equal(first.train.tensors[0].flatten(1), built_in.train.tensors[0])


def test_a_file_with_its_own_test_part_keeps_it(tmp_path: Path) -> None:
    x, y = np.random.default_rng(0).normal(size=(100, 2, 5)), np.arange(100) % 4
    np.savez(tmp_path / "own.npz", x=x, y=y, x_test=x[:12], y_test=y[:12])
    splits = load_splits(workload(tmp_path, {"name": "cnn1d"}, {"path": "own.npz", "val_fraction": 0.25}), seed=0)

    assert len(splits.test) == 12 and (len(splits.train), len(splits.val)) == (75, 25)
    assert splits.input_shape == (2, 5) and splits.num_classes == 4


def test_pt_csv_and_parquet_files_load_with_labels_from_their_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 3)).astype(np.float32), np.arange(80) % 2
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "data.pt")
    table = pd.DataFrame({"a": x[:, 0], "name": ["s"] * 80, "b": x[:, 1], "c": x[:, 2], "label": y})
    table.to_csv(tmp_path / "data.csv", index=False)
    table.to_parquet(tmp_path / "data.parquet")

    for data in (
        {"path": "data.pt"},
        {"path": "data.csv", "label_column": "label"},
        {"path": "data.parquet", "label_column": "label"},
    ):
        splits = load_splits(workload(tmp_path, {"name": "mlp"}, data), seed=0)
        assert splits.input_shape == (3,) and splits.num_classes == 2, data  # the text column is not a feature
        everything = torch.cat([splits.train.tensors[0], splits.val.tensors[0], splits.test.tensors[0]])
        assert sorted(everything[:, 0].tolist()) == pytest.approx(sorted(x[:, 0].tolist()), rel=1e-6), data


def test_data_factories_return_splits_or_datasets_and_classes_are_inferred(project: Path) -> None:
    tensors = load_splits(workload(project, {"name": "mlp"}, {"factory": "tiny_data:blobs", "num_samples": 90}), 1)
    declared = load_splits(workload(project, {"name": "mlp"}, {"factory": "tiny_data:blob_splits"}), 1)
    computed = check_workload(workload(project, {"name": "mlp"}, {"factory": "tiny_data:squares"}), 1)

    assert (tensors.num_classes, tensors.input_shape, len(tensors.train)) == (3, (6,), 90)
    assert (declared.num_classes, declared.input_shape) == (3, (6,))
    assert (computed.num_classes, computed.input_shape) == (2, (2,))  # from the dataset's `classes`
    loader = make_loader(computed.train, 16, shuffle=True, num_workers=2)
    assert isinstance(loader, DataLoader) and not isinstance(computed.train, TensorDataset)
    inputs, labels = next(iter(loader))
    assert inputs.shape == (16, 2) and labels.dtype == torch.int64


def test_modules_resolve_in_the_study_folder_before_the_working_directory(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "tiny_models.py").write_text("def tiny_cnn(*args, **kwargs):\n    raise AssertionError('wrong one')\n")
    (elsewhere / "only_here.py").write_text(
        "from torch import nn\n\ndef linear(shape, classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(classes))\n"
    )
    monkeypatch.chdir(elsewhere)
    sys.modules.pop("only_here", None)

    from_study_folder = workload(project, {"factory": "tiny_models:tiny_cnn"}, {"path": "digits.npz"})
    from_cwd = workload(project, {"factory": "only_here:linear"}, {"path": "digits.npz"})
    check_workload(from_study_folder, 0)
    check_workload(from_cwd, 0)
    sys.modules.pop("only_here", None)


def test_provenance_names_the_factories_the_files_content_and_the_codes_commit(project: Path) -> None:
    def git(*args: str) -> str:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, cwd=project, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "tiny_models.py")
    git("commit", "-q", "-m", "the user's model")
    work = workload(project, {"factory": "tiny_models:tiny_cnn"}, {"path": "digits.npz"})
    facts = provenance(work, check_workload(work, 0))

    assert facts["model"] == "tiny_models:tiny_cnn" and facts["data.path"] == "digits.npz"
    assert facts["data.sha256"] == hashlib.sha256((project / "digits.npz").read_bytes()).hexdigest()
    assert facts["data.input_shape"] == "(1, 8, 8)" and facts["data.num_classes"] == "10"
    assert facts["data.sizes"] == "train 1149, val 288, test 360"
    assert facts["model.code_version"] == git("rev-parse", "HEAD")  # not installed: its folder's git commit
    (project / "tiny_models.py").write_text((project / "tiny_models.py").read_text() + "\n# changed\n")
    assert provenance(work, check_workload(work, 0))["model.code_version"] == git("rev-parse", "HEAD") + "+dirty"


def _write(folder: Path, name: str, **arrays: np.ndarray) -> None:
    np.savez(folder / name, **arrays)


IMAGES = {"path": "digits.npz"}
BAD_REFERENCES = {
    "module missing": ({"factory": "no_such_module:net"}, IMAGES, ["'no_such_module:net'", "cannot import"]),
    "function missing": ({"factory": "tiny_models:resnet"}, IMAGES, ["has no 'resnet'", "tiny_cnn"]),
    "not callable": ({"factory": "tiny_models:LABEL"}, IMAGES, ["'LABEL' is a int, not a function"]),
    "import fails": ({"factory": "broken_module:net"}, IMAGES, ["importing 'broken_module' raised ImportError"]),
    "factory raises": ({"factory": "tiny_models:raises"}, IMAGES, ["raised ValueError: width must be even"]),
    "not a module": ({"factory": "tiny_models:not_a_module"}, IMAGES, ["returned a dict", "torch.nn.Module"]),
    "unknown option": ({"factory": "tiny_models:tiny_cnn", "widht": 3}, IMAGES, ["'widht'", "it takes: width"]),
    "sample shape": ({"factory": "tiny_models:flat_64"}, IMAGES, ["(2, 1, 8, 8)", "(1, 8, 8)", "mat1 and mat2"]),
    "output shape": (
        {"factory": "tiny_models:three_logits"},
        IMAGES,
        ["returns (2, 3)", "expected a tensor of shape (2, 10)"],
    ),
    "built-in shape": ({"name": "cnn1d"}, IMAGES, ["'cnn1d' takes samples of shape (length,)", "(1, 8, 8)"]),
    "no file": ({"name": "mlp"}, {"path": "nowhere.npz"}, ["'nowhere.npz': no such file"]),
    "corrupt file": ({"name": "mlp"}, {"path": "corrupt.npz"}, ["not a readable .npz file"]),
    "array names": ({"name": "mlp"}, {"path": "names.npz"}, ["has arrays features, labels; expected x and y"]),
    "lengths": ({"name": "mlp"}, {"path": "lengths.npz"}, ["x has 50 samples but y has 49 labels"]),
    "float labels": ({"name": "mlp"}, {"path": "floats.npz"}, ["y holds float64 values", "integer class labels"]),
    "pickled": ({"name": "mlp"}, {"path": "pickled.npz"}, ["not a readable .npz file", "allow_pickle=False"]),
    "no label column": ({"name": "mlp"}, {"path": "table.csv", "label_column": "class"}, ["'class' is not a column"]),
    "data factory type": ({"name": "mlp"}, {"factory": "tiny_data:returns_a_list"}, ["returned a list of 3 (int"]),
    "data factory raises": ({"name": "mlp"}, {"factory": "tiny_data:raises"}, ["raised FileNotFoundError"]),
    "data option": ({"name": "mlp"}, {"factory": "tiny_data:blobs", "size": 3}, ["'size'", "num_samples"]),
    "two sources": ({"name": "mlp"}, {"path": "digits.npz", "dataset": "digits"}, ["exactly one of dataset"]),
}


@pytest.mark.parametrize(("model", "data", "expected"), BAD_REFERENCES.values(), ids=BAD_REFERENCES.keys())
def test_each_bad_reference_is_one_line_naming_key_value_and_cause(
    project: Path, model: dict, data: dict, expected: list[str]
) -> None:
    x = np.zeros((50, 4), dtype=np.float32)
    _write(project, "names.npz", features=x, labels=np.zeros(50, dtype=int))
    _write(project, "lengths.npz", x=x, y=np.zeros(49, dtype=int))
    _write(project, "floats.npz", x=x, y=np.full(50, 0.5))
    np.savez(project / "pickled.npz", x=np.array([{"a": 1}] * 50, dtype=object), y=np.zeros(50, dtype=int))
    (project / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (project / "table.csv").write_text("a,b,label\n1,2,0\n")

    with pytest.raises(InvalidArgument) as raised:
        check_workload(workload_from_sections(model, data, project), seed=0)

    message = str(raised.value)
    assert "\n" not in message
    for part in expected:
        assert part in message
