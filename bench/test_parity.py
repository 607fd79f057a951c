"""Loop parity on MNIST-1D (20,000 training samples), cnn1d, Adam, batch size 100: three epochs side by side.

(a) trainlib's train_one_epoch over trainlib's loader with trainlib's optimizer factory, (b) a hand-written
eager loop that slices pre-shuffled tensors, (c) the seed's loop over
DataLoader(TensorDataset(...), batch_size=100, shuffle=True).
Targets: (a) within 3% of (b); (a) at least 1.10x as fast as (c). The three loops' rounds are interleaved
(bench.interleave); the report computes the ratios with intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.interleave import Case, Interleaver, replay_clock
from bench.support import hardware_name
from trainlib.data import make_loader
from trainlib.engine import train_one_epoch
from trainlib.models import build_model
from trainlib.optim import build_optimizer

pytestmark = pytest.mark.benchmark(timer=replay_clock)

BATCH_SIZE, NUM_FEATURES, NUM_CLASSES, LEARNING_RATE = 100, 40, 10, 1e-3
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason=f"CUDA is not available on this machine (torch {torch.__version__})"
        ),
    ),
]


def eager_epoch(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
) -> None:
    """The hand-written reference: shuffle once with randperm, then train on consecutive slices."""
    model.train()
    order = torch.randperm(len(inputs), device=inputs.device)
    inputs, targets = inputs[order], targets[order]
    for start in range(0, len(inputs), batch_size):
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(inputs[start : start + batch_size]), targets[start : start + batch_size])
        loss.backward()
        optimizer.step()


def seed_epoch(
    model: nn.Module, dataloader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer, device: str
) -> float:
    """The seed project's train_one_epoch, as written there: per-batch .to(device) and loss.item()."""
    model.train()
    total_loss, total_samples = 0.0, 0
    for batch_x, batch_y in dataloader:
        batch_x, batch_y = batch_x.to(device), batch_y.to(device)
        optimizer.zero_grad()
        predictions = model(batch_x)
        loss = criterion(predictions, batch_y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * batch_x.size(0)
        total_samples += batch_x.size(0)
    return total_loss / total_samples


LOOPS = ("trainlib", "eager", "seed")


def interleave_group(device: str, **_: object) -> str:
    """The three loops on one device are compared with each other."""
    return f"parity-{device}"


def build_case(fixture: Callable[[str], Any], config: pytest.Config, device: str, loop: str) -> Case:
    """Loop ``loop`` on a freshly seeded cnn1d, ready to time one epoch.

    (a) trainlib's train_one_epoch over make_loader's batched loader (GPU-resident on CUDA, like (b)), with the
    optimizer from trainlib's factory as train_model does (fused Adam where torch has it); (b) the hand-written
    eager loop over pre-shuffled tensors on the device and (c) the seed's loop over torch's per-sample DataLoader,
    both with torch.optim.Adam built by hand, as the seed does.
    """
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    dataset: TensorDataset = fixture("in_memory_train")
    torch.manual_seed(0)
    model = build_model("cnn1d", NUM_FEATURES, NUM_CLASSES).to(device)
    criterion = nn.CrossEntropyLoss()
    if loop == "trainlib":
        optimizer = build_optimizer("adam", model.parameters(), LEARNING_RATE)
        loader = make_loader(dataset, BATCH_SIZE, shuffle=True, device=device, resident=device == "cuda")
        run_round = lambda: train_one_epoch(model, loader, criterion, optimizer, device)  # noqa: E731
    elif loop == "eager":
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        inputs, targets = (tensor.to(device) for tensor in dataset.tensors)
        run_round = lambda: eager_epoch(model, inputs, targets, criterion, optimizer, BATCH_SIZE)  # noqa: E731
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        dataloader = DataLoader(TensorDataset(*dataset.tensors), batch_size=BATCH_SIZE, shuffle=True)
        run_round = lambda: seed_epoch(model, dataloader, criterion, optimizer, device)  # noqa: E731
    record = {
        "loop": loop,
        "device": device,
        "device_name": hardware_name(device),
        "workload": "in_memory",
        "loader": {"trainlib": "trainlib", "eager": "slices", "seed": "torch"}[loop],
        "num_workers": 0,
        "memory": "resident" if device == "cuda" and loop != "seed" else "pageable",
        "batch_size": BATCH_SIZE,
        "dataset_size": len(dataset),
        "torch_threads": torch.get_num_threads(),
    }
    return Case(run_round, record)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("device", DEVICES)
def test_parity_loop(
    benchmark, request: pytest.FixtureRequest, interleaved: Interleaver, device: str, loop: str
) -> None:
    """Median epoch time of one loop, its rounds interleaved with the other two loops on the same device."""
    measured = interleaved.time_case(request, benchmark, group=f"parity-{device}")
    loss = measured.last_loss
    assert loss is None or math.isfinite(loss), "a diverged epoch must not pass as a fast one"
