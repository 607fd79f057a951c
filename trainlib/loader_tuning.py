"""num_workers = "auto": a short measured probe picks the DataLoader settings for this machine and workload.

Each candidate (worker count, prefetch factor, pinned memory where a GPU is fed) loads batches of the actual
dataset and runs the caller's training step on them. The step first runs WARMUP_SECONDS untimed (kernels, caches,
allocator and clocks warm up, as they would otherwise in the first candidate's timing); then every candidate is
timed in PROBE_ROUNDS short rounds, interleaved in alternating order (ABC, CBA, ABC), and its median rate counts,
so a slow patch of the machine or a drift does not pick for us. The fastest wins, and among settings within
TIE_TOLERANCE of it the one with the fewest workers (they cost memory and cores). The pick is cached per
machine, workload, batch size and device in cache_dir()/loader-settings.json, so a sweep probes once.
torch leaves this to the user (pytorch#23048); Lightning declined to automate it (#2196, #14961).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from trainlib.data import cache_dir, make_loader

TIE_TOLERANCE = 0.02  # settings within 2% of the fastest count as ties; the fewest workers wins
PROBE_SECONDS = 1.5  # timed seconds per candidate, in PROBE_ROUNDS rounds each after its WARMUP_BATCHES
PROBE_ROUNDS = 3
WARMUP_BATCHES = 2  # untimed batches of each round (a new loader's workers start up)
WARMUP_SECONDS = 0.5  # untimed steps before the first round
CACHE_FILE = "loader-settings.json"

Step = Callable[[torch.Tensor, torch.Tensor], Any]  # one training step on a batch (inputs, targets)


@dataclass(frozen=True)
class LoaderSettings:
    """What make_loader takes beyond the dataset and batch size: workers, prefetching, pinned memory."""

    num_workers: int = 0
    prefetch_factor: int | None = None
    persistent_workers: bool | None = None
    pin_memory: bool | None = None

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments for make_loader."""
        return asdict(self)

    def as_params(self) -> dict[str, Any]:
        """The settings as run params (loader.num_workers, ...), unset ones left out."""
        return {f"loader.{key}": value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class ProbeResult:
    """The pick, every candidate's samples/s, and how long the probe took (0 when read from the cache)."""

    settings: LoaderSettings
    samples_per_second: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def candidates(cores: int, feeds_gpu: bool) -> list[LoaderSettings]:
    """Worker counts 0, 1, 2, 4, 8, ... up to the usable cores, each with prefetch 2 and 4; pinned memory on CUDA."""
    counts = [0] + [count for count in (1, 2, 4, 8, 16, 32) if count <= cores]
    pin = True if feeds_gpu else None
    settings = [LoaderSettings(0, pin_memory=pin)]
    for count in counts[1:]:
        settings += [LoaderSettings(count, prefetch, True, pin) for prefetch in (2, 4)]
    return settings


def probe_loader_settings(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    step: Step,
    options: Iterable[LoaderSettings] | None = None,
    seconds_per_candidate: float = PROBE_SECONDS,
) -> ProbeResult:
    """Time ``step`` over batches from each candidate loader in interleaved rounds; the fastest median rate
    (fewest workers among ties) wins."""
    started = time.perf_counter()
    options = list(options) if options is not None else candidates(usable_cores(), device.type == "cuda")
    _measure(dataset, batch_size, device, step, options[0], WARMUP_SECONDS)  # untimed: warms the step up
    round_rates: dict[str, list[float]] = {label_of(settings): [] for settings in options}
    for round_index in range(PROBE_ROUNDS):
        for settings in options if round_index % 2 == 0 else reversed(options):
            rate = _measure(dataset, batch_size, device, step, settings, seconds_per_candidate / PROBE_ROUNDS)
            round_rates[label_of(settings)].append(rate)
    rates = {label: statistics.median(measured) for label, measured in round_rates.items()}
    return ProbeResult(pick_fastest(options, rates), rates, time.perf_counter() - started)


def pick_fastest(options: list[LoaderSettings], rates: dict[str, float]) -> LoaderSettings:
    """The fastest setting by ``rates`` (samples/s by label); among those within TIE_TOLERANCE, the fewest workers."""
    best = max(rates[label_of(settings)] for settings in options)
    ties = [settings for settings in options if rates[label_of(settings)] >= best * (1 - TIE_TOLERANCE)]
    return min(ties, key=lambda settings: (settings.num_workers, settings.prefetch_factor or 0))


def label_of(settings: LoaderSettings) -> str:
    """The setting in words, e.g. 'num_workers=2, prefetch_factor=4, persistent_workers=True'."""
    return ", ".join(f"{key}={value}" for key, value in asdict(settings).items() if value is not None)


def _measure(
    dataset: Dataset, batch_size: int, device: torch.device, step: Step, settings: LoaderSettings, seconds: float
) -> float:
    """samples/s of ``step`` fed by this loader, after its warm-up batches (worker start-up is not counted)."""
    loader = make_loader(dataset, batch_size, shuffle=True, device=device, seed=0, **settings.loader_options())
    if len(loader) == 0:
        return 0.0
    batches = _endless(loader)
    samples, timed_from = 0, 0.0
    for index, (inputs, targets) in enumerate(batches):
        step(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True))
        if index + 1 == WARMUP_BATCHES:
            _synchronize(device)
            timed_from = time.perf_counter()
        elif index + 1 > WARMUP_BATCHES:
            samples += len(targets)
            if time.perf_counter() - timed_from >= seconds:
                break
    _synchronize(device)
    elapsed = time.perf_counter() - timed_from
    batches.close()  # ends the loader's iterator, and with it persistent workers
    del loader
    return samples / elapsed if elapsed > 0 else 0.0


def _endless(loader: Iterable[Any]) -> Iterator[Any]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model: torch.nn.Module, device: torch.device) -> Step:
    """A plain SGD training step of ``model`` on ``device``: what the probe feeds (a throwaway model)."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(inputs), targets).backward()
        optimizer.step()

    return step


def machine_key() -> str:
    """What makes loader timings of two runs comparable: host, CPU, cores, torch."""
    cpu = platform.processor() or platform.machine()
    return f"{socket.gethostname()}|{cpu}|{usable_cores()} cores|torch {torch.__version__}"


def tuned_loader_settings(
    workload_key: str,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    step: Step,
) -> ProbeResult:
    """The cached pick for this machine, workload, batch size and device; probed (and cached) on first use."""
    key = hashlib.sha256(json.dumps([machine_key(), workload_key, batch_size, str(device)]).encode()).hexdigest()
    path = cache_dir() / CACHE_FILE
    cached = _read_cache(path)
    if key in cached:
        entry = cached[key]
        return ProbeResult(LoaderSettings(**entry["settings"]), entry["samples_per_second"], 0.0, cached=True)
    result = probe_loader_settings(dataset, batch_size, device, step)
    cached = _read_cache(path)  # another process may have written meanwhile
    cached[key] = {"settings": asdict(result.settings), "samples_per_second": result.samples_per_second}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(cached, indent=1))
    os.replace(partial, path)  # atomic: a concurrent reader sees the old file or the new one
    return result


def _read_cache(path: Any) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
