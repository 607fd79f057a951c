"""Every use of a private Optuna name, in one place.

Optuna keeps its internals in ``_`` modules, and trainlib needs a few of them. Each entry says what it is for
and the versions it was checked against (Optuna 5.0.0); tests/test_compat.py exercises every one, so an upgrade
that moves or removes one fails loudly there. MLflow needs no such entry: trainlib uses its public API only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import optuna

# optuna.storages._CachedStorage (Optuna 2.x to 5.0, in optuna.storages.__all__ but private by name): what
# Optuna wraps every RDBStorage in, caching the trials of this process; our retrying storage keeps it.
from optuna.storages import BaseStorage, RDBStorage, _CachedStorage

# optuna.storages._heartbeat.BaseHeartbeat (Optuna 2.9 to 5.0): the interface a storage implements so that
# Study.optimize runs a heartbeat thread and fail_stale_trials can find silent trials. Not re-exported.
from optuna.storages._heartbeat import BaseHeartbeat

# optuna.study._frozen.FrozenStudy (Optuna 3.0 to 5.0): what BaseStorage.get_all_studies returns; a type only.
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial

__all__ = [
    "BaseHeartbeat",
    "FrozenStudy",
    "HeartbeatStorage",
    "cached_rdb_storage",
    "compute_hypervolume",
    "frozen_trial",
    "quiet_logger_of_optimize_loop",
    "rdb_stale_trial_ids",
]

# Logger names are module paths, private ones included (checked on Optuna 5.0.0).
OPTUNA_OPTIMIZE_LOGGER = "optuna.study._optimize"  # logs "Trial N failed with ..." and its traceback


def cached_rdb_storage(storage: RDBStorage) -> BaseStorage:
    """``storage`` wrapped as Optuna itself wraps an RDBStorage given to create_study (a trial cache)."""
    return _CachedStorage(storage)


def rdb_stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """The ids of the study's running trials whose heartbeat is older than the grace period (Optuna's query)."""
    if not isinstance(storage, BaseHeartbeat):
        return []
    return storage._get_stale_trial_ids(study_id)


class HeartbeatStorage(BaseStorage, BaseHeartbeat):
    """A storage with heartbeats whose stale-trial query is the public ``stale_trial_ids``.

    Optuna's fail_stale_trials calls ``_get_stale_trial_ids``, an abstract method of BaseHeartbeat; subclasses
    implement ``stale_trial_ids`` instead, so that the private name lives here only.
    """

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The ids of the study's trials that are to be failed as stale."""
        raise NotImplementedError

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)


def frozen_trial(trial: optuna.Trial) -> FrozenTrial:
    """A fresh FrozenTrial of a running ``trial`` (its system attributes included, which Trial does not show).

    Uses Trial.storage and Trial._trial_id (Optuna 3.0 to 5.0).
    """
    return trial.storage.get_trial(trial._trial_id)


class _DropRecords(logging.Filter):
    def __init__(self, drop: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record)


def quiet_logger_of_optimize_loop(drop: Callable[[logging.LogRecord], bool]) -> None:
    """Drop the records of Optuna's optimize loop for which ``drop`` is true (once per process)."""
    logger = logging.getLogger(OPTUNA_OPTIMIZE_LOGGER)
    if not any(isinstance(existing, _DropRecords) for existing in logger.filters):
        logger.addFilter(_DropRecords(drop))


def compute_hypervolume(loss_points: np.ndarray, reference_point: np.ndarray) -> float:
    """The hypervolume that ``loss_points`` (every objective minimized) dominate up to ``reference_point``.

    Optuna's exact WFG implementation, optuna._hypervolume.compute_hypervolume (Optuna 3.0 to 5.0; private).
    """
    from optuna._hypervolume import compute_hypervolume as optuna_hypervolume

    return float(optuna_hypervolume(loss_points, reference_point))
