"""make bench-device: the CUDA grid on a bare GPU machine, in at most 8 minutes, as one pytest-benchmark JSON.

The machine needs torch (a CUDA build), numpy, pytest and pytest-benchmark; MLflow, Optuna and pandas are not used.
Missing packages (mnist1d) are installed from wheels carried in .whl/ (`make device-wheels` downloads them here)
into a folder on PYTHONPATH; trainlib itself runs from this checkout. The grid runs as parts, one pytest run each,
cheapest first, so that what costs most (torch.compile's compilation) cannot starve the rest:

  1. sizes: fp32 eager at batch sizes 32 and 512, CUDA and this machine's CPU (CUDA/CPU speed-up per batch size);
  2. knobs, eager: every eager CUDA knob setting at batch size 128, and fp32 eager on the CPU;
  3. workers: the worker and memory grid on CUDA, and its CPU baseline case;
  4. guard, eager: time to the target accuracy of each eager CUDA knob setting, and of fp32 eager on the CPU;
  5. compiled, mnist1d: every compiled CUDA knob setting of the 1-D CNN at batch size 128;
  6. compiled, images: every compiled CUDA knob setting of ResNet-8 at batch size 128;
  7. guard, compiled: time to target of each compiled CUDA knob setting.

Each part gets its share (PARTS' weights) of what is left of the time cap, time a part leaves unused passes to
the next ones. A part still running at the end of its share is interrupted like a Ctrl-C: pytest-benchmark still
writes the cases that finished (a group of interleaved cases finishes together or not at all), and the rest are
listed as not measured. Cases of different parts were not interleaved with each other, so the report compares
them unpaired.

The merged JSON goes to bench/results/device-<UTC time>.json (or --out); `trainlib bench-report FILE` on any
machine with trainlib installed turns it into the report. Standard library only: it must run before anything is
installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
CARRIED_PACKAGES = ("mnist1d",)  # what a bare GPU machine lacks; each must have a wheel in .whl/
TIME_CAP_SECONDS = 8 * 60
# The grid cut down to fit the cap: shorter epochs than make bench's (8,000 MNIST-1D and 10,000 CUDA images; 256
# images on the CPU, where ResNet-8 runs at a few hundred images/s), workers 0 2 4, and interleaved groups that stop
# adapting after 20 s (at least --rounds cycles still run). Arguments after -- override these. On an H200 machine
# (2026-11-30), with 1,024 CPU images and 5 rounds, four of the seven parts were still cut short at their shares;
# the weights below follow what each part took there.
GRID_DEFAULTS = [
    *("--in-memory-samples", "10000", "--on-the-fly-samples", "1000"),
    *("--image-samples", "256", "--cuda-image-samples", "10000", "--workers", "0 2 4"),
    *("--group-seconds", "20", "--max-rounds", "10"),
]
CPU_BASELINE = "cpu and fp32-eager and not channels_last"
GRACE_SECONDS = 30  # after the interrupt, for pytest to write the finished cases' JSON
# (name, weight: its share of the time left, roughly its expected cost; pytest selection)
PARTS: tuple[tuple[str, float, list[str]], ...] = (
    ("sizes", 1.5, ["bench/test_speed_knobs.py", "-k", "fp32-eager and not channels_last and not batch_128"]),
    ("knobs-eager", 1.5, ["bench/test_speed_knobs.py", "-k", f"batch_128 and (cuda and eager or {CPU_BASELINE})"]),
    ("workers", 1.5, ["bench/test_throughput.py", "-k", "cuda or cpu-in_memory-torch_loader-0_workers"]),
    ("guard-eager", 0.8, ["bench/test_accuracy_guard.py", "-k", "cuda and eager or cpu-fp32-eager"]),
    ("compiled-mnist1d", 0.8, ["bench/test_speed_knobs.py", "-k", "cuda and mnist1d and batch_128 and compiled"]),
    ("compiled-images", 2.0, ["bench/test_speed_knobs.py", "-k", "cuda and images and batch_128 and compiled"]),
    ("guard-compiled", 0.9, ["bench/test_accuracy_guard.py", "-k", "cuda and compiled"]),
)


def install_missing(site: Path) -> dict[str, str]:
    """Install the carried wheels of missing packages into ``site``; the environment for the bench processes."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    missing = [name for name in CARRIED_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return environment
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        sys.exit(
            f"bench-device: {', '.join(missing)} missing and no wheels in {WHEELS}; run `make device-wheels` on a "
            "machine with internet access and carry .whl/"
        )
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    subprocess.run([*command, "--target", str(site), *map(str, wheels)], check=True)
    environment["PYTHONPATH"] = os.pathsep.join([str(site), environment["PYTHONPATH"]])
    return environment


def run_part(name: str, selection: list[str], extra: list[str], json_path: Path, seconds: float, env: dict) -> str:
    """One pytest run of the bench writing ``json_path``, interrupted after ``seconds``; its outcome in words."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        *selection,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        *GRID_DEFAULTS,
        *extra,
    ]
    print(f"bench-device: part {name}, at most {seconds:.0f} s: {' '.join(command[3:])}", flush=True)
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        returncode = process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # pytest stops like at a Ctrl-C and still writes the finished cases
        try:
            process.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return f"{name}: killed at the time cap, {len(_cases_in(json_path))} finished case(s) kept"
        return f"{name}: interrupted at its share of the time cap, {len(_cases_in(json_path))} finished case(s) kept"
    if not json_path.exists():
        return f"{name}: pytest exited {returncode} without results"
    return f"{name}: pytest exited {returncode}"


def _document(path: Path) -> dict | None:
    """A part's pytest-benchmark document; None where absent or cut short (interrupted while being written)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _cases_in(path: Path) -> list:
    return (_document(path) or {}).get("benchmarks", [])


def merge(parts: list[Path], out: Path) -> int:
    """One pytest-benchmark document holding every part's cases (machine and commit info of the first)."""
    documents = [document for document in map(_document, parts) if document is not None]
    if not documents:
        return 0
    merged = dict(documents[0])
    merged["benchmarks"] = [bench for document in documents for bench in document.get("benchmarks", [])]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1))
    return len(merged["benchmarks"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Merged JSON (default bench/results/device-<UTC time>.json).")
    parser.add_argument("--time-cap", type=float, default=TIME_CAP_SECONDS, help="Seconds for all parts (480).")
    parser.add_argument("pytest_args", nargs="*", help="Passed to every part's pytest (after --), e.g. --rounds 3.")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or ROOT / "bench" / "results" / f"device-{stamp}.json"
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"trainlib-bench-device-{stamp}-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    environment = install_missing(scratch / "site")
    deadline = time.monotonic() + args.time_cap - GRACE_SECONDS  # an interrupted part still ends within the cap
    outcomes, files = [], []
    for index, (name, _, selection) in enumerate(PARTS):
        left = deadline - time.monotonic()
        if left < 1:
            outcomes.append(f"{name}: not started, the time cap was spent")
            continue
        share = left * PARTS[index][1] / sum(weight for _, weight, _ in PARTS[index:])
        files.append(scratch / f"{name}.json")
        outcomes.append(run_part(name, selection, args.pytest_args, files[-1], share, environment))
    cases = merge(files, out)
    print("bench-device: " + "; ".join(outcomes))
    if not cases:
        print("bench-device: no results", file=sys.stderr)
        return 1
    print(f"bench-device: {cases} cases in {out}; `trainlib bench-report {out}` makes the report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
