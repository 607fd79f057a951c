"""Measure make bench-compare's gate: its false-alarm rate on identical code and its detection of real slowdowns.

Runs the bench (``pytest bench`` with --bench-args) again and again on this checkout and judges pairs of runs with
``trainlib bench-compare``, exactly what make bench-compare runs:

- identical: runs 0..N of unchanged code on an idle machine; run i+1 judged against run i (N comparisons, each
  with another baseline, so one unlucky baseline cannot decide them all). Every "regression" is a false alarm.
- busy: N runs while --busy processes spin on the CPU, each judged against idle run i: every pass is a miss.
- planted: N runs with every timed round made 10% (--planted) longer by work (TRAINLIB_BENCH_PLANTED_SLOWDOWN,
  bench/interleave.py), each judged against idle run i: every pass is a miss.

Writes every run's JSON and a summary (JSON and one line per condition) to --out.

    .venv/bin/python tools/gate_rates.py --runs 10 --out tools/results/gate
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH_ARGS = "--quick -k 'throughput or parity or (knob and mnist1d and not bf16)'"


def spin() -> None:
    while True:
        pass


def bench_run(json_path: Path, bench_args: str, environment: dict[str, str]) -> None:
    command = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider", f"--benchmark-json={json_path}"]
    subprocess.run([*command, *shlex.split(bench_args)], cwd=ROOT, env=environment, check=True, capture_output=True)


def judge(baseline: Path, candidate: Path, min_effect: float) -> dict:
    """trainlib bench-compare with its defaults (but --min-effect): what make bench-compare decides."""
    command = [sys.executable, "-m", "trainlib", "bench-compare", str(baseline), str(candidate)]
    result = subprocess.run([*command, "--min-effect", str(min_effect)], capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"bench-compare exited {result.returncode}: {result.stderr}")
    suite = next(line for line in result.stdout.splitlines() if line.startswith("code"))
    machine = next(line for line in result.stdout.splitlines() if line.startswith("machine"))
    slower = [
        line.split()[0] for line in result.stdout.splitlines() if line.startswith("test_") and line.endswith(" slower")
    ]
    return {
        "baseline": baseline.name,
        "candidate": candidate.name,
        "regression": result.returncode == 1,
        "suite": suite,
        "machine": machine,
        "slower_cases": slower,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="Comparisons per condition (10).")
    parser.add_argument(
        "--bench-args", default=DEFAULT_BENCH_ARGS, help=f"pytest bench options ({DEFAULT_BENCH_ARGS})."
    )
    parser.add_argument("--min-effect", type=float, default=0.05)
    parser.add_argument("--planted", type=float, default=0.10, help="Planted slowdown (0.10: 10%%).")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="CPU-spinning processes (all cores).")
    parser.add_argument("--conditions", default="identical,busy,planted")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    conditions = args.conditions.split(",")
    environment = {**os.environ}
    environment.pop("TRAINLIB_BENCH_PLANTED_SLOWDOWN", None)
    started = time.monotonic()
    idle = [args.out / f"idle-{index:02d}.json" for index in range(args.runs + 1)]
    for path in idle:
        if not path.exists():
            bench_run(path, args.bench_args, environment)
            print(f"{time.monotonic() - started:6.0f}s {path.name}", flush=True)
    summary: dict[str, list[dict]] = {}
    if "identical" in conditions:
        summary["identical"] = [judge(idle[i], idle[i + 1], args.min_effect) for i in range(args.runs)]
    if "busy" in conditions:
        summary["busy"] = []
        for index in range(args.runs):
            path = args.out / f"busy-{index:02d}.json"
            if not path.exists():
                spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
                for spinner in spinners:
                    spinner.start()
                try:
                    bench_run(path, args.bench_args, environment)
                finally:
                    for spinner in spinners:
                        spinner.terminate()
                print(f"{time.monotonic() - started:6.0f}s {path.name}", flush=True)
            summary["busy"].append(judge(idle[index], path, args.min_effect))
    if "planted" in conditions:
        summary["planted"] = []
        planted = {**environment, "TRAINLIB_BENCH_PLANTED_SLOWDOWN": str(args.planted)}
        for index in range(args.runs):
            path = args.out / f"planted-{index:02d}.json"
            if not path.exists():
                bench_run(path, args.bench_args, planted)
                print(f"{time.monotonic() - started:6.0f}s {path.name}", flush=True)
            summary["planted"].append(judge(idle[index], path, args.min_effect))
    (args.out / "summary.json").write_text(json.dumps({"bench_args": args.bench_args, **summary}, indent=1))
    for condition, judged in summary.items():
        alarms = sum(item["regression"] for item in judged)
        label = "false alarms" if condition == "identical" else "regressions caught"
        print(f"{condition}: {alarms} of {len(judged)} {label} (min effect {args.min_effect:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
