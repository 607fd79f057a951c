"""The MLflow tracker's logging of runs, against a real sqlite MLflow store and Optuna journal in a tmp folder."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from trainlib.engine import EpochResult
from trainlib.sweep.storage import open_storage
from trainlib.sweep.study import StudyParentSlot
from trainlib.tracking import MlflowTracker, NullTracker, Tracker, TrialLog, TrialOutcome
from trainlib.tracking.runs import MAX_ITEMS_PER_BATCH, MAX_PARAMS_OR_TAGS_PER_BATCH, Batch, RunLog, done


@pytest.fixture
def tracker(tmp_path: Path) -> MlflowTracker:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "runs")
    yield tracker
    tracker.end_sweep("FINISHED")


def store(tracker: MlflowTracker) -> MlflowClient:
    """A client of its own on the tracker's store, as a person looking at the runs would have."""
    return MlflowClient(tracker.tracking_uri)


def new_run(tracker: MlflowTracker) -> str:
    return tracker.thread.call(
        lambda: tracker.client.create_run(tracker.experiment_id, run_name="trial-0000", tags={}).info.run_id
    )


def epoch(number: int) -> EpochResult:
    return EpochResult(
        epoch=number,
        train_loss=1.0 / number,
        val_loss=1.5 / number,
        val_accuracy=1 - 0.5 / number,
        epoch_seconds=0.1,
        samples_per_second=1000.0,
    )


def history(tracker: MlflowTracker, run_id: str, key: str) -> list[float]:
    return [point.value for point in store(tracker).get_metric_history(run_id, key)]


def test_both_trackers_implement_the_protocol() -> None:
    assert isinstance(NullTracker(), Tracker)
    assert isinstance(NullTracker().start_trial("s", 3, {}, None), TrialLog)
    members = [name for name in vars(Tracker) if not name.startswith("_")]
    for name in members:
        assert callable(getattr(MlflowTracker, name)), name


def test_epochs_within_the_interval_are_written_together_when_handed_over(tracker: MlflowTracker) -> None:
    run_id = new_run(tracker)
    run = RunLog(tracker.thread, tracker.write_batch, done(run_id), interval_seconds=3600)
    run.log(params=[Param("lr", "0.01")])
    for number in range(1, 11):
        run.log_epoch(epoch(number))

    tracker.thread.wait()
    assert history(tracker, run_id, "val_loss") == []  # nothing handed over yet
    run.hand_over()
    tracker.thread.wait()
    for key in ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"):
        steps = [point.step for point in store(tracker).get_metric_history(run_id, key)]
        assert steps == list(range(1, 11)), key
    assert store(tracker).get_run(run_id).data.params == {"lr": "0.01"}


def test_with_no_interval_every_epoch_is_its_own_write(tracker: MlflowTracker) -> None:
    run_id = new_run(tracker)
    run = RunLog(tracker.thread, tracker.write_batch, done(run_id), interval_seconds=0)
    for number in range(1, 6):
        run.log_epoch(epoch(number))
        tracker.thread.wait()
        assert len(history(tracker, run_id, "train_loss")) == number  # stored before the next epoch is logged

    assert history(tracker, run_id, "train_loss") == [1 / n for n in range(1, 6)]


def test_a_trial_logs_while_the_store_is_busy_and_everything_arrives(tracker: MlflowTracker, tmp_path: Path) -> None:
    storage = open_storage(f"journal:///{tmp_path / 'optuna.journal'}")
    study = optuna.create_study(study_name="busy", storage=storage, direction="maximize")
    tracker.start_sweep(StudyParentSlot(study, storage), True, {"study.name": "busy"}, {"host": "here"}, Path(__file__))
    gate = threading.Event()
    tracker.thread.submit(gate.wait, 60)  # the store is "slow": nothing after this runs until the gate opens

    trial = tracker.start_trial("busy", 0, {"lr": 0.01, "batch_size": 32, "optimizer": "adam"}, None)
    trial.interval_seconds = 0
    for number in range(1, 4):
        trial.log_epoch(epoch(number))  # returns although the tracking thread is blocked
    tracker.log_trial_result(trial, {"best_val_accuracy": 0.75}, {"weight": torch.ones(2)})
    assert not gate.is_set() and not trial.created.done()  # nothing reached the store, training went on
    gate.set()
    run_id = tracker.end_trial(trial, TrialOutcome("FINISHED", "COMPLETE"))
    tracker.flush()

    child = store(tracker).get_run(run_id)
    assert child.info.status == "FINISHED" and child.data.tags["optuna.state"] == "COMPLETE"
    assert child.data.tags["mlflow.parentRunId"] == tracker.wait_for_parent_run_id()
    assert child.data.params["lr"] == "0.01" and child.data.metrics["best_val_accuracy"] == 0.75
    assert history(tracker, run_id, "val_accuracy") == [0.5, 0.75, 1 - 0.5 / 3]
    assert tracker.load_trial_weights(run_id, 0)["weight"].tolist() == [1.0, 1.0]
    assert study.user_attrs["mlflow_parent_run_id"] == tracker.wait_for_parent_run_id()


@pytest.mark.parametrize(
    ("outcome", "status", "tags"),
    [
        (TrialOutcome("FINISHED", "PRUNED", "pruned at epoch 2"), "FINISHED", {"optuna.state": "PRUNED"}),
        (
            TrialOutcome("FAILED", "FAIL", "diverged", {"optuna.failed_epoch": "1"}),
            "FAILED",
            {"optuna.failed_epoch": "1"},
        ),
        (TrialOutcome("KILLED", "FAIL", "interrupted (SIGINT)"), "KILLED", {"optuna.reason": "interrupted (SIGINT)"}),
    ],
    ids=["pruned", "diverged", "interrupted"],
)
def test_the_tracker_records_the_outcome_it_is_given(
    tracker: MlflowTracker, tmp_path: Path, outcome: TrialOutcome, status: str, tags: dict[str, str]
) -> None:
    storage = open_storage(f"journal:///{tmp_path / 'optuna.journal'}")
    study = optuna.create_study(study_name="outcomes", storage=storage)
    tracker.start_sweep(StudyParentSlot(study, storage), True, {}, {}, Path(__file__))

    run_id = tracker.end_trial(tracker.start_trial("outcomes", 0, {"lr": 0.1}, retry_of=7), outcome)
    tracker.flush()

    child = store(tracker).get_run(run_id)
    assert child.info.status == status
    assert tags.items() <= child.data.tags.items()
    assert child.data.tags["optuna.reason"] == outcome.reason and child.data.tags["optuna.retry_of"] == "7"


def test_a_failure_on_the_tracking_thread_is_raised_in_the_sweep(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "runs")
    run_id = new_run(tracker)

    def broken() -> None:
        raise RuntimeError("store said no")

    tracker.thread.submit(broken)
    with pytest.raises(RuntimeError, match="store said no"):
        tracker.flush()
    run = RunLog(tracker.thread, tracker.write_batch, done(run_id))
    with pytest.raises(RuntimeError, match="store said no"):  # at the next epoch, and nothing more is attempted
        run.log_epoch(epoch(1))


def test_batches_are_cut_to_mlflow_limits() -> None:
    batch = Batch(
        metrics=[Metric("m", float(i), 0, i) for i in range(2 * MAX_ITEMS_PER_BATCH + 5)],
        params=[Param(f"p{i}", "1") for i in range(MAX_PARAMS_OR_TAGS_PER_BATCH + 1)],
        tags=[RunTag(f"t{i}", "1") for i in range(3)],
    )
    chunks = list(batch.within_limits())

    for chunk in chunks:
        assert len(chunk.metrics) + len(chunk.params) + len(chunk.tags) <= MAX_ITEMS_PER_BATCH
        assert len(chunk.params) <= MAX_PARAMS_OR_TAGS_PER_BATCH
        assert len(chunk.tags) <= MAX_PARAMS_OR_TAGS_PER_BATCH
    for kind in ("metrics", "params", "tags"):
        assert [item for chunk in chunks for item in getattr(chunk, kind)] == getattr(batch, kind), kind
    assert list(Batch().within_limits()) == []


def test_the_fluent_tracking_uri_is_left_as_it_was(tracker: MlflowTracker, tmp_path: Path) -> None:
    """Logging the best model uses MLflow's fluent API; it must not leave the process pointed at the store."""
    import mlflow

    storage = open_storage(f"journal:///{tmp_path / 'optuna.journal'}")
    study = optuna.create_study(study_name="model", storage=storage)
    tracker.start_sweep(StudyParentSlot(study, storage), True, {}, {}, Path(__file__))
    before = mlflow.get_tracking_uri()

    tracker.log_best_model(torch.nn.Linear(4, 2), torch.ones(3, 4), 0.5, 0)
    tracker.log_summary({"complete": 1}, [])

    assert mlflow.get_tracking_uri() == before != tracker.tracking_uri
    models = store(tracker).search_logged_models([tracker.experiment_id])
    assert [model.name for model in models] == ["best_model"]
