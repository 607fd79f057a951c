"""The MLflow adapter's logging of runs, against a real sqlite MLflow store and Optuna journal in a tmp folder."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.entities import Metric, Param, RunTag

from trainlib.engine import EpochResult
from trainlib.sweep import open_storage
from trainlib.tracking import (
    MAX_ITEMS_PER_BATCH,
    MAX_PARAMS_OR_TAGS_PER_BATCH,
    RUN_ID_ATTR,
    SweepTracker,
    TrialRun,
    _done,
    _within_limits,
)


@pytest.fixture
def tracker(tmp_path: Path) -> SweepTracker:
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "runs")
    yield tracker
    tracker.end_sweep("FINISHED")


def new_run(tracker: SweepTracker) -> str:
    return tracker.call(lambda: tracker.client.create_run(tracker.experiment_id, run_name="trial-0000", tags={}))


def epoch(number: int) -> EpochResult:
    return EpochResult(
        epoch=number,
        train_loss=1.0 / number,
        val_loss=1.5 / number,
        val_accuracy=1 - 0.5 / number,
        epoch_seconds=0.1,
        samples_per_second=1000.0,
    )


def history(tracker: SweepTracker, run_id: str, key: str) -> list[float]:
    return [point.value for point in tracker.call(lambda: tracker.client.get_metric_history(run_id, key))]


def test_epochs_within_the_interval_are_written_together_at_flush(tracker: SweepTracker) -> None:
    run_id = new_run(tracker).info.run_id
    run = TrialRun(tracker, _done(run_id), interval_seconds=3600)
    run.log_async(params=[Param("lr", "0.01")])
    for number in range(1, 11):
        run.log_epoch(epoch(number))

    assert history(tracker, run_id, "val_loss") == []  # nothing handed over yet
    run.flush()
    for key in ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"):
        steps = [point.step for point in tracker.call(lambda k=key: tracker.client.get_metric_history(run_id, k))]
        assert steps == list(range(1, 11)), key
    assert tracker.call(lambda: tracker.client.get_run(run_id)).data.params == {"lr": "0.01"}


def test_with_no_interval_every_epoch_is_its_own_asynchronous_write(tracker: SweepTracker) -> None:
    run_id = new_run(tracker).info.run_id
    run = TrialRun(tracker, _done(run_id), interval_seconds=0)
    for number in range(1, 6):
        run.log_epoch(epoch(number))

    tracker.flush()
    assert len(run.pending) == 5  # one MLflow async batch each
    run.flush()
    assert history(tracker, run_id, "train_loss") == [1 / n for n in range(1, 6)]


def test_a_trial_logs_while_the_store_is_busy_and_everything_arrives(tracker: SweepTracker, tmp_path: Path) -> None:
    storage = open_storage(f"journal:///{tmp_path / 'optuna.journal'}")
    study = optuna.create_study(study_name="busy", storage=storage, direction="maximize")
    tracker.start_sweep(study, True, {"study.name": "busy"}, {"host": "here"}, Path(__file__))
    gate = threading.Event()
    tracker.submit(gate.wait, 60)  # the store is "slow": nothing after this runs until the gate opens

    trial = study.ask()
    with tracker.trial_run(trial, {"lr": 0.01, "batch_size": 32, "optimizer": "adam"}) as run:
        run.interval_seconds = 0
        for number in range(1, 4):
            run.log_epoch(epoch(number))  # returns although the tracking thread is blocked
        tracker.log_trial_result(run, "val_accuracy", 0.75, {"weight": torch.ones(2)})
        assert not gate.is_set() and not run.run.done()  # nothing reached the store, training went on
        gate.set()
    study.tell(trial, 0.75)
    tracker.flush()

    child = tracker.call(lambda: tracker.client.get_run(study.trials[0].user_attrs[RUN_ID_ATTR]))
    assert child.info.status == "FINISHED" and child.data.tags["optuna.state"] == "COMPLETE"
    assert child.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert child.data.params["lr"] == "0.01" and child.data.metrics["best_val_accuracy"] == 0.75
    assert history(tracker, child.info.run_id, "val_accuracy") == [0.5, 0.75, 1 - 0.5 / 3]


def test_a_failure_on_the_tracking_thread_is_raised_in_the_sweep(tmp_path: Path) -> None:
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "runs")
    run_id = new_run(tracker).info.run_id

    def broken() -> None:
        raise RuntimeError("store said no")

    tracker.submit(broken)
    with pytest.raises(RuntimeError, match="store said no"):
        tracker.flush()
    run = TrialRun(tracker, _done(run_id))
    with pytest.raises(RuntimeError, match="store said no"):  # at the next epoch, and nothing more is attempted
        run.log_epoch(epoch(1))


def test_batches_are_cut_to_mlflow_limits() -> None:
    batch = {
        "metrics": [Metric("m", float(i), 0, i) for i in range(2 * MAX_ITEMS_PER_BATCH + 5)],
        "params": [Param(f"p{i}", "1") for i in range(MAX_PARAMS_OR_TAGS_PER_BATCH + 1)],
        "tags": [RunTag(f"t{i}", "1") for i in range(3)],
    }
    chunks = list(_within_limits(batch))

    for chunk in chunks:
        assert sum(len(items) for items in chunk.values()) <= MAX_ITEMS_PER_BATCH
        assert len(chunk["params"]) <= MAX_PARAMS_OR_TAGS_PER_BATCH
        assert len(chunk["tags"]) <= MAX_PARAMS_OR_TAGS_PER_BATCH
    for kind, items in batch.items():
        assert [item for chunk in chunks for item in chunk[kind]] == items, kind  # all of them, in order
    assert list(_within_limits({"metrics": [], "params": [], "tags": []})) == []
