"""The training loop: train_one_epoch, evaluate_model, train_model. Plain PyTorch, nothing else."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainlib.device import resolve_device, synchronize
from trainlib.errors import check_positive, check_positive_int
from trainlib.optim import BATCH_SCHEDULES, build_lr_schedule, build_optimizer
from trainlib.speed import FP32_EAGER, SpeedKnobs


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced; handed to every callback."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    epoch_seconds: float
    samples_per_second: float

    def metrics(self) -> dict[str, float]:
        """The per-epoch metrics by name (everything but the epoch number)."""
        return {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "epoch_seconds": self.epoch_seconds,
            "samples_per_second": self.samples_per_second,
        }


HISTORY_KEYS = ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second")


@dataclass
class History:
    """Per-epoch metrics; reads like the seed's dict: history['val_accuracy'][-1]."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    samples_per_second: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def __getitem__(self, key: str) -> list[float]:
        if key not in HISTORY_KEYS:
            raise KeyError(f"{key!r}; History has {', '.join(HISTORY_KEYS)}")
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return HISTORY_KEYS

    def __iter__(self) -> Iterator[str]:
        return iter(HISTORY_KEYS)

    def __len__(self) -> int:
        """The number of epochs trained."""
        return len(self.train_loss)

    def append(self, result: EpochResult) -> None:
        for key, value in result.metrics().items():
            getattr(self, key).append(value)

    def to_dict(self) -> dict[str, list[float]]:
        return {key: list(getattr(self, key)) for key in HISTORY_KEYS}

    @property
    def best_val_accuracy(self) -> float:
        return max(self.val_accuracy, default=float("nan"))


# A callback sees each epoch's result; returning True stops training after that epoch.
# Exceptions it raises (for example optuna.TrialPruned) propagate to the caller.
Callback = Callable[[EpochResult], "bool | None"]


class TrainingDiverged(ArithmeticError):
    """The training loss became NaN, infinite, or larger than the divergence threshold."""

    def __init__(self, epoch: int, loss: float, threshold: float | None = None) -> None:
        limit = (
            f" (above the divergence threshold {threshold:g})" if threshold is not None and math.isfinite(loss) else ""
        )
        super().__init__(f"training diverged at epoch {epoch}: train_loss={loss:.6g}{limit}")
        self.epoch = epoch
        self.loss = loss


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device,
    *,
    speed: SpeedKnobs = FP32_EAGER,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """Train ``model`` for one pass over ``loader``; return the mean loss per sample.

    ``speed`` sets the autocast precision and the input memory format (``model`` is already prepared with
    ``speed.prepare``); with fp16 pass the same ``scaler`` every epoch (one is made when None).
    """
    device = resolve_device(device)
    if scaler is None:
        scaler = speed.grad_scaler(device)
    mean_loss, _ = _train_epoch(model, loader, criterion, optimizer, device, speed=speed, scaler=scaler)
    return mean_loss


def _train_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    batch_schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    speed: SpeedKnobs = FP32_EAGER,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, int]:
    model.train()
    total_loss = torch.zeros((), device=device)  # summed on the device: no host sync per step
    samples = 0
    for inputs, targets in loader:
        inputs = speed.inputs_to(inputs, device)
        targets = targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with speed.autocast(device):
            loss = criterion(model(inputs), targets)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # fp16: scaled backward, unscaled step skipped when a gradient overflowed
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if batch_schedule is not None:
            batch_schedule.step()
        total_loss += loss.detach() * targets.shape[0]
        samples += targets.shape[0]
    return total_loss.item() / max(samples, 1), samples


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    loader: Iterable[Any],
    criterion: nn.Module,
    device: str | torch.device,
    *,
    speed: SpeedKnobs = FP32_EAGER,
) -> tuple[float, float]:
    """Return (mean loss per sample, accuracy) of ``model`` on ``loader``, in eval mode, without autograd.

    ``speed`` sets the autocast precision and input memory format, as in training.
    """
    device = resolve_device(device)
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    samples = 0
    for inputs, targets in loader:
        inputs = speed.inputs_to(inputs, device)
        targets = targets.to(device, non_blocking=True)
        with speed.autocast(device):
            outputs = model(inputs)
            loss = criterion(outputs, targets)
        total_loss += loss.float() * targets.shape[0]
        correct += (outputs.argmax(dim=1) == targets).sum()
        samples += targets.shape[0]
    if samples == 0:
        return float("nan"), float("nan")
    return total_loss.item() / samples, correct.item() / samples


def train_model(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    num_epochs: int,
    lr: float,
    device: str | torch.device,
    optimizer: str | torch.optim.Optimizer = "adam",
    callbacks: Sequence[Callback] = (),
    *,
    criterion: nn.Module | None = None,
    optimizer_options: dict[str, Any] | None = None,
    divergence_threshold: float | None = None,
    lr_schedule: str = "constant",
    precision: str = "fp32",
    compile: bool = False,
    compile_mode: str = "default",
    channels_last: bool = False,
    cudnn_benchmark: bool = False,
) -> History:
    """Train for up to ``num_epochs``, evaluating after each; return the History.

    ``optimizer`` is a name for build_optimizer (with ``optimizer_options``) or a ready optimizer.
    Each callback receives the EpochResult; one returning True stops training after that epoch.
    Raises TrainingDiverged as soon as an epoch's training loss is NaN, infinite or above
    ``divergence_threshold`` (a dead network can keep a huge loss finite forever). ``lr_schedule``
    'cosine' anneals the learning rate from ``lr`` to 0 over ``num_epochs`` (stepped after each epoch);
    'one_cycle' warms up to ``lr`` and anneals over every batch of ``num_epochs`` (the loader needs a length).

    Speed knobs (trainlib.speed.SpeedKnobs): ``precision`` 'bf16'/'fp16' trains under torch.autocast (fp16 with
    a gradient scaler); ``compile`` trains torch.compile(model, mode=``compile_mode``) (its compile time falls in
    the first epochs' epoch_seconds); ``channels_last`` stores 2-D convolution inputs and weights NHWC;
    ``cudnn_benchmark`` sets torch.backends.cudnn.benchmark on CUDA. ``model`` itself holds the trained weights.
    """
    check_positive_int("num_epochs", num_epochs)
    check_positive("lr", lr)
    device = resolve_device(device)
    speed = SpeedKnobs(precision, compile, compile_mode, channels_last, cudnn_benchmark)
    runnable = speed.prepare(model, device)  # checks the knobs against the device and model first
    scaler = speed.grad_scaler(device)
    criterion = criterion or nn.CrossEntropyLoss()
    if isinstance(optimizer, str):
        optimizer = build_optimizer(optimizer, model.parameters(), lr, **(optimizer_options or {}))
    each_batch = lr_schedule in BATCH_SCHEDULES
    steps_per_epoch = len(train_loader) if each_batch and hasattr(train_loader, "__len__") else None
    schedule = build_lr_schedule(lr_schedule, optimizer, num_epochs, steps_per_epoch)
    batch_schedule = schedule if each_batch else None
    history = History()
    for epoch in range(1, num_epochs + 1):
        synchronize(device)
        started = time.perf_counter()
        train_loss, samples = _train_epoch(
            runnable, train_loader, criterion, optimizer, device, batch_schedule, speed=speed, scaler=scaler
        )
        synchronize(device)
        epoch_seconds = time.perf_counter() - started
        if schedule is not None and not each_batch:
            schedule.step()
        if not math.isfinite(train_loss) or (divergence_threshold is not None and train_loss > divergence_threshold):
            raise TrainingDiverged(epoch, train_loss, divergence_threshold)
        val_loss, val_accuracy = evaluate_model(runnable, val_loader, criterion, device, speed=speed)
        result = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            epoch_seconds=epoch_seconds,
            samples_per_second=samples / epoch_seconds,
        )
        history.append(result)
        stop_requests = [bool(callback(result)) for callback in callbacks]
        if any(stop_requests):
            history.stopped_early = True
            break
    return history
