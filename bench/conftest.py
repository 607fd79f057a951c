"""Benchmark options (grid size, rounds, threads), the shared datasets, and torch/CUDA facts for machine_info."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from bench.support import torch_environment
from trainlib.data import OnTheFlyMNIST1D, mnist1d_arrays


def worker_counts(text: str) -> list[int]:
    """Parse '0 1 2 4' or '0,1,2,4' into worker counts."""
    try:
        counts = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        counts = []
    if not counts or any(count < 0 for count in counts):
        raise argparse.ArgumentTypeError(f"expected non-negative integers such as '0 1 2 4', got {text!r}")
    return sorted(set(counts))


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


# Option -> (default grid, --quick grid). `make bench` uses the first column, `make bench-quick` the second.
SETTINGS: dict[str, tuple[Any, Any]] = {
    "workers": ([0, 1, 2, 4], [0, 2]),
    "in_memory_samples": (25000, 2500),
    "on_the_fly_samples": (2000, 400),
    "batch_size": (100, 100),
    "rounds": (5, 2),
    "parity_rounds": (7, 2),
    "warmup_rounds": (1, 1),
    "torch_threads": (1, 1),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """The grid's knobs; an option given explicitly wins over the --quick preset."""
    group = parser.getgroup("trainlib bench")
    group.addoption("--quick", action="store_true", help="The reduced grid of make bench-quick (under a minute).")
    group.addoption("--workers", type=worker_counts, help="DataLoader worker counts, e.g. '0 1 2 4' (quick: '0 2').")
    group.addoption(
        "--in-memory-samples",
        type=positive_int,
        help="MNIST-1D samples generated for the in-memory workload; 80%% form the training split (25000; quick 2500).",
    )
    group.addoption(
        "--on-the-fly-samples", type=positive_int, help="Samples per epoch of on-the-fly MNIST-1D (2000; quick 400)."
    )
    group.addoption("--batch-size", type=positive_int, help="Batch size (100).")
    group.addoption("--rounds", type=positive_int, help="Timed epochs per grid case (5; quick 2).")
    group.addoption("--parity-rounds", type=positive_int, help="Timed epochs per parity loop (7; quick 2).")
    group.addoption("--warmup-rounds", type=positive_int, help="Untimed epochs before the timed ones (1).")
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


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Add torch/CUDA versions, GPU name and count, CPU model, core and thread counts."""
    machine_info.update(torch_environment())
    for package in ("numpy", "mnist1d", "pytest-benchmark"):
        try:
            machine_info[f"{package.replace('-', '_')}_version"] = version(package)
        except PackageNotFoundError:
            machine_info[f"{package.replace('-', '_')}_version"] = "none"


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
