"""A study file outside the repository names its own model factory and its own .npz of images: sweep and bench."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from sweep_helpers import HANG_SECONDS, ROOT, cli, cli_env, load_study, runs_of

from trainlib.cli import main

USER_PROJECT = Path(__file__).resolve().parent / "user_project"
STUDY = """
[study]
name = "{name}"
n_trials = 2
sampler = "random"
pruner = "none"

[data]
path = "{data}"
val_fraction = 0.2

[model]
factory = "{factory}"
{model_options}

[training]
epochs = 2
device = "cpu"

[search]
lr = {{ low = 1e-3, high = 1e-2 }}
batch_size = [32, 64]
optimizer = ["adam"]
"""


def write_project(
    folder: Path, factory: str = "tiny_models:tiny_cnn", model_options: str = "width = 4", data: str = "images.npz"
) -> Path:
    """The user project copied to ``folder``, with digits images in an .npz and a study file naming both."""
    shutil.copytree(USER_PROJECT, folder)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16).astype(np.float32)[:, None]
    np.savez(folder / "images.npz", x=images, y=digits.target)
    np.savez(folder / "short_labels.npz", x=images, y=digits.target[:-1])
    np.savez(folder / "float_labels.npz", x=images, y=digits.target / 2)
    np.savez(folder / "other_names.npz", images=images, labels=digits.target)
    (folder / "truncated.npz").write_bytes((folder / "images.npz").read_bytes()[:5000])
    study = folder / "study.toml"
    study.write_text(STUDY.format(name="own", data=data, factory=factory, model_options=model_options))
    return study


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=HANG_SECONDS)
    return process.returncode, out, err


def test_a_study_outside_the_repository_sweeps_its_own_model_and_images(stores: dict[str, str], tmp_path: Path) -> None:
    study_file = write_project(tmp_path / "elsewhere")

    code, out, err = finish(cli("sweep", str(study_file), env=cli_env(stores)))

    assert code == 0, err[-3000:]
    assert "best model's test accuracy (held-out split)" in out
    client = MlflowClient(stores["tracking_uri"])
    parent, children = runs_of(client, "own")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(child.info.status == "FINISHED" for child in children)
    history = client.get_metric_history(children[0].info.run_id, "val_accuracy")
    assert [metric.step for metric in history] == [1, 2]
    tags, params = parent.data.tags, parent.data.params
    assert params["model.factory"] == "tiny_models:tiny_cnn" and params["model.width"] == "4"
    assert params["data.path"] == "images.npz"
    assert tags["data.sha256"] == hashlib.sha256((tmp_path / "elsewhere" / "images.npz").read_bytes()).hexdigest()
    assert tags["data.input_shape"] == "(1, 8, 8)" and tags["data.sizes"] == "train 1149, val 288, test 360"
    assert 0 < parent.data.metrics["test_accuracy"] <= 1
    (logged,) = client.search_logged_models([parent.info.experiment_id])
    assert logged.source_run_id == parent.info.run_id


def test_an_exception_in_the_users_model_fails_that_trial_and_the_study_goes_on(
    stores: dict[str, str], tmp_path: Path
) -> None:
    study_file = write_project(tmp_path / "elsewhere", factory="tiny_models:FailsOnce", model_options="")

    code, _, err = finish(cli("sweep", str(study_file), env=cli_env(stores)))

    assert code == 0, err[-3000:]
    trials = load_study(stores, "own").trials
    assert [trial.state.name for trial in trials] == ["FAIL", "COMPLETE"]
    _, children = runs_of(MlflowClient(stores["tracking_uri"]), "own")
    failed = next(child for child in children if child.info.status == "FAILED")
    assert (
        failed.data.tags["optuna.reason"]
        == "training raised RuntimeError: CUDA-style failure inside the user's forward"
    )


def test_a_resume_with_another_data_file_is_exit_2_and_adds_nothing(stores: dict[str, str], tmp_path: Path) -> None:
    study_file = write_project(tmp_path / "elsewhere")
    assert finish(cli("sweep", str(study_file), "--n-trials", "1", env=cli_env(stores)))[0] == 0
    data = np.load(tmp_path / "elsewhere" / "images.npz")
    np.savez(tmp_path / "elsewhere" / "images.npz", x=data["x"][:-10], y=data["y"][:-10])

    code, _, err = finish(cli("sweep", str(study_file), "--n-trials", "1", env=cli_env(stores)))

    assert code == 2
    assert err.strip().splitlines()[-1].count("was run with [data]") == 1
    assert len(load_study(stores, "own").trials) == 1


CNN = "tiny_models:tiny_cnn"
BAD = {
    "module": ("no_such_module:net", "", "images.npz", ["model.factory 'no_such_module:net'", "cannot import"]),
    "function": ("tiny_models:resnet", "", "images.npz", ["has no 'resnet'"]),
    "option": (CNN, "depth = 3", "images.npz", ["does not take option 'depth'", "it takes: width"]),
    "raises": ("tiny_models:raises", "", "images.npz", ["raised ValueError: width must be even"]),
    "shape": ("tiny_models:flat_64", "", "images.npz", ["cannot take a batch of shape (2, 1, 8, 8)", "(1, 8, 8)"]),
    "not a module": ("tiny_models:not_a_module", "", "images.npz", ["returned a dict"]),
    "no data file": (CNN, "", "missing.npz", ["data.path 'missing.npz': no such file"]),
    "truncated file": (CNN, "", "truncated.npz", ["truncated.npz", "not a readable .npz file"]),
    "array names": (CNN, "", "other_names.npz", ["has arrays images, labels; expected x and y"]),
    "lengths": (CNN, "", "short_labels.npz", ["x has 1797 samples but y has 1796 labels"]),
    "float labels": (CNN, "", "float_labels.npz", ["y holds float64 values", "integer class labels"]),
}


@pytest.mark.parametrize(("factory", "options", "data", "words"), BAD.values(), ids=BAD.keys())
def test_a_bad_model_or_data_reference_is_one_line_exit_2_and_no_store(
    factory: str,
    options: str,
    data: str,
    words: list[str],
    tmp_path: Path,
    stores: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    study_file = write_project(tmp_path / "elsewhere", factory=factory, model_options=options, data=data)
    with pytest.raises(SystemExit) as stopped:
        main(["sweep", str(study_file)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1, lines
    assert all(word in lines[0] for word in words), lines[0]
    assert not Path(stores["mlruns"]).exists()
    for module in ("tiny_models", "tiny_data", "broken_module"):
        sys.modules.pop(module, None)


def test_make_bench_quick_config_measures_the_studys_model_and_data(tmp_path: Path) -> None:
    study_file = write_project(tmp_path / "elsewhere")
    out = tmp_path / "bench"

    result = subprocess.run(
        ["make", "--no-print-directory", "bench-quick", f"CONFIG={study_file}", f"QUICK_OUT={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
        env={**os.environ, "PYTEST_ADDOPTS": "-p no:cacheprovider"},
        check=False,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((out / "bench.json").read_text())
    names = {bench["name"] for bench in document["benchmarks"]}
    assert names == {
        f"test_epoch_throughput[cpu-study-batch_{b}-{w}_workers]" for b in (32, 64) for w in (0, 2, "auto")
    }
    for bench in document["benchmarks"]:
        extra = bench["extra_info"]
        assert (extra["model"], extra["dataset"], extra["workload"]) == ("tiny_models:tiny_cnn", "images.npz", "own")
        assert extra["dataset_size"] == 1149 and extra["samples_per_second"] > 0
    report = (out / "throughput.md").read_text()
    assert "## own: 1,149 training samples per epoch (model tiny_models:tiny_cnn, data images.npz)" in report


def test_bench_with_a_bad_study_is_one_line_exit_2(tmp_path: Path) -> None:
    study_file = write_project(tmp_path / "elsewhere", factory="tiny_models:flat_64", model_options="")

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--quick", "-q", "-p", "no:cacheprovider", "--config", study_file],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
        check=False,
    )

    assert result.returncode == 2, result.stdout[-3000:]
    assert "--config: model 'tiny_models:flat_64' cannot take a batch of shape (2, 1, 8, 8)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
