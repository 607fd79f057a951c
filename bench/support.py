"""Helpers the benchmark modules share: the device-synchronising timer, hardware names, one epoch's record.

Only torch, numpy and the standard library here: the bench runs on a bare GPU machine without MLflow or Optuna.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from trainlib.device import device_name, resolve_device


def synchronized_perf_counter() -> float:
    """time.perf_counter() read after queued CUDA work has finished, so a round counts its kernels.

    pytest-benchmark calls the timer right before and right after each round; syncing here keeps the
    training loop itself free of synchronisation. Without CUDA in use it is plain perf_counter.
    """
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def hardware_name(device: str) -> str:
    """What runs the model: the CPU model for 'cpu', else trainlib's device name (the GPU's model)."""
    resolved = resolve_device(device)
    return cpu_model() if resolved.type == "cpu" else device_name(resolved)


def torch_environment() -> dict[str, Any]:
    """torch, CUDA and CPU facts for pytest-benchmark's machine_info."""
    cuda_available = torch.cuda.is_available()
    gpu_count = torch.cuda.device_count() if cuda_available else 0
    return {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "none",
        "cudnn_version": str(torch.backends.cudnn.version()) if cuda_available else "none",
        "cuda_available": cuda_available,
        "gpu_count": gpu_count,
        "gpu_name": ", ".join(torch.cuda.get_device_name(index) for index in range(gpu_count)) or "none",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "usable_cpu_count": usable_cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
    }


def epoch_record(benchmark: Any, **case: Any) -> dict[str, Any]:
    """The extra_info of one case: its parameters plus samples/s at the median epoch time.

    ``case`` must hold dataset_size; with benchmarks disabled (--benchmark-disable) no timing is added.
    """
    record = dict(case)
    if benchmark.enabled and benchmark.stats is not None:
        median_seconds = benchmark.stats.stats.median
        record["median_epoch_seconds"] = median_seconds
        record["samples_per_second"] = case["dataset_size"] / median_seconds
    return record


def resident_mb() -> float:
    """This process's resident set size in MiB (Linux /proc; 0 where it cannot be read)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_memory(device: torch.device) -> float:
    """Start measuring a case's memory: CUDA's peak counter is reset; returns the resident set size before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    return resident_mb()


def peak_memory_figures(device: torch.device, resident_before_mb: float) -> dict[str, float]:
    """The case's memory: CUDA's peak allocated MiB, and the growth of the resident set (host memory) in MiB."""
    figures = {"rss_growth_mb": max(resident_mb() - resident_before_mb, 0.0)}
    if device.type == "cuda":
        figures["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return figures
