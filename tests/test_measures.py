"""TrialMeasures: a trial's training seconds, throughput and DAWNBench time to target, from its epochs."""

from __future__ import annotations

import pytest
import torch

from trainlib.engine import EpochResult
from trainlib.sweep.measures import TrialMeasures


def epoch(number: int, accuracy: float, seconds: float, loss: float = 1.0) -> EpochResult:
    return EpochResult(
        number,
        train_loss=loss,
        val_loss=loss,
        val_accuracy=accuracy,
        epoch_seconds=seconds,
        samples_per_second=1000 / seconds,
    )


def test_time_to_target_is_the_training_time_until_the_target_is_first_reached() -> None:
    measures = TrialMeasures(torch.device("cpu"), target_accuracy=0.9)
    for result in (epoch(1, 0.7, 2.0), epoch(2, 0.91, 3.0), epoch(3, 0.85, 4.0), epoch(4, 0.95, 1.0)):
        measures.update(result)

    measured = measures.as_dict()
    assert measured["time_to_target"] == pytest.approx(5.0)  # epochs 1 and 2; later epochs do not move it
    assert measured["train_seconds"] == pytest.approx(10.0)
    assert measured["samples_per_second"] == pytest.approx(4000 / 10.0)
    assert measured["val_accuracy"] == 0.95
    assert measures.target_note() == "reached at epoch 2 after 5.00 training seconds"
    assert "peak_memory_mb" not in measured  # not read on a CPU


def test_a_target_never_reached_is_absent_and_said_so() -> None:
    measures = TrialMeasures(torch.device("cpu"), target_accuracy=0.9)
    measures.update(epoch(1, 0.5, 1.0))
    measures.update(epoch(2, 0.8999, 1.0))

    assert "time_to_target" not in measures.as_dict()
    assert measures.target_note() == "not reached in 2 epochs: best val_accuracy 0.8999 < target 0.9"


def test_without_a_target_there_is_no_time_to_target_and_no_note() -> None:
    measures = TrialMeasures(torch.device("cpu"), target_accuracy=None)
    measures.update(epoch(1, 1.0, 1.0, loss=0.3))
    measures.update(epoch(2, 1.0, 1.0, loss=0.2))

    assert "time_to_target" not in measures.as_dict()
    assert measures.as_dict()["val_loss"] == 0.2
    assert measures.target_note() is None
