"""Model factories as a user writes them: factory(input_shape, num_classes, **options) -> nn.Module."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 8) -> nn.Module:
    """A small 2-D CNN for (channels, height, width) images."""
    channels, height, width_px = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * height * width_px, num_classes),
    )


def flat_64(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Expects 64 flat features whatever the data says: fails on (1, 8, 8) images."""
    return nn.Linear(64, num_classes)


def three_logits(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Ignores num_classes."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(3))


def not_a_module(input_shape: tuple[int, ...], num_classes: int) -> dict:
    return {"layers": 2}


def raises(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    raise ValueError("width must be even")


class FailsOnce(nn.Module):
    """Raises in training mode for the second model this process builds (the first is the pre-study check)."""

    built = 0

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        FailsOnce.built += 1
        self.fails = FailsOnce.built == 2
        self.linear = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training and self.fails:
            raise RuntimeError("CUDA-style failure inside the user's forward")
        return self.linear(inputs.flatten(1))


LABEL = 1  # a module-level constant: not callable
