"""A study's headline over several study seeds: the chosen model's held-out test accuracy, mean and spread.

One study's result depends on its sampler's seed (and, through pruning, on floating-point details of the
machine); a headline from one seed is one draw. This runs the same study file with study seeds 0..N-1, each
as `trainlib sweep` in a fresh store, and reports each seed's chosen trial, validation and test accuracy and
wall time, then the mean and sample standard deviation of the test accuracy.

    .venv/bin/python tools/study_seeds.py experiments/mnist1d_cnn.toml --seeds 3
    .venv/bin/python tools/study_seeds.py experiments/mnist1d_pareto.toml --seeds 1 --flags "--n-trials 8"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def run_seed(config: Path, seed: int, mlruns: Path, flags: list[str]) -> dict:
    """One `trainlib sweep` of ``config`` with study seed ``seed`` in a fresh store; what its parent run records."""
    study = f"{config.stem}-seed{seed}"
    command = [sys.executable, "-m", "trainlib.cli", "sweep", str(config), "--study-seed", str(seed)]
    command += ["--study-name", study, "--no-progress", *flags]
    env = {**os.environ, "TRAINLIB_MLRUNS_DIR": str(mlruns / study)}
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"seed {seed} failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{mlruns / study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], "tags.`trainlib.role` = 'study'")
    parent = runs[0]
    chosen = parent.data.tags["best_trial_number"]
    trial = client.search_runs(
        [experiment.experiment_id], f"tags.`trainlib.role` = 'trial' and tags.`optuna.trial_number` = '{chosen}'"
    )[0]
    return {
        "seed": seed,
        "seconds": round(seconds, 1),
        "chosen_trial": int(chosen),
        "selection_rule": parent.data.tags.get("trainlib.selection_rule"),
        "val_accuracy": trial.data.metrics.get("best_val_accuracy"),
        "reevaluated_val_accuracy_mean": trial.data.metrics.get("reevaluated_val_accuracy_mean"),
        "train_seconds": trial.data.metrics.get("train_seconds"),
        "test_accuracy": parent.data.metrics["test_accuracy"],
        "n_complete": parent.data.metrics.get("n_complete"),
        "n_pruned": parent.data.metrics.get("n_pruned"),
        "params": {key: value for key, value in trial.data.params.items() if key != "trial_number"},
        "summary": finished.stdout.strip().splitlines()[-12:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flags", default="", help="extra `trainlib sweep` flags, quoted as one argument")
    parser.add_argument("--out", type=Path, help="JSON file [default: tools/results/seeds-<config stem>.json]")
    options = parser.parse_args()
    out = options.out or ROOT / "tools" / "results" / f"seeds-{options.config.stem}.json"
    flags = shlex.split(options.flags)
    with tempfile.TemporaryDirectory(prefix="trainlib-seeds-") as folder:
        results = []
        for seed in range(options.seeds):
            results.append(run_seed(options.config.resolve(), seed, Path(folder), flags))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "summary"}), flush=True)
    accuracies = [result["test_accuracy"] for result in results]
    report = {
        "config": str(options.config),
        "flags": flags,
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), {platform.processor() or platform.machine()}",
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "seeds": results,
        "test_accuracy_mean": statistics.fmean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    spread = f" +/- {report['test_accuracy_std'] * 100:.2f}" if report["test_accuracy_std"] is not None else ""
    mean = report["test_accuracy_mean"] * 100
    print(f"test accuracy over {len(results)} study seeds: {mean:.2f}%{spread} (wrote {out})")


if __name__ == "__main__":
    main()
