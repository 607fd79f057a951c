"""Model factory: an MLP for flat features and a 1-D CNN for sequences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from trainlib.errors import InvalidArgument, check_choice


class MLP(nn.Sequential):
    """Fully connected classifier: Linear -> [BatchNorm] -> ReLU -> [Dropout] per hidden layer."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in hidden_sizes:
            layers.append(nn.Linear(width, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CNN1D(nn.Module):
    """1-D convolutional classifier for (batch, length) or (batch, channels, length) input."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 5,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width, length = 1, in_features
        for out_channels in channels:
            layers.append(nn.Conv1d(width, out_channels, kernel_size, stride=2, padding=kernel_size // 2))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out_channels))
            layers.append(nn.ReLU())
            width, length = out_channels, (length + 2 * (kernel_size // 2) - kernel_size) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(width * length, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)  # (batch, length) -> (batch, 1 channel, length)
        return self.head(self.features(x))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn1d": CNN1D}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden_sizes", "dropout", "batch_norm"),
    "cnn1d": ("channels", "kernel_size", "dropout", "batch_norm"),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_model(name: str, in_features: int, num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` ('mlp' or 'cnn1d') for ``in_features`` inputs and ``num_classes`` outputs."""
    check_choice("model", name, MODEL_NAMES)
    unknown = sorted(set(options) - set(MODEL_OPTIONS[name]))
    if unknown:
        raise InvalidArgument(
            f"model {name!r} does not take {', '.join(unknown)}; it accepts: {', '.join(MODEL_OPTIONS[name])}"
        )
    dropout = options.get("dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise InvalidArgument(f"dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(options.get("batch_norm", False), bool):
        raise InvalidArgument(f"batch_norm must be true or false, got {options['batch_norm']!r}")
    for key in ("hidden_sizes", "channels"):
        sizes = options.get(key, [1])
        if not isinstance(sizes, (list, tuple)) or not sizes or not all(_is_int(v) and v > 0 for v in sizes):
            raise InvalidArgument(f"{key} must be a non-empty list of positive integers, got {sizes!r}")
    kernel_size = options.get("kernel_size", 1)
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise InvalidArgument(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    return MODELS[name](in_features, num_classes, **options)
