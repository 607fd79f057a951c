"""Device resolution and synchronisation: the one place that knows about cuda and mps."""

from __future__ import annotations

import torch

from trainlib.errors import InvalidArgument

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' into a torch.device that exists here.

    'auto' picks cuda, then mps, then cpu. Asking for a device that is not present is an
    error, never a silent fallback to the CPU.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise InvalidArgument(f"device must be a string, got {spec!r}; valid choices: {', '.join(DEVICE_CHOICES)}")
    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InvalidArgument(f"unknown device {spec!r}; valid choices: {', '.join(DEVICE_CHOICES)}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidArgument(f"device {spec!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= count:
            raise InvalidArgument(f"device {spec!r} requested but only cuda:0..cuda:{count - 1} exist here")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise InvalidArgument(f"device {spec!r} requested but MPS is not available on this machine")
        return device
    raise InvalidArgument(f"unknown device {spec!r}; valid choices: {', '.join(DEVICE_CHOICES)}")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` so a clock read afterwards counts them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """A human name for the hardware behind ``device`` (GPU model, or 'cpu')."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on ``device`` (CUDA only: elsewhere there is no cheap per-run peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """The most memory tensors held on ``device`` since reset_peak_memory, in MiB; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def visible_gpu_count() -> int:
    """CUDA devices this process may use (torch counts only those CUDA_VISIBLE_DEVICES names)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def round_robin_device(spec: str, worker_index: int, gpu_count: int) -> str:
    """The device sweep worker ``worker_index`` trains on: its own GPU (cuda:index mod count) when the study says
    'auto' or 'cuda' and ``gpu_count`` GPUs are visible; an explicit device ('cpu', 'cuda:1') is every worker's."""
    if spec.strip().lower() in ("auto", "cuda") and gpu_count > 0:
        return f"cuda:{worker_index % gpu_count}"
    return spec
