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


def _machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat (zeros where unreadable)."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def _own_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children, and its live descendants (DataLoader or compile workers)."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
        parents[int(stat.parent.name)] = int(fields[1])
        cpu[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / ticks
    for pid in cpu:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1) and ancestor != os.getpid():
            ancestor = parents.get(ancestor)
        if ancestor == os.getpid():
            total += cpu[pid]
    return total


class MachineLoad:
    """How busy the machine was with other work while the bench ran: CPU cores used by other processes (and,
    on a VM, stolen by the hypervisor) on average, and the load averages at the start and the end."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._machine_busy, self._machine_steal = _machine_cpu_seconds()
        self._own = _own_cpu_seconds()
        self._load_average_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0

    def figures(self) -> dict[str, float]:
        """Averages over the run so far (machine_info keys)."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        busy, steal = _machine_cpu_seconds()
        own = _own_cpu_seconds() - self._own
        return {
            "bench_seconds": elapsed,
            "other_processes_cpu_cores": max(busy - self._machine_busy - own, 0.0) / elapsed,
            "stolen_cpu_cores": max(steal - self._machine_steal, 0.0) / elapsed,
            "load_average_start": self._load_average_start,
            "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0,
        }


REFERENCE_STEPS = 25


def reference_epoch() -> Any:
    """A fixed piece of plain-torch training, independent of trainlib's code, timed in every interleaved cycle.

    Its rounds tell how fast the machine was at that moment: a case's epoch time over the reference's in the same
    cycle cancels a slow patch of a shared machine, so make bench-compare can tell a slower training loop from a
    slower machine. Small 1-D convolutions, Adam, batch 100, 25 steps on fixed random data: the same kind of work
    as the cases (a few small kernels and Python overhead per step), on the CPU.
    """
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(100, 1, 40, generator=generator)
    targets = torch.randint(0, 10, (100,), generator=generator)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(1, 32, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.Conv1d(32, 32, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 40, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()

    def run() -> float:
        for _ in range(REFERENCE_STEPS):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
        return loss.item()

    return run
