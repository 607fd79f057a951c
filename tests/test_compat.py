"""Every private Optuna name trainlib uses (trainlib/_compat.py) still works: an upgrade that breaks one fails here."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import optuna
import pytest

from trainlib import _compat


def rdb(tmp_path: Path, **options: object) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", **options)


def test_the_cached_storage_wraps_an_rdb_storage_as_optuna_does(tmp_path: Path) -> None:
    cached = _compat.cached_rdb_storage(rdb(tmp_path))
    study = optuna.create_study(storage=cached, study_name="cached")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)

    assert type(cached) is type(optuna.storages.get_storage(rdb(tmp_path)))  # what create_study itself would use
    assert len(optuna.load_study(study_name="cached", storage=rdb(tmp_path)).trials) == 3


@pytest.mark.filterwarnings("ignore::UserWarning")  # heartbeats outside Study.optimize
def test_the_stale_trial_query_finds_a_silent_trial(tmp_path: Path) -> None:
    storage = _compat.cached_rdb_storage(rdb(tmp_path, heartbeat_interval=1, grace_period=1))
    study = optuna.create_study(storage=storage, study_name="stale")
    silent = study.ask()
    study_id = storage.get_study_id_from_name("stale")
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, silent.number)
    storage.record_heartbeat(trial_id)
    time.sleep(2.5)  # older than the 1 s grace period (a lower bound on age, not a race)

    assert _compat.rdb_stale_trial_ids(storage, study_id) == [trial_id]
    assert _compat.rdb_stale_trial_ids(optuna.storages.InMemoryStorage(), 0) == []


def test_a_heartbeat_storage_answers_optunas_stale_trial_query(tmp_path: Path) -> None:
    asked: list[int] = []

    class Storage(_compat.HeartbeatStorage, optuna.storages.InMemoryStorage):
        def stale_trial_ids(self, study_id: int) -> list[int]:
            asked.append(study_id)
            return []

        def record_heartbeat(self, trial_id: int) -> None:
            pass

        def get_heartbeat_interval(self) -> int:
            return 1

        def get_heartbeat_stale_trial_callback(self) -> None:
            return None

    storage = Storage()
    study = optuna.create_study(storage=storage, study_name="hb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)

    assert isinstance(storage, _compat.BaseHeartbeat)  # what fail_stale_trials checks first
    assert asked == [0]


def test_frozen_trial_shows_a_running_trials_system_attributes() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5})
    trial = study.ask()

    frozen = _compat.frozen_trial(trial)

    assert frozen.number == trial.number and frozen.state == optuna.trial.TrialState.RUNNING
    assert "fixed_params" in frozen.system_attrs  # how Optuna marks an enqueued trial


def test_the_optimize_loop_logs_failed_trials_on_the_named_logger(caplog: pytest.LogCaptureFixture) -> None:
    def broken(trial: optuna.Trial) -> float:
        raise ValueError("boom")

    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger=_compat.OPTUNA_OPTIMIZE_LOGGER):
            optuna.create_study().optimize(broken, n_trials=1, catch=(ValueError,))
    finally:
        optuna.logging.disable_propagation()

    assert any(
        record.name == _compat.OPTUNA_OPTIMIZE_LOGGER and "boom" in record.getMessage() for record in caplog.records
    )


def test_the_quiet_filter_drops_only_what_it_is_told(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(_compat.OPTUNA_OPTIMIZE_LOGGER)
    before = list(logger.filters), logger.propagate
    try:
        logger.filters.clear()  # a sweep run earlier in this process installed the sweep's own filter
        _compat.quiet_logger_of_optimize_loop(lambda record: "drop me" in record.getMessage())
        _compat.quiet_logger_of_optimize_loop(lambda record: True)  # a second call adds nothing
        with caplog.at_level(logging.WARNING, logger=_compat.OPTUNA_OPTIMIZE_LOGGER):
            logger.propagate = True
            logger.warning("drop me")
            logger.warning("keep me")
    finally:
        logger.filters[:], logger.propagate = before

    assert [record.getMessage() for record in caplog.records] == ["keep me"]


def test_optunas_hypervolume_measures_the_dominated_area_of_minimized_points() -> None:
    import numpy as np

    points = np.array([[1.0, 3.0], [2.0, 1.0]])  # minimized, reference (4, 4)

    # The union of the boxes [1, 4] x [3, 4] (area 3) and [2, 4] x [1, 4] (area 6), which share [2, 4] x [3, 4] (2).
    assert _compat.compute_hypervolume(points, np.array([4.0, 4.0])) == pytest.approx(3 + 6 - 2)
