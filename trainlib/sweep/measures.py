"""What a trial measures besides its best epoch: training time, throughput, time to target, peak memory.

A trial's objectives are read from here (sweep/objective.py); the record is kept on the Optuna trial as a user
attribute, so that the report, the Pareto front and the model pick read every trial the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainlib.device import peak_memory_mb, reset_peak_memory
from trainlib.engine import EpochResult

MEASURES_ATTR = "trainlib_measures"  # the trial's TrialMeasures.as_dict(), set when it completes


class TrialMeasures:
    """Engine callback adding up one trial's epochs.

    ``train_seconds`` counts training epochs only (device synchronized, evaluation excluded), as the engine
    times them. ``time_to_target`` follows DAWNBench: the training seconds until the validation accuracy first
    reached ``target_accuracy``; None while it has not.
    """

    def __init__(self, device: torch.device, target_accuracy: float | None) -> None:
        self.device = device
        self.target_accuracy = target_accuracy
        self.epochs = 0
        self.train_seconds = 0.0
        self.samples = 0.0
        self.best_val_accuracy = -math.inf
        self.best_val_loss = math.inf
        self.time_to_target: float | None = None
        self.target_epoch: int | None = None
        self.peak_memory_mb: float | None = None
        reset_peak_memory(device)

    def update(self, result: EpochResult) -> None:
        self.epochs = result.epoch
        self.train_seconds += result.epoch_seconds
        self.samples += result.samples_per_second * result.epoch_seconds
        self.best_val_accuracy = max(self.best_val_accuracy, result.val_accuracy)
        self.best_val_loss = min(self.best_val_loss, result.val_loss)
        target = self.target_accuracy
        if target is not None and self.time_to_target is None and result.val_accuracy >= target:
            self.time_to_target, self.target_epoch = self.train_seconds, result.epoch
        self.peak_memory_mb = peak_memory_mb(self.device)

    def as_dict(self) -> dict[str, float]:
        """Every figure measured, by metric name (time_to_target and peak_memory_mb only where there is one)."""
        measured = {
            "val_accuracy": self.best_val_accuracy,
            "val_loss": self.best_val_loss,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.samples / self.train_seconds if self.train_seconds > 0 else 0.0,
            "time_to_target": self.time_to_target,
            "peak_memory_mb": self.peak_memory_mb,
        }
        return {name: value for name, value in measured.items() if value is not None}

    def target_note(self) -> str | None:
        """One line on the target accuracy for the trial's run (None without a target)."""
        if self.target_accuracy is None:
            return None
        if self.time_to_target is None:
            return (
                f"not reached in {self.epochs} epochs: best val_accuracy {self.best_val_accuracy:.4f} "
                f"< target {self.target_accuracy:g}"
            )
        return f"reached at epoch {self.target_epoch} after {self.time_to_target:.2f} training seconds"


def measures_of(trial: Any) -> dict[str, float]:
    """The measures a finished trial recorded (empty for trials of studies older than this record)."""
    return dict(trial.user_attrs.get(MEASURES_ATTR) or {})
