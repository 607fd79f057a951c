"""The same two-objective study with and without pruning: its Pareto front, hypervolume and wall time.

Runs `trainlib sweep` on a study file twice in fresh stores, once as written (pruned on the accuracy curve) and
once with `pruner = "none"`, then compares what each found: the front (validation accuracy against training
seconds), its hypervolume against the study's fixed reference point, the trials, the chosen model and the wall
time. Writes a JSON record and one plot with both fronts.

    .venv/bin/python tools/pareto_pruning.py experiments/mnist1d_pareto.toml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainlib.sweep.storage import open_storage  # noqa: E402


def run(config_text: str, name: str, folder: Path) -> dict:
    """One sweep of ``config_text`` as study ``name`` in a fresh store under ``folder``; what it found."""
    config = folder / f"{name}.toml"
    config.write_text(config_text)
    mlruns = folder / name / "mlruns"
    env = {**os.environ, "TRAINLIB_MLRUNS_DIR": str(mlruns)}
    command = [sys.executable, "-m", "trainlib.cli", "sweep", str(config), "--study-name", name, "--no-progress"]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"{name} failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=open_storage(f"journal:///{mlruns / 'optuna.journal'}"))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    parent = client.search_runs([experiment.experiment_id], "tags.`trainlib.role` = 'study'")[0]
    return {
        "study": name,
        "wall_seconds": round(seconds, 1),
        "trials": len(study.trials),
        "complete": len(complete),
        "pruned": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))),
        "training_seconds_all_trials": round(
            sum(t.user_attrs.get("trainlib_measures", {}).get("train_seconds", 0) for t in complete), 1
        ),
        "hypervolume": parent.data.metrics["hypervolume"],
        "front": sorted(
            (
                {"number": t.number, "val_accuracy": t.values[0], "train_seconds": t.values[1]}
                for t in study.best_trials
            ),
            key=lambda point: point["train_seconds"],
        ),
        "points": [[t.values[0], t.values[1]] for t in complete],
        "chosen_trial": int(parent.data.tags["best_trial_number"]),
        "test_accuracy": parent.data.metrics["test_accuracy"],
    }


def plot(results: list[dict], path: Path, target: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.6))
    for result, color in zip(results, ("tab:blue", "tab:orange"), strict=False):
        label = f"{result['label']} ({result['complete']} complete, {result['wall_seconds']:.0f} s wall)"
        xs, ys = zip(*((p[1], p[0] * 100) for p in result["points"]), strict=True)
        axes.scatter(xs, ys, s=14, alpha=0.35, color=color)
        front = result["front"]
        axes.step(
            [p["train_seconds"] for p in front],
            [p["val_accuracy"] * 100 for p in front],
            where="post",
            color=color,
            marker="o",
            label=label,
        )
        chosen = next((p for p in front if p["number"] == result["chosen_trial"]), None)
        if chosen:
            axes.scatter(
                [chosen["train_seconds"]],
                [chosen["val_accuracy"] * 100],
                s=120,
                facecolors="none",
                edgecolors=color,
                linewidths=2,
            )
    if target is not None:
        axes.axhline(target * 100, color="grey", linestyle=":", linewidth=1, label=f"target {target:.0%}")
        below = sum(p[0] < target - 0.05 for result in results for p in result["points"])
        axes.set_ylim(bottom=(target - 0.05) * 100, top=min(100.0, axes.get_ylim()[1]))
        if below:
            axes.text(
                0.01,
                0.01,
                f"{below} trials below {target - 0.05:.0%} not shown",
                transform=axes.transAxes,
                fontsize=8,
                color="grey",
            )
    axes.set_xlabel("training seconds of the trial (this machine)")
    axes.set_ylabel("best validation accuracy (%)")
    axes.set_title("MNIST-1D CNN: accuracy against training time (circled: the chosen model)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "pareto_pruning.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "figures" / "pareto_front.png")
    parser.add_argument("--pairs", type=int, default=1, help="pruned/unpruned pairs, alternated (the plot: the first)")
    options = parser.parse_args()
    text = options.config.read_text()
    pruner = re.search(r'^pruner = "(\w+)"', text, re.MULTILINE).group(1)
    target = re.search(r"^target_accuracy = ([\d.]+)", text, re.MULTILINE)
    unpruned = re.sub(r'^pruner = "\w+"', 'pruner = "none"', text, flags=re.MULTILINE)
    results = []
    with tempfile.TemporaryDirectory(prefix="trainlib-pareto-") as folder:
        for pair in range(1, options.pairs + 1):
            for label, variant, name in ((f"pruner {pruner}", text, "pruned"), ("no pruning", unpruned, "unpruned")):
                result = run(variant, f"{options.config.stem}-{name}-{pair}", Path(folder))
                result.update(label=label, pair=pair)
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "points"}), flush=True)
    record = {
        "config": str(options.config),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "results": results,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(results[:2], options.plot, float(target.group(1)) if target else None)
    print(f"wrote {options.out} and {options.plot}")


if __name__ == "__main__":
    main()
