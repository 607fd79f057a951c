"""The sweep against a real MLflow sqlite store and a real Optuna journal/sqlite storage in tmp folders."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from sweep_helpers import HANG_SECONDS, SMOKE, cli, cli_env, load_study, runs_of, sweep, write_config

from trainlib.sweep import load_config, plan_sweep

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second")


def test_sweep_records_parent_and_child_runs(stores: dict[str, str], tmp_path: Path) -> None:
    summary = sweep(SMOKE)
    client = MlflowClient(stores["tracking_uri"])
    parent, children = runs_of(client, "smoke")

    assert summary.counts == {"complete": 4, "pruned": 0, "failed": 0}
    assert sorted(run.info.run_name for run in children) == [f"trial-{n:04d}" for n in range(4)]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["optuna.state"] == "COMPLETE"
        assert {"lr", "batch_size", "optimizer", "trial_number"} <= set(child.data.params)
        assert ("momentum" in child.data.params) == (child.data.params["optimizer"] == "sgd")
        for metric in EPOCH_METRICS:
            history = client.get_metric_history(child.info.run_id, metric)
            assert [point.step for point in history] == [1, 2, 3], metric
        assert "best_val_accuracy" in child.data.metrics

    assert parent.info.status == "FINISHED"
    assert parent.data.params["data.dataset"] == "digits"
    assert parent.data.params["training.epochs"] == "3"
    for tag in ("sampler", "pruner", "device", "device_name", "torch_version", "mlflow_version", "optuna_version"):
        assert parent.data.tags[tag], tag
    assert parent.data.tags["git_commit"] and parent.data.tags["host"]
    best_history = client.get_metric_history(parent.info.run_id, "best_val_accuracy")
    assert [point.step for point in best_history] == [0, 1, 2, 3]
    assert [p.value for p in best_history] == sorted(p.value for p in best_history)  # best so far never drops
    assert parent.data.metrics["n_complete"] == 4 and parent.data.metrics["n_failed"] == 0
    assert 0 < parent.data.metrics["test_accuracy"] <= 1
    assert summary.test_accuracy == pytest.approx(parent.data.metrics["test_accuracy"])

    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/trials.csv", "report/optimization_history.png", "report/slice.png"} <= artifacts
    assert [item.path for item in client.list_artifacts(parent.info.run_id, "config")] == ["config/smoke.toml"]
    models = client.search_logged_models([parent.info.experiment_id])
    assert [model.name for model in models] == ["best_model"]
    assert models[0].source_run_id == parent.info.run_id
    model_metrics = {metric.key: metric.value for metric in models[0].metrics}
    assert model_metrics["test_accuracy"] == pytest.approx(summary.test_accuracy)
    assert model_metrics["best_val_accuracy"] == pytest.approx(summary.best_value)


def test_the_logged_best_model_serves_and_scores_its_test_accuracy(
    stores: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from trainlib.workload import load_splits

    summary = sweep(SMOKE)
    client = MlflowClient(stores["tracking_uri"])
    parent, _ = runs_of(client, "smoke")
    (logged,) = client.search_logged_models([parent.info.experiment_id])

    config = load_config(SMOKE)
    splits = load_splits(config.workload(SMOKE.parent), config.training.seed)
    features, labels = (tensor.numpy() for tensor in splits.test.tensors)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stores["tracking_uri"])  # as a user of the store would
    served = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")  # as `mlflow models serve` loads it
    logits = served.predict(features)
    assert logits.shape == (len(labels), splits.num_classes)
    assert (logits.argmax(axis=1) == labels).mean() == pytest.approx(summary.test_accuracy)


def test_running_again_resumes_the_same_study_and_parent(stores: dict[str, str]) -> None:
    sweep(SMOKE, n_trials=2)
    summary = sweep(SMOKE, n_trials=3)
    client = MlflowClient(stores["tracking_uri"])
    parent, children = runs_of(client, "smoke")

    assert summary.counts["complete"] == 5
    assert len(children) == 5
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {parent.info.run_id}
    assert len(load_study(stores, "smoke").trials) == 5
    assert [p.step for p in client.get_metric_history(parent.info.run_id, "best_val_accuracy")] == list(range(5))
    params = [tuple(sorted(child.data.params.items())) for child in children]
    assert len(set(params)) == 5, "a resumed study replayed earlier draws"


def test_pruned_trials_stop_early_and_are_tagged(stores: dict[str, str], tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "prune.toml",
        n_trials="8",
        pruner='"median"',
        pruner_startup_trials="2",
        pruner_warmup_epochs="1",
        epochs="6",
        lr="{ low = 1e-5, high = 1e-1 }",
        optimizer='["sgd"]',
    )
    summary = sweep(config)
    client = MlflowClient(stores["tracking_uri"])
    _, children = runs_of(client, "smoke")
    pruned = [child for child in children if child.data.tags["optuna.state"] == "PRUNED"]

    assert summary.counts["pruned"] == len(pruned) >= 1
    for child in pruned:
        assert child.info.status == "FINISHED"
        assert "pruned at epoch" in child.data.tags["optuna.reason"]
        steps = [point.step for point in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert len(steps) < 6, "a pruned trial kept training"
    states = [trial.state for trial in load_study(stores, "smoke").trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)


def test_diverging_trial_fails_with_reason_and_the_study_goes_on(stores: dict[str, str], tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "diverge.toml", n_trials="3", lr="{ low = 50.0, high = 100.0 }", optimizer='["sgd"]', epochs="3"
    )  # lr=50 with SGD: the loss jumps past training.divergence_threshold (100) in the first epoch
    summary = sweep(config)
    client = MlflowClient(stores["tracking_uri"])
    _, children = runs_of(client, "smoke")

    assert summary.counts == {"complete": 0, "pruned": 0, "failed": 3}  # all three ran: the study went on
    for child in children:
        assert child.info.status == "FAILED"
        assert child.data.tags["optuna.state"] == "FAIL"
        assert "diverged" in child.data.tags["optuna.reason"]
        assert int(child.data.tags["optuna.failed_epoch"]) >= 1
    study = load_study(stores, "smoke")
    assert all(trial.state == optuna.trial.TrialState.FAIL for trial in study.trials)


def test_no_tracking_writes_no_mlflow_store(stores: dict[str, str]) -> None:
    summary = sweep(SMOKE, n_trials=2, tracking=False)
    assert summary.counts["complete"] == 2
    assert summary.test_accuracy is not None
    assert not Path(stores["mlruns"], "mlflow.db").exists()


def test_sigint_closes_runs_and_trials_and_the_sweep_resumes(stores: dict[str, str], tmp_path: Path) -> None:
    config = write_config(tmp_path, "long.toml", n_trials="50", epochs="200")
    process = cli("sweep", str(config), "--no-progress", env=cli_env(stores))
    client = MlflowClient(stores["tracking_uri"])

    def trial_run_open() -> bool:
        experiment = client.get_experiment_by_name("smoke") if Path(stores["mlruns"], "mlflow.db").exists() else None
        return bool(experiment and client.search_runs([experiment.experiment_id], "tags.`trainlib.role` = 'trial'"))

    deadline = time.monotonic() + HANG_SECONDS
    while not trial_run_open():  # a trial of 200 epochs is training: the interrupt lands in its middle
        assert process.poll() is None and time.monotonic() < deadline, "no trial started"
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=HANG_SECONDS)  # a bound that only catches a hang

    # 130 from our handler; -SIGINT where Python ends "killed by SIGINT" itself (an interrupt that lands inside
    # an import in the first trial): both are the shell's exit status 130, and the runs must be closed either way.
    assert process.returncode in (130, -signal.SIGINT), stderr[-3000:]
    assert "Resume with: trainlib sweep" in stderr
    parent, children = runs_of(client, "smoke")
    assert parent.info.status == "KILLED"
    assert children and all(child.info.status != "RUNNING" for child in children)
    assert any(child.info.status == "KILLED" for child in children)
    study = load_study(stores, "smoke")
    assert all(trial.state != optuna.trial.TrialState.RUNNING for trial in study.trials)
    interrupted_count = len(study.trials)

    resumed = cli("sweep", str(config), "--no-progress", "--n-trials", "1", "--epochs", "2", env=cli_env(stores))
    _, stderr = resumed.communicate(timeout=HANG_SECONDS)
    assert resumed.returncode == 0, stderr
    assert len(load_study(stores, "smoke").trials) == interrupted_count + 1
    resumed_parent, resumed_children = runs_of(client, "smoke")
    assert resumed_parent.info.run_id == parent.info.run_id and resumed_parent.info.status == "FINISHED"
    assert len(resumed_children) == len(children) + 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt, on purpose
def test_an_interrupt_python_dropped_still_stops_the_sweep_at_the_next_trial(stores: dict[str, str]) -> None:
    """Python drops an exception raised in a weakref callback or finalizer; a Ctrl-C landing there must not be lost."""
    import weakref

    from trainlib.sweep import SweepInterrupted, install_interrupt_handler
    from trainlib.sweep.interrupts import forget_interrupt, interrupt

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    install_interrupt_handler()
    try:

        class Garbage:
            pass

        garbage = Garbage()
        reference = weakref.ref(garbage, lambda _: interrupt(signal.SIGINT, None))
        del garbage  # the callback raises KeyboardInterrupt; Python prints "Exception ignored" and goes on
        assert reference() is None

        with pytest.raises(SweepInterrupted):
            sweep(SMOKE)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        forget_interrupt()

    parent, children = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert parent.info.status == "KILLED"
    assert children == []  # stopped at the first trial's start, before its run was created
    assert [trial.state for trial in load_study(stores, "smoke").trials] == [optuna.trial.TrialState.FAIL]


def test_two_workers_share_one_study_and_one_parent(stores: dict[str, str]) -> None:
    process = cli("sweep", str(SMOKE), "--no-progress", "--workers", "2", "--n-trials", "4", env=cli_env(stores))
    stdout, stderr = process.communicate(timeout=HANG_SECONDS)
    assert process.returncode == 0, stderr

    client = MlflowClient(stores["tracking_uri"])
    parent, children = runs_of(client, "smoke")
    assert len(children) == 4
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {parent.info.run_id}
    assert sorted(int(child.data.params["trial_number"]) for child in children) == [0, 1, 2, 3]
    assert all(child.info.status == "FINISHED" for child in children)
    study = load_study(stores, "smoke")
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert "4 complete" in stdout


def test_sqlite_storage_with_workers_is_refused(stores: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sqlite storage is not safe with --workers > 1"):
        plan_sweep(load_config(SMOKE), SMOKE, storage=f"sqlite:///{tmp_path}/o.db", workers=2)


def test_sqlite_optuna_storage_works_for_one_worker(stores: dict[str, str], tmp_path: Path) -> None:
    summary = sweep(SMOKE, n_trials=1, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert summary.counts["complete"] == 1
    assert optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/optuna.db").trials


def test_a_waiting_retry_runs_in_addition_to_the_new_trials(stores: dict[str, str]) -> None:
    """A dead worker's trial enqueued for retry (as the stale-trial callback does) does not eat --n-trials."""
    sweep(SMOKE, n_trials=1)
    study = load_study(stores, "smoke")
    lost = study.trials[0]
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=lost.params,
            distributions=lost.distributions,
            system_attrs={"failed_trial": lost.number, "retry_history": [lost.number]},
        )
    )

    summary = sweep(SMOKE, n_trials=2)

    trials = load_study(stores, "smoke").trials
    assert summary.counts["complete"] == len(trials) == 4  # the first, the retry, two new
    retry = next(trial for trial in trials if trial.system_attrs.get("failed_trial") == lost.number)
    assert retry.params == lost.params and retry.state == optuna.trial.TrialState.COMPLETE
    _, children = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert [child.data.tags.get("optuna.retry_of") for child in children].count(str(lost.number)) == 1


def test_n_trials_0_finishes_an_existing_study_without_new_trials(stores: dict[str, str]) -> None:
    first = sweep(SMOKE, n_trials=1)
    client = MlflowClient(stores["tracking_uri"])
    _, children_before = runs_of(client, "smoke")

    summary = sweep(SMOKE, n_trials=0)

    assert summary.counts == first.counts and summary.test_accuracy == first.test_accuracy
    assert summary.parent_run_id == first.parent_run_id
    parent, children = runs_of(client, "smoke")
    assert parent.info.status == "FINISHED" and len(children) == len(children_before) == 1
    assert len(load_study(stores, "smoke").trials) == 1


def test_n_trials_0_on_a_missing_study_is_one_line_exit_2_and_writes_nothing(stores: dict[str, str]) -> None:
    process = cli("sweep", str(SMOKE), "--n-trials", "0", env=cli_env(stores))
    _, stderr = process.communicate(timeout=HANG_SECONDS)
    assert process.returncode == 2, stderr
    assert stderr.strip().splitlines() == [
        f"trainlib: error: study 'smoke' not found in journal:///{stores['mlruns']}/optuna.journal; --n-trials 0 "
        "finishes an existing study (retries its dead workers' trials, writes its report), give --n-trials 1 or "
        "more to start one"
    ]
    assert not Path(stores["mlruns"]).exists()


def test_negative_n_trials_is_refused(stores: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="--n-trials must be an integer of 0 or more, got -1"):
        plan_sweep(load_config(SMOKE), SMOKE, n_trials=-1)


def test_each_trial_shuffles_with_a_seed_derived_from_training_seed(
    stores: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch order follows training.seed (and the trial), so studies with other seeds see other orders."""
    from trainlib.sweep import objective

    shuffle_seeds: list[int | None] = []
    real_make_loader = objective.make_loader

    def recording_make_loader(dataset, batch_size, shuffle, *args, seed=None, **kwargs):
        if shuffle:
            shuffle_seeds.append(seed)
        return real_make_loader(dataset, batch_size, shuffle, *args, seed=seed, **kwargs)

    monkeypatch.setattr(objective, "make_loader", recording_make_loader)
    sweep(write_config(tmp_path, "seeded.toml", seed="5", n_trials="2", epochs="1"), tracking=False)

    assert shuffle_seeds == [5, 6]  # training.seed + trial number, not the trial number alone


def test_the_same_config_gives_the_same_trials_in_a_new_store(
    stores: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproducible on one machine: a new store, the same config, the same draws and the same results."""
    first = sweep(SMOKE, n_trials=3, tracking=False)
    monkeypatch.setenv("TRAINLIB_MLRUNS_DIR", str(tmp_path / "second"))
    second = sweep(SMOKE, n_trials=3, tracking=False)

    columns = ["number", "value", "lr", "batch_size", "optimizer"]
    assert first.top_trials[columns].to_dict("records") == second.top_trials[columns].to_dict("records")
