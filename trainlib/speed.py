"""Speed knobs of a training run: mixed precision, torch.compile, channels_last, cudnn.benchmark.

Each is plain PyTorch (torch.autocast, torch.amp.GradScaler, torch.compile, torch.channels_last). check_speed()
says in one line why a combination cannot run on a device before anything trains; SpeedKnobs.prepare() applies
them to a model. Figures for what they change on this project's machines are in the README (make bench).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from trainlib.errors import InvalidArgument, check_choice

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile's modes; "default" balances compile time against speed, the others are documented by torch.
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CPP_COMPILERS = ("g++", "c++", "clang++")  # what Inductor's C++ backend looks for on the CPU (or $CXX)


@dataclass(frozen=True)
class SpeedKnobs:
    """How a model trains fast: autocast precision, compilation, memory format and cuDNN autotuning.

    ``precision`` 'bf16' or 'fp16' runs forward passes under torch.autocast (fp16 with a gradient scaler);
    ``compile`` wraps the model in torch.compile (``compile_mode``); ``channels_last`` stores 4-D inputs and
    weights NHWC (models with 2-D convolutions); ``cudnn_benchmark`` lets cuDNN time its algorithms (CUDA only).
    """

    precision: str = "fp32"
    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = False
    cudnn_benchmark: bool = False

    def as_keywords(self) -> dict[str, Any]:
        """The knobs as train_model's keyword arguments (precision=..., compile=..., ...)."""
        return asdict(self)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's precision context: torch.autocast for bf16/fp16, nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """fp16 needs its loss scaled so small gradients do not underflow; bf16 has fp32's range and does not."""
        return torch.amp.GradScaler(device.type) if self.precision == "fp16" else None

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Move ``model`` to ``device`` in the chosen memory format; return what to call (compiled or not).

        The returned module shares its parameters with ``model``: read weights from ``model`` itself.
        """
        check_speed(self, device, model)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        model.to(device, memory_format=torch.channels_last) if self.channels_last else model.to(device)
        if not self.compile:
            return model
        return torch.compile(model, mode=None if self.compile_mode == "default" else self.compile_mode)

    def inputs_to(self, inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A batch on ``device`` (NHWC for 4-D batches with channels_last)."""
        if self.channels_last and inputs.dim() == 4:
            return inputs.to(device, memory_format=torch.channels_last, non_blocking=True)
        return inputs.to(device, non_blocking=True)


FP32_EAGER = SpeedKnobs()


def check_speed(knobs: SpeedKnobs, device: torch.device, model: nn.Module | None = None) -> None:
    """Raise InvalidArgument (one line naming the choices) when ``knobs`` cannot run on ``device`` or ``model``."""
    check_choice("precision", knobs.precision, PRECISIONS)
    check_choice("compile_mode", knobs.compile_mode, COMPILE_MODES)
    for name in ("compile", "channels_last", "cudnn_benchmark"):
        if not isinstance(getattr(knobs, name), bool):
            raise InvalidArgument(f"{name} must be true or false, got {getattr(knobs, name)!r}")
    if knobs.precision != "fp32":
        reason = precision_unsupported(knobs.precision, device)
        if reason:
            valid = ", ".join(precisions_on(device))
            raise InvalidArgument(f"precision {knobs.precision!r} {reason}; valid here: {valid}")
    if knobs.compile:
        reason = compile_unsupported(device)
        if reason:
            raise InvalidArgument(f"compile = true {reason}; use compile = false")
    if knobs.channels_last and model is not None and not has_conv2d(model):
        raise InvalidArgument(
            f"channels_last applies to models with 2-D convolutions; {type(model).__name__} has none "
            "(use channels_last = false)"
        )


def precision_unsupported(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` cannot run on ``device``, or None when it can."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            return f"needs a GPU with native bfloat16 (Ampere or newer); {torch.cuda.get_device_name(device)} has none"
        return None
    if device.type == "mps":
        if precision == "bf16" and not _mps_bf16():
            return "needs macOS 14 or newer on MPS"
        return None
    if device.type == "cpu":
        return None  # torch's CPU autocast runs both (bf16 natively where the CPU has AVX512-BF16/AMX)
    return f"is not supported on device type {device.type!r}"


def precisions_on(device: torch.device) -> list[str]:
    """The precisions ``device`` can train in."""
    return [precision for precision in PRECISIONS if precision_unsupported(precision, device) is None]


def _mps_bf16() -> bool:
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
    except (RuntimeError, TypeError):
        return False
    return True


def compile_unsupported(device: torch.device) -> str | None:
    """Why torch.compile cannot compile for ``device`` here, or None when it can."""
    if sys.platform == "win32" and device.type == "cuda":
        return "needs Triton, which torch does not ship for Windows"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "needs Triton (pip install triton) for CUDA"
    if device.type == "cpu" and not cpp_compiler():
        return f"needs a C++ compiler on the CPU ({' or '.join(CPP_COMPILERS)} on PATH, or $CXX); none found"
    return None


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would use on the CPU ($CXX, else the first of CPP_COMPILERS on PATH)."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else list(CPP_COMPILERS)
    return next((found for name in candidates if (found := shutil.which(name))), None)


def has_conv2d(model: nn.Module) -> bool:
    """True when ``model`` holds a 2-D convolution (where channels_last can change anything)."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())
