"""Benchmark options (grid size, rounds, threads), the shared datasets, and torch/CUDA facts for machine_info."""

from __future__ import annotations

import argparse
import math
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from bench.interleave import Interleaver, RoundRules, order_by_group
from bench.support import MachineLoad, torch_environment
from trainlib.data import DatasetSplits, OnTheFlyMNIST1D, mnist1d_arrays
from trainlib.errors import InvalidArgument
from trainlib.workload import Workload, check_workload, workload_from_sections


def worker_counts(text: str) -> list[int]:
    """Parse '0 1 2 4' or '0,1,2,4' into worker counts."""
    try:
        counts = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        counts = []
    if not counts or any(count < 0 for count in counts):
        raise argparse.ArgumentTypeError(f"expected non-negative integers such as '0 1 2 4', got {text!r}")
    return sorted(set(counts))


def batch_sizes(text: str) -> list[int]:
    """Parse '32 128 512' or '32,128,512' into positive batch sizes."""
    try:
        sizes = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        sizes = []
    if not sizes or any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected positive integers such as '32 128 512', got {text!r}")
    return sorted(set(sizes))


def positive_int(text: str) -> int:
    """Parse a positive integer option."""
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    """Parse a non-negative integer option."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    """Parse a positive number option."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_fraction(text: str) -> float:
    """Parse a fraction in (0, 1)."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 such as 0.02, got {text!r}")
    return value


def study_file(text: str) -> Path:
    """Parse --config: an existing study file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such study file: {text!r}")
    return path


@dataclass(frozen=True)
class StudyWorkload:
    """What --config names: the study's name, its model and data, and the batch sizes its search draws from."""

    name: str
    workload: Workload
    seed: int
    batch_sizes: list[int]


def read_study_workload(path: Path) -> StudyWorkload:
    """The workload of a study file, read with tomllib (the bench runs where pydantic and Optuna may be missing)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        workload = workload_from_sections(raw.get("model", {}), raw.get("data", {}), path.parent.resolve())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, InvalidArgument) as error:
        raise pytest.UsageError(f"--config {path}: {error}") from None
    batch_sizes = raw.get("search", {}).get("batch_size", [])
    batch_sizes = batch_sizes if isinstance(batch_sizes, list) else [batch_sizes]
    if not batch_sizes or not all(isinstance(size, int) and size > 0 for size in batch_sizes):
        raise pytest.UsageError(f"--config {path}: [search] batch_size must list positive integers")
    name = str(raw.get("study", {}).get("name", path.stem))
    return StudyWorkload(name, workload, int(raw.get("training", {}).get("seed", 0)), sorted(set(batch_sizes)))


# Option -> (default grid, --quick grid). `make bench` uses the first column, `make bench-quick` the second.
SETTINGS: dict[str, tuple[Any, Any]] = {
    "workers": ([0, 1, 2, 4], [0, 2]),
    "in_memory_samples": (25000, 2500),
    "on_the_fly_samples": (2000, 400),
    "batch_size": (100, 100),
    "knob_batch_sizes": ([32, 128, 512], [128]),
    "image_samples": (2048, 256),
    "cuda_image_samples": (20000, 10000),
    "rounds": (6, 6),
    "max_rounds": (30, 12),
    "interval_target": (0.02, 0.03),
    "group_seconds": (120.0, 20.0),
    "warmup_rounds": (1, 1),
    "torch_threads": (1, 1),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """The grid's knobs; an option given explicitly wins over the --quick preset."""
    group = parser.getgroup("trainlib bench")
    group.addoption("--quick", action="store_true", help="The reduced grid of make bench-quick (a few minutes).")
    group.addoption("--workers", type=worker_counts, help="DataLoader worker counts, e.g. '0 1 2 4' (quick: '0 2').")
    group.addoption(
        "--in-memory-samples",
        type=positive_int,
        help="MNIST-1D samples generated for the in-memory workload; 80%% form the training split (25000; quick 2500).",
    )
    group.addoption(
        "--on-the-fly-samples", type=positive_int, help="Samples per epoch of on-the-fly MNIST-1D (2000; quick 400)."
    )
    group.addoption(
        "--knob-batch-sizes",
        type=batch_sizes,
        help="Batch sizes of the fp32-eager knob cases (CPU against CUDA per batch size): '32 128 512'; quick '128'.",
    )
    group.addoption(
        "--guard-epochs",
        type=positive_int,
        help="Most epochs an accuracy-guard run trains before it counts as not reaching the target (the study's).",
    )
    group.addoption(
        "--image-samples", type=positive_int, help="Shapes images per epoch of the CPU image cases (2048; quick 256)."
    )
    group.addoption(
        "--cuda-image-samples",
        type=positive_int,
        help="Shapes images per epoch of the CUDA image cases (20000; quick 10000).",
    )
    group.addoption("--batch-size", type=positive_int, help="Batch size (100; with --config: the study's batch sizes).")
    group.addoption(
        "--config",
        type=study_file,
        help="A study file (experiments/*.toml or your own): measure its model and data over device x workers x "
        "its [search] batch sizes instead of the default grid (make bench CONFIG=...).",
    )
    group.addoption(
        "--rounds",
        type=positive_int,
        help="Timed epochs per case at least (6: fewest whose order-statistic interval of the median reaches 95%%).",
    )
    group.addoption("--max-rounds", type=positive_int, help="Timed epochs per case at most (30; quick 12).")
    group.addoption(
        "--interval-target",
        type=positive_fraction,
        help="Keep cycling a comparison group until each case's median is known to within this fraction "
        "(its 95%% interval's half width; 0.02, quick 0.03), or --group-seconds ran out.",
    )
    group.addoption(
        "--group-seconds",
        type=positive_float,
        help="Seconds after which a group's rounds stop adapting: no cycles beyond --rounds (120; quick 20).",
    )
    group.addoption("--warmup-rounds", type=non_negative_int, help="Untimed epochs before the timed ones (1).")
    group.addoption(
        "--torch-threads",
        type=non_negative_int,
        help="torch intra-op threads in the main process; 0: torch's default (1).",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Fill unset options from the default or --quick column, then fix torch's intra-op thread count.

    One thread by default: these models are tiny, and on a small shared CPU more threads than free cores
    turn OpenMP's waiting into most of the step time (measured 8 vs 110+ ms/step on a busy 2-core VM).
    """
    column = 1 if config.getoption("quick", default=False) else 0
    for name, values in SETTINGS.items():
        if getattr(config.option, name, None) is None:
            setattr(config.option, name, values[column])
    threads = config.option.torch_threads
    if threads:
        torch.set_num_threads(threads)
    config.machine_load = MachineLoad()  # type: ignore[attr-defined]
    study = config.getoption("config", default=None)
    config.study_workload = read_study_workload(study) if study is not None else None  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Members of an interleaved group run one after another; with --config only the throughput grid runs
    (parity, knobs and the accuracy guard use the built-in workloads)."""
    order_by_group(items)
    if config.study_workload is None:  # type: ignore[attr-defined]
        return
    others = [item for item in items if item.path.name != "test_throughput.py"]
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = [item for item in items if item.path.name == "test_throughput.py"]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Add torch/CUDA versions, GPU name and count, CPU model, core and thread counts."""
    machine_info.update(torch_environment())
    machine_info.update(config.machine_load.figures())  # type: ignore[attr-defined]
    for package in ("numpy", "mnist1d", "pytest-benchmark"):
        try:
            machine_info[f"{package.replace('-', '_')}_version"] = version(package)
        except PackageNotFoundError:
            machine_info[f"{package.replace('-', '_')}_version"] = "none"


@pytest.fixture(scope="session")
def study_splits(pytestconfig: pytest.Config) -> DatasetSplits:
    """The --config study's data, checked with one batch through its model (a mistake stops the session)."""
    study: StudyWorkload = pytestconfig.study_workload  # type: ignore[attr-defined]
    try:
        return check_workload(study.workload, study.seed)
    except InvalidArgument as error:
        pytest.exit(f"--config: {error}", returncode=2)


@pytest.fixture(scope="session")
def in_memory_train(pytestconfig: pytest.Config) -> TensorDataset:
    """MNIST-1D's training split as in-memory tensors (25,000 generated samples give 20,000)."""
    arrays = mnist1d_arrays(num_samples=pytestconfig.getoption("--in-memory-samples"))
    return TensorDataset(
        torch.as_tensor(arrays["x"], dtype=torch.float32), torch.as_tensor(arrays["y"], dtype=torch.long)
    )


@pytest.fixture(scope="session")
def on_the_fly_train(pytestconfig: pytest.Config) -> OnTheFlyMNIST1D:
    """MNIST-1D generated sample by sample in __getitem__: the CPU-bound workload workers exist for."""
    return OnTheFlyMNIST1D(num_samples=pytestconfig.getoption("--on-the-fly-samples"))


@pytest.fixture(scope="session")
def interleaved(pytestconfig: pytest.Config) -> Interleaver:
    """Times each comparison group's rounds in turn (bench.interleave), once per session."""
    return Interleaver(RoundRules.from_config(pytestconfig))
