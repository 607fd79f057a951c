"""Helpers the sweep tests share: configs, the CLI in a subprocess, and reading back both stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from mlflow import MlflowClient
from mlflow.entities import ViewType

from trainlib.sweep import SweepSummary, load_config, plan_sweep, run_sweep
from trainlib.sweep.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.toml"
HANG_SECONDS = 600  # bounds on waits only catch hangs; a loaded 2-core machine may be slow


def write_config(folder: Path, name: str, **changes: str) -> Path:
    """A copy of smoke.toml with whole `key = value` lines replaced (key as written in the file)."""
    lines = SMOKE.read_text().splitlines()
    for key, value in changes.items():
        lines = [f"{key} = {value}" if line.split("=")[0].strip() == key else line for line in lines]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def runs_of(client: MlflowClient, experiment: str) -> tuple[object, list[object]]:
    """The study's one parent run and its trial runs (every lifecycle stage)."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    parents = [run for run in runs if run.data.tags.get("trainlib.role") == "study"]
    children = [run for run in runs if run.data.tags.get("trainlib.role") == "trial"]
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    return parents[0], children


def load_study(stores: dict[str, str], name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(stores["storage"]))


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """`trainlib ARGS` in a new process, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "trainlib.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_env(stores: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "TRAINLIB_MLRUNS_DIR": stores["mlruns"], "PYTHONUNBUFFERED": "1"}


def sweep(config: Path, **options: object) -> SweepSummary:
    """`trainlib sweep CONFIG` in this process (options as plan_sweep takes them), without a progress bar."""
    return run_sweep(plan_sweep(load_config(config), config, **options), show_progress=False)
