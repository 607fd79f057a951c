"""Tracking overhead: the same sweep with MLflow tracking on and with --no-tracking, side by side.

Runs `trainlib sweep` as a user would (whole-command wall time), alternating the two modes so machine
noise hits both alike, each repeat on a fresh study name in a warm store. Prints and saves the ratio.

    .venv/bin/python bench/tracking_overhead.py --n-trials 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_sweep(config: str, study: str, extra: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one `trainlib sweep` command."""
    command = [sys.executable, "-m", "trainlib", "sweep", config, "--study-name", study, "--no-progress", *extra]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/mnist1d_cnn.toml")
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/tracking_overhead.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trainlib-overhead-") as folder:
        env = {**os.environ, "TRAINLIB_MLRUNS_DIR": folder}
        env.pop("MLFLOW_TRACKING_URI", None)
        flags = ["--n-trials", str(args.n_trials)] + (["--epochs", str(args.epochs)] if args.epochs else [])
        timed_sweep(args.config, "warm-up", ["--n-trials", "1", "--epochs", "1"], env)  # create the stores once
        tracked, untracked = [], []
        for repeat in range(args.repeats):
            order = [("on", tracked), ("off", untracked)]
            for mode, times in order if repeat % 2 == 0 else order[::-1]:
                extra = flags if mode == "on" else [*flags, "--no-tracking"]
                times.append(timed_sweep(args.config, f"overhead-{mode}-{repeat}", extra, env))
                print(f"repeat {repeat} tracking {mode}: {times[-1]:.1f} s", flush=True)

    ratio = statistics.median(tracked) / statistics.median(untracked)
    result = {
        "config": args.config,
        "n_trials": args.n_trials,
        "epochs": args.epochs,
        "tracking_on_seconds": tracked,
        "tracking_off_seconds": untracked,
        "median_ratio": ratio,
        "overhead_percent": (ratio - 1) * 100,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"tracking on / off, median wall time: {ratio:.4f} ({(ratio - 1) * 100:+.2f}%)")


if __name__ == "__main__":
    main()
