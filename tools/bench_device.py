"""make bench-device: the CUDA grid on a bare GPU machine, in at most 8 minutes, as one pytest-benchmark JSON.

The machine needs torch (a CUDA build), numpy, pytest and pytest-benchmark; MLflow, Optuna and pandas are not used.
Missing packages (mnist1d) are installed from wheels carried in .whl/ (`make device-wheels` downloads them here)
into a folder on PYTHONPATH; trainlib itself runs from this checkout. Three parts run one after another, each
within what is left of the time cap, so that a slow part still leaves the others' figures:

  1. speed knobs: every CUDA knob case, and fp32 eager on this machine's CPU per batch size (CUDA/CPU speed-up);
  2. the accuracy guard on CUDA, and fp32 eager on the CPU;
  3. the worker and memory grid on CUDA, and its CPU baseline case.

The merged JSON goes to bench/results/device-<UTC time>.json (or --out); `trainlib bench-report FILE` on any
machine with trainlib installed turns it into the report. Standard library only: it must run before anything is
installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
CARRIED_PACKAGES = ("mnist1d",)  # what a bare GPU machine lacks; each must have a wheel in .whl/
TIME_CAP_SECONDS = 8 * 60
# Interleaved groups stop adapting after 20 s (at least --rounds cycles still run): the parts fit the time cap.
ROUND_DEFAULTS = ["--group-seconds", "20", "--max-rounds", "15"]
PARTS = (
    ("knobs", ["bench/test_speed_knobs.py", "-k", "cuda or (cpu and fp32-eager and not channels_last)"]),
    ("guard", ["bench/test_accuracy_guard.py", "-k", "cuda or cpu-fp32-eager"]),
    ("workers", ["bench/test_throughput.py", "-k", "cuda or cpu-in_memory-torch_loader-0_workers"]),
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
    """One pytest run of the bench writing ``json_path``; its outcome in words."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        *selection,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        *ROUND_DEFAULTS,
        *extra,
    ]
    print(f"bench-device: part {name}, at most {seconds:.0f} s: {' '.join(command[3:])}", flush=True)
    try:
        completed = subprocess.run(command, cwd=ROOT, env=env, timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        return f"{name}: stopped at the time cap, its figures lost"
    if not json_path.exists():
        return f"{name}: pytest exited {completed.returncode} without results"
    return f"{name}: pytest exited {completed.returncode}"


def merge(parts: list[Path], out: Path) -> int:
    """One pytest-benchmark document holding every part's cases (machine and commit info of the first)."""
    documents = [json.loads(path.read_text()) for path in parts if path.exists()]
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
    deadline = time.monotonic() + args.time_cap
    outcomes, files = [], []
    for name, selection in PARTS:
        left = deadline - time.monotonic()
        if left < 10:
            outcomes.append(f"{name}: not started, the time cap was spent")
            continue
        files.append(scratch / f"{name}.json")
        outcomes.append(run_part(name, selection, args.pytest_args, files[-1], left, environment))
    cases = merge(files, out)
    print("bench-device: " + "; ".join(outcomes))
    if not cases:
        print("bench-device: no results", file=sys.stderr)
        return 1
    print(f"bench-device: {cases} cases in {out}; `trainlib bench-report {out}` makes the report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
