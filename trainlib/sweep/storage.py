"""The Optuna storage of a sweep: a journal file, sqlite, or a database server whose lost connections are waited out."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any, TypeVar

import optuna
from filelock import FileLock
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from trainlib._compat import FrozenStudy, HeartbeatStorage, cached_rdb_storage, rdb_stale_trial_ids
from trainlib.errors import InvalidArgument
from trainlib.store_failures import (
    MAX_OUTAGE_SECONDS,
    StoreDamaged,
    StoreUnavailable,
    call_patiently,
    connect_args,
    database_unreachable,
    first_line,
    store_damage,
)
from trainlib.stores import is_sqlite, redact, scrub, sqlite_path
from trainlib.sweep.journal import open_journal
from trainlib.sweep.stale_trials import WORKER_ATTR, is_live_local_worker

log = logging.getLogger(__name__)
T = TypeVar("T")
StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def open_storage(
    storage_url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_stale_trial: StaleTrialCallback | None = None,
    max_outage_seconds: float = MAX_OUTAGE_SECONDS,
) -> BaseStorage:
    """An Optuna storage for ``storage_url`` (journal:///file, sqlite, postgresql, mysql).

    PostgreSQL and MySQL storages wait out a lost connection (RetryingStorage) and, given a heartbeat interval,
    record heartbeats so that other workers fail (and ``on_stale_trial`` handles) a dead worker's trial.
    """
    if storage_url.startswith("journal:"):
        return open_journal(Path(storage_url.removeprefix("journal://")))
    try:
        if is_sqlite(storage_url):  # Optuna creates a new file's tables on first use: one process at a time
            path = sqlite_path(storage_url)
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.lock"):
                return optuna.storages.RDBStorage(storage_url, engine_kwargs={"pool_pre_ping": True})
        return RetryingStorage(
            storage_url,
            max_outage_seconds=max_outage_seconds,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period if heartbeat_interval else None,
            on_stale_trial=on_stale_trial if heartbeat_interval else None,
        )
    except (StoreUnavailable, StoreDamaged):
        raise
    except Exception as error:  # sqlalchemy raises many kinds; the user needs one line (and never the password)
        damage = store_damage(error)
        if damage is not None:
            raise StoreDamaged(f"Optuna storage {redact(storage_url)} cannot be used: {damage}") from None
        raise InvalidArgument(
            f"cannot open Optuna storage {redact(storage_url)}: {scrub(first_line(error), storage_url)}"
        ) from None


def _rdb_storage(url: str, **options: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage; workers starting together on an empty database race to create its tables."""
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice
                return optuna.storages.RDBStorage(url, **options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # The losers' CREATE fails on a duplicate name, and a second look finds the tables there.
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


class RetryingStorage(HeartbeatStorage):
    """A PostgreSQL/MySQL storage whose every call waits out a lost database (bounded backoff, a log line a retry).

    It wraps the storage Optuna itself would use (RDBStorage behind its trial cache) and forwards each call
    through ``call_patiently``; after ``max_outage_seconds`` a call raises StoreUnavailable. A lost commit
    acknowledgement (the database dies between committing and answering) can still surface as an error on
    the retry; that window is tiny.
    """

    def __init__(
        self,
        url: str,
        *,
        max_outage_seconds: float = MAX_OUTAGE_SECONDS,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        on_stale_trial: StaleTrialCallback | None = None,
    ) -> None:
        self.url = url
        self.max_outage_seconds = max_outage_seconds
        rdb_storage = self._patiently(  # a database that is down at the start is waited out too
            lambda: _rdb_storage(
                url,
                engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args(url)},
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale_trial,
            )
        )
        self._inner = cached_rdb_storage(rdb_storage)

    def _patiently(self, call: Callable[[], T]) -> T:
        return call_patiently(
            call,
            store="storage",
            label=f"Optuna storage {redact(self.url)}",
            is_transient=database_unreachable,
            max_outage_seconds=self.max_outage_seconds,
            secret_url=self.url,
        )

    # ---- heartbeats ----

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat; past the outage budget, stop quietly (the worker's own next call says why)."""
        try:
            self._patiently(lambda: self._inner.record_heartbeat(trial_id))
        except StoreUnavailable:
            log.debug("heartbeat of trial %d not recorded: the database is unreachable", trial_id)
            raise SystemExit from None  # ends the heartbeat thread without a traceback

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials (no heartbeat for the grace period), less those of live processes of this machine.

        Optuna asks this at every trial's start and the reaper every heartbeat interval; a trial whose worker
        runs here is alive whatever its heartbeat says, so a loaded machine never fails its own trials.
        """
        stale = self._patiently(lambda: rdb_stale_trial_ids(self._inner, study_id))
        return [
            trial_id
            for trial_id in stale
            if not is_live_local_worker(self.get_trial(trial_id).user_attrs.get(WORKER_ATTR))
        ]

    def get_heartbeat_interval(self) -> int | None:
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> StaleTrialCallback | None:
        return self._inner.get_heartbeat_stale_trial_callback()

    # ---- studies ----

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._patiently(lambda: self._inner.create_new_study(directions, study_name))

    def delete_study(self, study_id: int) -> None:
        self._patiently(lambda: self._inner.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._patiently(lambda: self._inner.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._patiently(lambda: self._inner.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._patiently(lambda: self._inner.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._patiently(lambda: self._inner.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._patiently(lambda: self._inner.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._patiently(lambda: self._inner.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._patiently(lambda: self._inner.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._patiently(self._inner.get_all_studies)

    # ---- trials ----

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._patiently(lambda: self._inner.create_new_trial(study_id, template_trial))

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self._patiently(lambda: self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._patiently(lambda: self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self._patiently(lambda: self._inner.set_trial_state_values(trial_id, state, values))

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._patiently(lambda: self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._patiently(lambda: self._inner.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._patiently(lambda: self._inner.set_trial_system_attr(trial_id, key, value))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._patiently(lambda: self._inner.get_trial(trial_id))

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._patiently(lambda: self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._patiently(lambda: self._inner.get_best_trial(study_id))

    def remove_session(self) -> None:
        self._inner.remove_session()
