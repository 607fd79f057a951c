"""Throughput-aware studies against real stores: several objectives, pruning on the accuracy curve, the Pareto
front where a person looks, time to target, a time budget, and re-evaluation with new seeds."""

from __future__ import annotations

import csv
import tempfile
import warnings
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from sweep_helpers import HANG_SECONDS, SMOKE, cli, cli_env, load_study, runs_of, sweep

from trainlib.errors import InvalidArgument
from trainlib.sweep import load_config
from trainlib.sweep.curve_pruning import CURVE_ATTR
from trainlib.sweep.front import candidates_of, pick_fastest_accurate
from trainlib.sweep.storage import open_storage

TrialState = optuna.trial.TrialState
TWO_OBJECTIVES = '[{ metric = "val_accuracy" }, { metric = "train_seconds" }]'
GOOD = {"lr": 0.01, "batch_size": 32, "optimizer": "adam"}
HOPELESS = {"lr": 0.001, "batch_size": 64, "optimizer": "sgd", "momentum": 0.0}  # barely moves in an epoch


def study_file(folder: Path, search: str = "", epochs: int = 3, **study: str) -> Path:
    """smoke.toml with its [study] table made of ``study`` (TOML values), the rest as it is."""
    settings = {"n_trials": "4", "sampler": '"random"', "pruner": '"none"', "objectives": TWO_OBJECTIVES, **study}
    table = "[study]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items() if value)
    rest = "[data]" + SMOKE.read_text().split("[data]", 1)[1]
    rest = rest.replace("epochs = 3", f"epochs = {epochs}").replace("[search]", f"[search]\n{search}")
    path = folder / f"{study['name'].strip(chr(34))}.toml"
    path.write_text(f"{table}\n{rest}")
    return path


def enqueue(stores: dict[str, str], name: str, metrics: list[str], *params: dict) -> None:
    """Create the study with these trials first in line (a good and a hopeless configuration)."""
    directions = ["minimize" if metric in ("train_seconds", "time_to_target") else "maximize" for metric in metrics]
    study = optuna.create_study(study_name=name, storage=open_storage(stores["storage"]), directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metrics)
    for values in params:
        study.enqueue_trial(values)


def children(client: MlflowClient, study: str, role: str = "trial") -> list:
    experiment_id = client.get_experiment_by_name(study).experiment_id
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return [run for run in runs if run.data.tags.get("trainlib.role") == role]


def read_artifact_csv(client: MlflowClient, run_id: str, path: str) -> list[dict[str, str]]:
    local = client.download_artifacts(run_id, path, tempfile.mkdtemp())
    with open(local, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_two_objective_study_prunes_on_accuracy_and_logs_its_front(stores: dict[str, str], tmp_path: Path) -> None:
    config = study_file(
        tmp_path,
        search='lr_schedule = ["constant", "one_cycle"]',
        name='"front"',
        target_accuracy="0.5",
        n_trials="5",
        sampler='"tpe"',
        pruner='"median"',
        pruner_startup_trials="1",
        pruner_warmup_epochs="1",
    )
    enqueue(
        stores,
        "front",
        ["val_accuracy", "train_seconds"],
        {**GOOD, "lr_schedule": "constant"},
        {**HOPELESS, "lr_schedule": "constant"},
    )

    summary = sweep(config)

    study = load_study(stores, "front")
    trials = {trial.number: trial for trial in study.trials}
    assert trials[0].state == TrialState.COMPLETE
    assert trials[1].state == TrialState.PRUNED  # the hopeless one, cut at its first epoch by the median rule
    for trial in trials.values():
        assert len(trial.user_attrs[CURVE_ATTR]) >= 1  # the accuracy curve the rule reads
        assert trial.params["lr_schedule"] in ("constant", "one_cycle")  # drawn like any other parameter

    client = MlflowClient(stores["tracking_uri"])
    parent, runs = runs_of(client, "front")
    by_number = {int(run.data.tags["optuna.trial_number"]): run for run in runs}
    assert "median rule" in by_number[1].data.tags["optuna.reason"]
    front = {trial.number for trial in study.best_trials}
    for number, trial in trials.items():
        if trial.state == TrialState.COMPLETE:
            assert by_number[number].data.tags["pareto_front"] == str(number in front).lower()
    front_csv = read_artifact_csv(client, parent.info.run_id, "report/pareto_front.csv")
    assert sorted(int(row["number"]) for row in front_csv) == sorted(front)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/pareto_front.png", "report/trials.csv", "report/optimization_history.png"} <= artifacts

    history = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [point.step for point in history] == sorted(trials)  # after each trial, step = trial number
    assert [point.value for point in history] == sorted(point.value for point in history)  # never shrinks
    assert history[-1].value > 0

    complete = [trial for trial in trials.values() if trial.state == TrialState.COMPLETE]
    picked = pick_fastest_accurate(candidates_of(complete, load_config(config).study), within=0.005)
    assert parent.data.tags["best_trial_number"] == str(picked.trial.number) == str(summary.chosen_trial)
    assert "within 0.5 points" in parent.data.tags["trainlib.selection_rule"]
    assert summary.front is not None and set(summary.front["number"]) == front


def test_time_to_target_is_logged_where_the_target_was_reached(stores: dict[str, str], tmp_path: Path) -> None:
    config = study_file(tmp_path, epochs=2, name='"target"', objectives="", target_accuracy="0.5")
    enqueue(stores, "target", ["val_accuracy"], GOOD, HOPELESS)

    sweep(config, n_trials=2)

    client = MlflowClient(stores["tracking_uri"])
    for run in children(client, "target"):
        accuracy = max(point.value for point in client.get_metric_history(run.info.run_id, "val_accuracy"))
        note = run.data.tags["trainlib.target"]
        if accuracy >= 0.5:
            assert note.startswith("reached at epoch")
            assert 0 < run.data.metrics["time_to_target"] <= run.data.metrics["train_seconds"]
        else:
            assert note.startswith("not reached in 2 epochs")
            assert "time_to_target" not in run.data.metrics
    notes = sorted(run.data.tags["trainlib.target"][:3] for run in children(client, "target"))
    assert notes == ["not", "rea"]  # the good configuration reaches 50% in two epochs, the hopeless one does not


def test_time_to_target_as_an_objective_with_nsga2_prunes_trials_that_never_reach_it(
    stores: dict[str, str], tmp_path: Path
) -> None:
    objectives = '[{ metric = "val_accuracy" }, { metric = "time_to_target" }]'
    config = study_file(
        tmp_path, name='"dawn"', objectives=objectives, target_accuracy="0.5", n_trials="3", sampler='"nsga2"'
    )
    enqueue(stores, "dawn", ["val_accuracy", "time_to_target"], GOOD, HOPELESS)

    sweep(config)

    trials = load_study(stores, "dawn").trials
    assert [trial.state for trial in trials[:2]] == [TrialState.COMPLETE, TrialState.PRUNED]
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert trial.values[1] > 0 and trial.values[0] >= 0.5
    client = MlflowClient(stores["tracking_uri"])
    hopeless = next(run for run in children(client, "dawn") if run.data.tags["optuna.trial_number"] == "1")
    assert hopeless.data.tags["optuna.reason"].startswith("target accuracy not reached")


@pytest.mark.parametrize("workers", [1, 2])
def test_no_trial_starts_once_the_time_budget_is_spent_and_a_rerun_adds_trials(
    stores: dict[str, str], workers: int
) -> None:
    env = cli_env(stores)
    budgeted = cli(
        "sweep",
        str(SMOKE),
        "--no-progress",
        "--epochs",
        "1",
        "--time-budget",
        "0.001",
        "--workers",
        str(workers),
        env=env,
    )
    output, stderr = budgeted.communicate(timeout=HANG_SECONDS)
    assert budgeted.returncode == 0, stderr[-3000:]
    assert "the time budget was spent" in output
    assert load_study(stores, "smoke").trials == []
    parent, _ = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["trainlib.stopped_by"] == "time budget of 0.001 s"

    rerun = cli("sweep", str(SMOKE), "--no-progress", "--epochs", "1", "--n-trials", "2", env=env)
    _, stderr = rerun.communicate(timeout=HANG_SECONDS)
    assert rerun.returncode == 0, stderr[-3000:]
    assert [trial.state for trial in load_study(stores, "smoke").trials] == [TrialState.COMPLETE] * 2


def test_re_evaluation_trains_the_top_configurations_again_and_picks_on_their_means(
    stores: dict[str, str], tmp_path: Path
) -> None:
    config = study_file(tmp_path, epochs=2, name='"again"', objectives="")

    summary = sweep(config, n_trials=3, reevaluate_top=2, reevaluate_seeds=2)

    client = MlflowClient(stores["tracking_uri"])
    parent, trials = runs_of(client, "again")
    study = load_study(stores, "again")
    top = sorted(study.trials, key=lambda trial: -trial.value)[:2]
    runs = children(client, "again", role="reevaluation")
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
    assert sorted(int(run.data.tags["trainlib.reevaluates"]) for run in runs) == sorted(2 * [t.number for t in top])
    assert len({run.data.params["seed"] for run in runs}) == 4  # seeds no trial used, none repeated
    means = {}
    for trial in top:
        own = [run for run in runs if run.data.tags["trainlib.reevaluates"] == str(trial.number)]
        means[trial.number] = sum(run.data.metrics["best_val_accuracy"] for run in own) / 2
        original = next(run for run in trials if run.data.tags["optuna.trial_number"] == str(trial.number))
        assert original.data.metrics["reevaluated_val_accuracy_mean"] == pytest.approx(means[trial.number])
        assert "reevaluated_val_accuracy_std" in original.data.metrics
    chosen = max(means, key=means.get)
    assert summary.chosen_trial == chosen and parent.data.tags["best_trial_number"] == str(chosen)
    assert "means over re-evaluation seeds" in parent.data.tags["trainlib.selection_rule"]
    assert len(read_artifact_csv(client, parent.info.run_id, "report/reevaluation.csv")) == 2
    assert len(client.search_logged_models([parent.info.experiment_id])) == 1  # the test split used once


def test_a_resume_with_other_objectives_is_refused_before_any_trial(stores: dict[str, str], tmp_path: Path) -> None:
    sweep(SMOKE, n_trials=1)
    config = study_file(tmp_path, name='"smoke"')

    with pytest.raises(
        InvalidArgument,
        match=r"optimises val_accuracy \(maximize\), the config says val_accuracy "
        r"\(maximize\), train_seconds \(minimize\)",
    ):
        sweep(config, n_trials=1)
    assert len(load_study(stores, "smoke").trials) == 1


def test_a_spent_budget_starts_no_re_evaluation_and_the_pick_says_so(stores: dict[str, str]) -> None:
    sweep(SMOKE, n_trials=2)

    summary = sweep(SMOKE, n_trials=1, time_budget_seconds=0.001, reevaluate_top=2, reevaluate_seeds=2)

    assert summary.budget_spent and summary.counts["complete"] == 2  # no new trial
    assert summary.reevaluation is None and summary.selection_rule == "the best val_accuracy"
    client = MlflowClient(stores["tracking_uri"])
    assert children(client, "smoke", role="reevaluation") == []
    parent, _ = runs_of(client, "smoke")
    assert parent.data.tags["trainlib.selection_rule"] == "the best val_accuracy"
