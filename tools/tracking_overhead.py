"""Tracking overhead: what MLflow tracking adds to a sweep, measured two ways in one run.

1. Accounting (in-process, low noise). The default sweep runs as `trainlib sweep` would, in a fresh process,
   with clocks on the tracker: wall and CPU time of the sweep's thread inside every tracker entry point (what
   training waited for), and CPU time of the tracking thread's jobs.
   Two overheads, against the untracked sweep's estimated time (wall time - what training waited for):
   - waited: what training waited for the tracker;
   - CPU: all CPU the tracking took, in every thread, as if every second of it were taken from training
     (an upper bound: on a machine with a spare core, the other threads' work costs the sweep nothing).
   Run on a fresh store (its first sweep creates and migrates the sqlite database) and on the existing store.
2. Wall time (end to end, noisy on a shared VM). The same `trainlib sweep` command with tracking on and with
   `--no-tracking`, alternated so machine noise hits both alike, each on a fresh study in a warm store.

    .venv/bin/python tools/tracking_overhead.py                      # default study: accounting + 2 pairs
    .venv/bin/python tools/tracking_overhead.py --n-trials 8 --pairs 0
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRACKER_ENTRY_POINTS = (
    "__init__",
    "start_sweep",
    "end_sweep",
    "flush",
    "log_study_metrics",
    "start_trial",
    "log_trial_result",
    "end_trial",
    "load_trial_weights",
    "log_summary",
    "log_best_model",
)


class TrackerClock:
    """Where tracking spends time: the sweep's thread inside the tracker, and the other threads' CPU."""

    def __init__(self) -> None:
        self.waited: dict[str, float] = defaultdict(float)  # wall seconds of the sweep's thread, per entry point
        self.cpu: dict[str, float] = defaultdict(float)  # CPU seconds of the sweep's thread, per entry point
        self.calls: dict[str, int] = defaultdict(int)
        self.background_cpu: dict[str, float] = defaultdict(float)  # CPU seconds of other threads, per kind
        self._depth = 0

    @contextlib.contextmanager
    def timing(self, name: str) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._depth += 1
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:  # nested entry points are counted once, in the outermost
                self.waited[name] += time.perf_counter() - wall
                self.cpu[name] += time.thread_time() - cpu
                self.calls[name] += 1

    def wrap(self, owner: type, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.timing(label):
                return original(*args, **kwargs)

        setattr(owner, name, timed)

    def wrap_background(self, owner: object, name: str, kind: str) -> None:
        """CPU seconds of ``owner.name`` when called off the sweep's thread."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                return original(*args, **kwargs)
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.background_cpu[kind] += time.thread_time() - started

        setattr(owner, name, timed)


def instrument(clock: TrackerClock) -> None:
    """Put the clocks on every tracker entry point, each epoch's log call, and the tracking thread's jobs."""
    from trainlib.tracking import MlflowTracker
    from trainlib.tracking.runs import RunLog, TrackingThread

    for name in TRACKER_ENTRY_POINTS:
        clock.wrap(MlflowTracker, name, name)
    clock.wrap(RunLog, "log_epoch", "log_epoch")
    clock.wrap_background(TrackingThread, "_guarded", "tracking thread")


def account_one(config: str, study: str, n_trials: int | None, epochs: int | None) -> dict[str, Any]:
    """One tracked sweep in this process, with the tracker's time accounted; returns the figures."""
    from trainlib.sweep import load_config, plan_sweep, run_sweep

    clock = TrackerClock()
    instrument(clock)
    overrides = {"study.name": ("--study-name", study), "training.epochs": ("--epochs", epochs)}
    settings = load_config(config).with_overrides(overrides)
    plan = plan_sweep(settings, config, n_trials=n_trials)
    started = time.perf_counter()
    summary = run_sweep(plan, show_progress=False)
    wall = time.perf_counter() - started
    waited = sum(clock.waited.values())
    cpu = sum(clock.cpu.values()) + sum(clock.background_cpu.values())
    untracked_estimate = wall - waited
    return {
        "study": study,
        "trials": summary.counts,
        "wall_seconds": wall,
        "waited_seconds": waited,
        "cpu_seconds": cpu,
        "waited_percent": 100 * waited / untracked_estimate,
        "cpu_percent": 100 * cpu / untracked_estimate,
        "background_cpu_seconds": {kind: round(seconds, 3) for kind, seconds in clock.background_cpu.items()},
        "by_entry_point": {
            name: {
                "waited_seconds": round(waited, 4),
                "cpu_seconds": round(clock.cpu[name], 4),
                "calls": clock.calls[name],
            }
            for name, waited in sorted(clock.waited.items(), key=lambda item: -item[1])
        },
    }


def run_account_process(args: argparse.Namespace, study: str, env: dict[str, str]) -> dict[str, Any]:
    """account_one in a fresh process, as a sweep command would run."""
    command = [sys.executable, str(Path(__file__).resolve()), "--config", args.config, "--_account-one", study]
    command += ["--n-trials", str(args.n_trials)] if args.n_trials else []
    command += ["--epochs", str(args.epochs)] if args.epochs else []
    done = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_sweep(config: str, study: str, extra: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one `trainlib sweep` command."""
    command = [sys.executable, "-m", "trainlib", "sweep", config, "--study-name", study, "--no-progress", *extra]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def wall_time_pairs(args: argparse.Namespace, env: dict[str, str], say: Callable[[str], None]) -> dict[str, Any]:
    flags = (["--n-trials", str(args.n_trials)] if args.n_trials else []) + (
        ["--epochs", str(args.epochs)] if args.epochs else []
    )
    tracked: list[float] = []
    untracked: list[float] = []
    for pair in range(args.pairs):
        order = [("on", tracked), ("off", untracked)]
        for mode, times in order if pair % 2 == 0 else order[::-1]:
            extra = flags if mode == "on" else [*flags, "--no-tracking"]
            times.append(timed_sweep(args.config, f"overhead-{mode}-{pair}", extra, env))
            say(f"wall time, pair {pair}, tracking {mode}: {times[-1]:.1f} s")
    ratios = [on / off for on, off in zip(tracked, untracked, strict=True)]
    return {
        "tracking_on_seconds": tracked,
        "tracking_off_seconds": untracked,
        "pair_ratios": ratios,
        "median_ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/mnist1d_cnn.toml")
    parser.add_argument("--n-trials", type=int, default=None, help="default: the config's n_trials")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's epochs")
    parser.add_argument("--pairs", type=int, default=2, help="tracked/untracked wall-time pairs (0: accounting only)")
    parser.add_argument("--out", default="tools/results/tracking_overhead.json")
    parser.add_argument("--_account-one", dest="account_one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.account_one:  # the child process of run_account_process
        print(json.dumps(account_one(args.config, args.account_one, args.n_trials, args.epochs)))
        return

    def say(line: str) -> None:
        print(line, flush=True)

    with tempfile.TemporaryDirectory(prefix="trainlib-overhead-") as folder:
        env = {**os.environ, "TRAINLIB_MLRUNS_DIR": folder}
        env.pop("MLFLOW_TRACKING_URI", None)
        accounting = {}
        for store in ("fresh store", "existing store"):
            result = run_account_process(args, f"overhead-account-{store.split()[0]}", env)
            accounting[store] = result
            say(
                f"accounting, {store}: wall {result['wall_seconds']:.1f} s; training waited "
                f"{result['waited_seconds']:.2f} s for the tracker ({result['waited_percent']:.2f}%); tracking used "
                f"{result['cpu_seconds']:.2f} s of CPU in all threads ({result['cpu_percent']:.2f}%)"
            )
            for name, figures in result["by_entry_point"].items():
                say(
                    f"    {name:<20} waited {figures['waited_seconds']:7.3f} s, cpu {figures['cpu_seconds']:7.3f} s, "
                    f"{figures['calls']:4d} calls"
                )
            for kind, seconds in result["background_cpu_seconds"].items():
                say(f"    {kind:<20} cpu {seconds:7.3f} s")
        wall = wall_time_pairs(args, env, say) if args.pairs else None

    result = {
        "config": args.config,
        "n_trials": args.n_trials,
        "epochs": args.epochs,
        "host_cpus": os.cpu_count(),
        "accounting": accounting,
        "wall_time": wall,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if wall:
        say(f"wall time, tracking on / off per pair: {', '.join(f'{r:.3f}' for r in wall['pair_ratios'])}")
    say(f"written: {args.out}")


if __name__ == "__main__":
    main()
