"""A user's own model, as trainlib's `[model] factory = "digits_models:small_cnn"` calls it.

trainlib calls ``small_cnn(input_shape, num_classes, **options)`` where input_shape is one sample's shape,
(1, 8, 8) here, and the options are the other keys of the study file's [model] table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class RandomShift(nn.Module):
    """Training-time augmentation: shift each image by up to ``pixels`` in x and y (zero fill); identity in eval."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.pixels = pixels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pixels == 0:
            return images
        p = self.pixels
        height, width = images.shape[-2:]
        padded = nn.functional.pad(images, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (images.shape[0], 2), device=images.device)
        rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # (batch, height)
        cols = offsets[:, 1, None] + torch.arange(width, device=images.device)  # (batch, width)
        batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
        # (batch, channels, height, width) gathered at each image's own offset
        return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def small_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    dropout: float = 0.3,
    shift: int = 1,
) -> nn.Module:
    """Two conv blocks (conv-BN-ReLU, max-pool) and a small classifier head, for (channels, height, width) images."""
    if len(input_shape) != 3:
        raise ValueError(f"small_cnn takes images of shape (channels, height, width), got {input_shape}")
    in_channels, height, width = input_shape
    layers: list[nn.Module] = [RandomShift(shift)]
    for out_channels in channels:
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        in_channels, height, width = out_channels, height // 2, width // 2
    layers += [
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(in_channels * height * width, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)
