"""make bench-device's CPU path: its three parts run here (CUDA cases skipped), merge into one JSON, and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainlib.bench_report import write_reports

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: on a GPU machine the CUDA grid would run")
def test_bench_device_runs_every_part_and_writes_one_json_the_report_reads(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    small = ["--in-memory-samples", "250", "--image-samples", "16", "--rounds", "1", "--knob-batch-sizes", "32 128"]
    small += ["--max-rounds", "1"]
    small += ["--guard-epochs", "1", "--workers", "0"]

    result = subprocess.run(
        [sys.executable, "tools/bench_device.py", "--out", str(out), "--", *small],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,  # a bound against hangs only
        check=False,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "knobs: pytest exited 0; guard: pytest exited 0; workers: pytest exited 0" in result.stdout
    names = {bench["name"] for bench in json.loads(out.read_text())["benchmarks"]}
    assert names == {
        "test_knob_epoch[cpu-mnist1d-batch_32-fp32-eager]",
        "test_knob_epoch[cpu-mnist1d-batch_128-fp32-eager]",
        "test_knob_epoch[cpu-images-batch_32-fp32-eager]",
        "test_knob_epoch[cpu-images-batch_128-fp32-eager]",
        "test_time_to_target[cpu-fp32-eager]",
        "test_epoch_throughput[cpu-in_memory-torch_loader-0_workers]",
    }
    assert "CUDA is not available on this machine" in result.stdout  # the CUDA cases were there, and skipped

    report = write_reports(out, tmp_path / "report", track=False).markdown.read_text()
    assert "| mnist1d | 32 | " in report and "| images | 128 | " in report
    assert "CUDA not measured in this run (no GPU here)" in report


def test_bench_device_starts_no_part_once_its_time_cap_is_spent(tmp_path: Path) -> None:
    out = tmp_path / "device.json"

    result = subprocess.run(
        [sys.executable, "tools/bench_device.py", "--out", str(out), "--time-cap", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert result.returncode == 1, result.stdout[-3000:]
    for part in ("knobs", "guard", "workers"):
        assert f"{part}: not started, the time cap was spent" in result.stdout
    assert "no results" in result.stderr and not out.exists()
