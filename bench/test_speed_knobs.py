"""Speed knobs side by side: device × workload × batch size × precision × compile (× channels_last for images).

Each case trains one epoch per round with trainlib's train_one_epoch (Adam, trainlib's loader, no workers); the
rounds of one workload and batch size are interleaved across knob settings and devices (bench.interleave). The
first epoch is timed on its own while the case is built: it holds torch.compile's compilation (and cuDNN's
autotuning), which the report sets against the steady epochs to give the break-even epoch count. Peak memory, over
building and the first epoch: CUDA's max allocated bytes; on the CPU the growth of the resident set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bench.interleave import Case, Interleaver, replay_clock
from bench.support import (
    hardware_name,
    peak_memory_figures,
    reset_peak_memory,
    synchronized_perf_counter,
)
from trainlib.data import make_loader
from trainlib.engine import train_one_epoch
from trainlib.models import build_model
from trainlib.optim import build_optimizer
from trainlib.speed import SpeedKnobs, compile_unsupported, precision_unsupported

pytestmark = [pytest.mark.benchmark(timer=replay_clock)]

# Workload -> (model, its options, the sample shape). mnist1d: the default study's 1-D CNN on MNIST-1D signals;
# images: ResNet-8 on 3x32x32 shapes (trainlib.shapes), the workload where a GPU has work to do.
KNOB_WORKLOADS: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    "mnist1d": ("cnn1d", {"channels": [32, 64, 128], "kernel_size": 3, "batch_norm": True}, (40,)),
    "images": ("resnet", {"channels": [16, 32, 64], "blocks": 1}, (3, 32, 32)),
}
KNOB_BATCH_SIZE = 128  # where the knobs are compared; fp32 eager also runs at every --knob-batch-sizes
# --quick on the CPU: (precision, compile, channels_last) each knob once against fp32 eager.
QUICK_KNOBS = {("fp32", False, False), ("bf16", False, False), ("fp32", True, False), ("fp32", False, True)}
PRECISIONS_BY_DEVICE = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")}
LEARNING_RATE = 1e-3
NUM_CLASSES = 10


def knob_grid(batch_sizes: list[int], quick: bool) -> Iterator[tuple[tuple[Any, ...], str, bool]]:
    """(device, workload, batch size, precision, compile, channels_last) cases, their ids, and whether CUDA runs them.

    The full product at KNOB_BATCH_SIZE (channels_last only for images), fp32 eager at every batch size. --quick
    keeps both axes but compiles only in fp32 and tries channels_last only in fp32 eager, on the CPU.
    """
    for device in ("cpu", "cuda"):
        reduced = quick and device == "cpu"
        for workload in KNOB_WORKLOADS:
            layouts = (False, True) if workload == "images" else (False,)
            sizes = sorted({*batch_sizes, KNOB_BATCH_SIZE})
            for batch_size in sizes:
                for precision in PRECISIONS_BY_DEVICE[device]:
                    for compiled in (False, True):
                        for channels_last in layouts:
                            knobs = (precision, compiled, channels_last)
                            if batch_size != KNOB_BATCH_SIZE and knobs != ("fp32", False, False):
                                continue
                            if reduced and knobs not in QUICK_KNOBS:
                                continue
                            case_id = (
                                f"{device}-{workload}-batch_{batch_size}-{precision}-"
                                f"{'compiled' if compiled else 'eager'}" + ("-channels_last" if channels_last else "")
                            )
                            yield (device, workload, batch_size, *knobs), case_id, device == "cuda"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize test_knob_epoch with the knob grid (not run with --config: a study's own grid replaces it)."""
    if metafunc.definition.name != "test_knob_epoch":
        return
    config = metafunc.config
    cases = list(knob_grid(config.getoption("--knob-batch-sizes"), config.getoption("quick")))
    metafunc.parametrize(
        "device,workload,batch_size,precision,compiled,channels_last",
        [pytest.param(*values, id=case_id, marks=[NEEDS_CUDA] if cuda else []) for values, case_id, cuda in cases],
    )


NEEDS_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason=f"CUDA is not available on this machine (torch {torch.__version__})"
)


def interleave_group(workload: str, batch_size: int, **_: object) -> str:
    """Cases compared with each other: every knob setting and device of one workload and batch size."""
    return f"knobs-{workload}-batch_{batch_size}"


def build_case(
    fixture: Callable[[str], Any],
    config: pytest.Config,
    device: str,
    workload: str,
    batch_size: int,
    precision: str,
    compiled: bool,
    channels_last: bool,
) -> Case:
    """One knob setting ready to time; its first (compiling) epoch is run and timed here, with its peak memory."""
    resolved = torch.device(device)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    why_not = precision_unsupported(precision, resolved) or (compiled and compile_unsupported(resolved))
    if why_not:
        pytest.skip(f"{precision}{' compiled' if compiled else ''} on {device}: {why_not}")
    dataset: TensorDataset = fixture("knob_data")(workload, device)
    model_name, options, shape = KNOB_WORKLOADS[workload]
    memory_before = reset_peak_memory(resolved)
    torch.manual_seed(0)
    model = build_model(model_name, shape, NUM_CLASSES, **options)
    knobs = SpeedKnobs(precision=precision, compile=compiled, channels_last=channels_last, cudnn_benchmark=True)
    runnable = knobs.prepare(model, resolved)
    optimizer = build_optimizer("adam", model.parameters(), LEARNING_RATE)
    loader = make_loader(dataset, batch_size, shuffle=True, device=device, seed=0)
    scaler = knobs.grad_scaler(resolved)
    criterion = nn.CrossEntropyLoss()

    def epoch() -> float:
        return train_one_epoch(runnable, loader, criterion, optimizer, device, speed=knobs, scaler=scaler)

    started = synchronized_perf_counter()
    first_loss = epoch()
    first_epoch_seconds = synchronized_perf_counter() - started
    if not math.isfinite(first_loss):
        raise AssertionError("the first epoch diverged: a diverged epoch must not pass as a fast one")
    record = {
        "device": device,
        "device_name": hardware_name(device),
        "workload": f"knobs-{workload}",
        "model": model_name,
        "dataset": "mnist1d" if workload == "mnist1d" else "shapes",
        "loader": "trainlib",
        "num_workers": 0,
        "memory": "pageable",
        "batch_size": batch_size,
        "dataset_size": len(dataset),
        "torch_threads": torch.get_num_threads(),
        "precision": precision,
        "compile": compiled,
        "channels_last": channels_last,
        "first_epoch_seconds": first_epoch_seconds,
        **peak_memory_figures(resolved, memory_before),
    }
    return Case(epoch, record, warmed_up=True)


def test_knob_epoch(
    benchmark,
    request: pytest.FixtureRequest,
    interleaved: Interleaver,
    device: str,
    workload: str,
    batch_size: int,
    precision: str,
    compiled: bool,
    channels_last: bool,
) -> None:
    """Median epoch time of one knob setting (rounds interleaved with the other settings), its first epoch, memory."""
    measured = interleaved.time_case(request, benchmark)
    assert math.isfinite(measured.last_loss), "a diverged epoch must not pass as a fast one"


@pytest.fixture(scope="session")
def knob_data(pytestconfig: pytest.Config, in_memory_train: TensorDataset):
    """(workload, device) -> its training tensors: MNIST-1D's in-memory split, or shapes images sized per device."""
    images: dict[int, TensorDataset] = {}

    def data(workload: str, device: str) -> TensorDataset:
        if workload == "mnist1d":
            return in_memory_train
        count = pytestconfig.getoption("--image-samples" if device == "cpu" else "--cuda-image-samples")
        if count not in images:
            from trainlib.data import image_floats, shapes_images

            arrays = shapes_images(count)
            images[count] = TensorDataset(
                torch.from_numpy(image_floats(arrays["x"])), torch.as_tensor(arrays["y"], dtype=torch.long)
            )
        return images[count]

    return data
