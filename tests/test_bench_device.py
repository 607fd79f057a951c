"""make bench-device's CPU path: its three parts run here (CUDA cases skipped), merge into one JSON, and report."""

from __future__ import annotations

import importlib.util
import json
import os
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
    for part in ("sizes", "knobs-eager", "workers", "guard-eager"):
        assert f"{part}: pytest exited 0;" in result.stdout, result.stdout[-3000:]
    for part in ("compiled-mnist1d", "compiled-images", "guard-compiled"):  # CUDA-only parts: every case skipped here
        assert f"{part}: pytest exited 0 without results" in result.stdout, result.stdout[-3000:]
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
    for part in (
        "sizes",
        "knobs-eager",
        "workers",
        "guard-eager",
        "compiled-mnist1d",
        "compiled-images",
        "guard-compiled",
    ):
        assert f"{part}: not started, the time cap was spent" in result.stdout
    assert "no results" in result.stderr and not out.exists()


BLOCKED_PART = """
import pathlib, time

def test_finishes(benchmark):
    benchmark(sum, [1, 2, 3])

def test_blocks(benchmark):
    pathlib.Path({started!r}).touch()
    time.sleep(3600)
"""

PART_OPTIONS = """
def pytest_addoption(parser):
    for name in {names!r}:
        parser.addoption(name)
"""


def test_a_part_past_its_share_is_interrupted_and_keeps_its_finished_cases(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_device", REPO / "tools" / "bench_device.py")
    bench_device = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_device)
    started = tmp_path / "second-test-started"
    part = tmp_path / "part"
    part.mkdir()
    options = [argument for argument in bench_device.GRID_DEFAULTS if argument.startswith("--")]
    (part / "conftest.py").write_text(PART_OPTIONS.format(names=options))  # the bench options every part gets
    (part / "test_part.py").write_text(BLOCKED_PART.format(started=str(started)))
    json_path = tmp_path / "part.json"

    # 45 s: many times what pytest needs to start and run the first test (2-4 s here, idle or busy; the part
    # imports no torch); the second test blocks until interrupted.
    outcome = bench_device.run_part("blocked", [str(part), "--rootdir", str(part)], [], json_path, 45, {**os.environ})

    assert started.exists()  # the interrupt came while the second test ran, after the first had finished
    assert outcome == "blocked: interrupted at its share of the time cap, 1 finished case(s) kept"
    names = [bench["name"] for bench in json.loads(json_path.read_text())["benchmarks"]]
    assert names == ["test_finishes"]
