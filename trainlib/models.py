"""Models by name or import path: the built-in MLP and 1-D CNN, and the user's own factories, in one registry."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlib.errors import InvalidArgument, check_choice
from trainlib.factories import check_options, describe, is_reference, resolve_reference


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
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width, length = in_channels, in_features
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


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, added to a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2) for (batch, channels, height, width) images.

    A 3x3 stem, one stage per entry of ``channels`` (the first at full resolution, each later one halving it)
    of ``blocks`` basic blocks, global average pooling and a linear head. channels (16, 32, 64) with 1 block
    per stage is ResNet-8 (78k parameters); 3 blocks per stage is ResNet-20.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: Sequence[int] = (16, 32, 64), blocks: int = 1
    ) -> None:
        super().__init__()
        width = channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages: list[nn.Module] = []
        for index, out_channels in enumerate(channels):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(width, out_channels, stride))
                width = out_channels
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden_sizes", "dropout", "batch_norm"),
    "cnn1d": ("channels", "kernel_size", "dropout", "batch_norm"),
    "resnet": ("channels", "blocks"),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_builtin_options(name: str, options: dict[str, Any]) -> None:
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
    blocks = options.get("blocks", 1)
    if not _is_int(blocks) or blocks < 1:
        raise InvalidArgument(f"blocks must be a positive integer, got {blocks!r}")
    kernel_size = options.get("kernel_size", 1)
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise InvalidArgument(f"kernel_size must be a positive odd integer, got {kernel_size!r}")


def mlp(input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """The built-in MLP for samples of any shape (flattened)."""
    _check_builtin_options("mlp", options)
    return MLP(math.prod(input_shape), num_classes, **options)


def cnn1d(input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """The built-in 1-D CNN for samples of shape (length,) or (channels, length)."""
    _check_builtin_options("cnn1d", options)
    if len(input_shape) not in (1, 2):
        raise InvalidArgument(
            f"model 'cnn1d' takes samples of shape (length,) or (channels, length), not {input_shape}; "
            "use 'mlp' or a model factory of your own"
        )
    in_channels, length = (1, *input_shape) if len(input_shape) == 1 else input_shape
    return CNN1D(length, num_classes, in_channels=in_channels, **options)


def resnet(input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """The built-in CIFAR-style ResNet for images of shape (channels, height, width)."""
    _check_builtin_options("resnet", options)
    if len(input_shape) != 3:
        raise InvalidArgument(
            f"model 'resnet' takes images of shape (channels, height, width), not {input_shape}; "
            "use 'cnn1d' or 'mlp' for signals and flat features"
        )
    return ResNet(input_shape[0], num_classes, **options)


# The registry: built-in names are entries beside which a study may name its own "package.module:function".
MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn1d": cnn1d, "resnet": resnet}
# A sample shape each built-in model takes, to check a study's model options before its data is loaded.
EXAMPLE_INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (64,), "cnn1d": (64,), "resnet": (3, 32, 32)}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def model_factory(model: str, search_dirs: Sequence[Path] = ()) -> Callable[..., nn.Module]:
    """The factory a built-in name or an import path ('package.module:function') stands for."""
    if is_reference(model):
        return resolve_reference(model, "model.factory", search_dirs)
    check_choice("model", model, MODEL_NAMES)
    return MODELS[model]


def build_model(
    model: str,
    input_shape: int | Sequence[int],
    num_classes: int,
    *,
    search_dirs: Sequence[Path] = (),
    **options: Any,
) -> nn.Module:
    """Build ``model`` (a built-in name or 'package.module:function') for samples of ``input_shape``.

    A factory is called as ``factory(input_shape, num_classes, **options)`` and must return an nn.Module;
    an int ``input_shape`` means flat samples of that many features.
    """
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(size) for size in input_shape)
    factory = model_factory(model, search_dirs)
    built_in = not is_reference(model)
    if not built_in:
        check_options(factory, "model.factory", model, (shape, num_classes), options)
    try:
        built = factory(shape, num_classes, **options)
    except InvalidArgument:
        raise
    except Exception as error:
        if built_in:
            raise InvalidArgument(f"invalid options for model {model!r}: {error}") from None
        raise InvalidArgument(
            f"model.factory {model!r} (called with input_shape {shape}, num_classes {num_classes}, options {options}) "
            f"raised {describe(error)}"
        ) from None
    if not isinstance(built, nn.Module):
        raise InvalidArgument(f"model.factory {model!r} returned a {type(built).__name__}; expected a torch.nn.Module")
    return built
