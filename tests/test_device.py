"""Tests for trainlib.device: devices resolve to what exists here, never silently to something else."""

import os
import subprocess
import sys

import pytest
import torch

from trainlib import InvalidArgument, device_name, resolve_device
from trainlib.device import DEVICE_CHOICES, round_robin_device, visible_gpu_count

mps_available = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def test_auto_picks_the_best_device_present():
    if torch.cuda.is_available():
        expected = "cuda"
    elif mps_available:
        expected = "mps"
    else:
        expected = "cpu"

    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", torch.device("cpu")], ids=repr)
def test_cpu_resolves_to_cpu(spec):
    assert resolve_device(spec) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3", torch.device("cuda")], ids=repr)
def test_cuda_without_cuda_raises(spec):
    with pytest.raises(InvalidArgument, match="CUDA is not available"):
        resolve_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resolves_when_present():
    assert resolve_device("cuda").type == "cuda"
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert device_name(resolve_device("cuda")) == torch.cuda.get_device_name(0)


def test_cuda_index_beyond_the_devices_present_raises():
    with pytest.raises(InvalidArgument, match="cuda:99"):
        resolve_device("cuda:99")


@pytest.mark.skipif(mps_available, reason="MPS is present here")
def test_mps_without_mps_raises():
    with pytest.raises(InvalidArgument, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("spec", ["tpu", "gpu", "", "meta", "xla", 0], ids=repr)
def test_unknown_device_names_the_value_and_the_choices(spec):
    with pytest.raises(ValueError) as raised:
        resolve_device(spec)

    message = str(raised.value)
    assert repr(spec) in message
    for choice in DEVICE_CHOICES:
        assert choice in message


def test_cpu_helpers_never_initialise_cuda():
    """Timing a CPU epoch must not start a CUDA context (seconds, and GPU memory) on a machine that has one."""
    import subprocess
    import sys

    check = (
        "import torch; from trainlib import synchronize, device_name; cpu = torch.device('cpu'); synchronize(cpu); "
        "print(device_name(cpu), torch.cuda.is_initialized())"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=True)

    assert result.stdout.split() == ["cpu", "False"]


@pytest.mark.parametrize(
    ("spec", "gpus", "expected"),
    [
        ("cuda", 2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]),
        ("auto", 3, ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]),
        ("auto", 0, ["auto"] * 5),  # no GPU visible: 'auto' resolves as usual (mps or cpu)
        ("cuda:1", 4, ["cuda:1"] * 5),  # an explicit device is every worker's
        ("cpu", 4, ["cpu"] * 5),
    ],
)
def test_sweep_workers_get_their_own_gpu_round_robin(spec: str, gpus: int, expected: list[str]) -> None:
    assert [round_robin_device(spec, worker, gpus) for worker in range(5)] == expected


def test_visible_gpus_are_those_cuda_visible_devices_names() -> None:
    hidden = subprocess.run(
        [sys.executable, "-c", "from trainlib.device import visible_gpu_count; print(visible_gpu_count())"],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert hidden.stdout.strip() == "0"
    assert visible_gpu_count() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
