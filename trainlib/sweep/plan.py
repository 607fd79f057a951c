"""A sweep command's plan: every command-line choice checked, and the stores resolved, before anything is created."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from trainlib.errors import InvalidArgument, check_non_negative_int, check_positive_int
from trainlib.store_failures import (
    GRACE_PERIOD_SECONDS,
    HEARTBEAT_INTERVAL_SECONDS,
    MAX_OUTAGE_SECONDS,
    check_store_file,
    check_store_folder,
)
from trainlib.stores import (
    artifact_folder_name,
    is_database_server,
    is_sqlite,
    local_artifact_root,
    resolve_storage_url,
    resolve_tracking_uri,
    sqlite_path,
)
from trainlib.sweep.config import SweepConfig
from trainlib.workload import Workload


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep command needs, validated: what each worker process receives."""

    config: SweepConfig
    config_file: Path
    n_trials: int
    storage_url: str
    tracking_uri: str | None  # None: --no-tracking
    workers: int
    heartbeat_interval: int = HEARTBEAT_INTERVAL_SECONDS  # PostgreSQL/MySQL storages only
    grace_period: int = GRACE_PERIOD_SECONDS
    max_outage_seconds: float = MAX_OUTAGE_SECONDS  # how long a worker waits out a lost store before exiting
    time_budget_seconds: float | None = None  # no trial starts once this much time has passed since the start
    deadline: float | None = None  # time.time() at which the budget is spent; set when the command starts
    reevaluate_top: int = 0  # retrain the top K configurations ...
    reevaluate_seeds: int = 3  # ... with this many new seeds each, before the pick

    @property
    def workload(self) -> Workload:
        """The model and data the study trains; relative paths and modules resolve from the study file's folder."""
        return self.config.workload(self.config_file.parent.resolve())

    @property
    def uses_heartbeats(self) -> bool:
        """True where running trials record heartbeats, so a dead worker's trial is found (PostgreSQL, MySQL)."""
        return is_database_server(self.storage_url)


def plan_sweep(
    config: SweepConfig,
    config_file: str | Path,
    *,
    n_trials: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    workers: int = 1,
    tracking: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_SECONDS,
    grace_period: int = GRACE_PERIOD_SECONDS,
    max_outage_seconds: int = MAX_OUTAGE_SECONDS,
    time_budget_seconds: float | None = None,
    reevaluate_top: int | None = None,
    reevaluate_seeds: int | None = None,
) -> SweepPlan:
    """Check every command-line choice before anything is created; raise InvalidArgument on the first bad one."""
    n_trials = config.study.n_trials if n_trials is None else n_trials
    check_non_negative_int("--n-trials", n_trials)
    check_positive_int("--workers", workers)
    check_positive_int("--heartbeat-interval", heartbeat_interval)
    check_positive_int("--grace-period", grace_period)
    check_positive_int("--max-outage", max_outage_seconds)
    if grace_period <= heartbeat_interval:
        raise InvalidArgument(
            f"--grace-period ({grace_period} s) must be longer than --heartbeat-interval ({heartbeat_interval} s), "
            "or live trials would be failed between two heartbeats"
        )
    settings = config.study
    budget = settings.time_budget_seconds if time_budget_seconds is None else time_budget_seconds
    if budget is not None and (not isinstance(budget, (int, float)) or not 0 < budget < math.inf):
        raise InvalidArgument(f"--time-budget {budget}: give a positive number of seconds")
    reevaluate_top = settings.reevaluate_top if reevaluate_top is None else reevaluate_top
    reevaluate_seeds = settings.reevaluate_seeds if reevaluate_seeds is None else reevaluate_seeds
    check_non_negative_int("--reevaluate", reevaluate_top)
    check_positive_int("--seeds", reevaluate_seeds)
    if reevaluate_seeds < 2:
        raise InvalidArgument(f"--seeds {reevaluate_seeds}: a mean and standard deviation need 2 seeds or more")
    storage_url = resolve_storage_url(storage)
    if workers > 1 and is_sqlite(storage_url):
        raise InvalidArgument(
            "sqlite storage is not safe with --workers > 1; use the default journal file, journal:///path or postgresql://"
        )
    resolved_tracking_uri = resolve_tracking_uri(tracking_uri) if tracking else None
    check_local_stores(storage_url, resolved_tracking_uri, config.study.name)
    return SweepPlan(
        config=config,
        config_file=Path(config_file),
        n_trials=n_trials,
        storage_url=storage_url,
        tracking_uri=resolved_tracking_uri,
        workers=workers,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_outage_seconds=max_outage_seconds,
        time_budget_seconds=budget,
        reevaluate_top=reevaluate_top,
        reevaluate_seeds=reevaluate_seeds,
    )


def check_local_stores(storage_url: str, tracking_uri: str | None, study_name: str) -> None:
    """Files and folders of local stores: right paths (InvalidArgument) and writable (StoreDamaged), before any use."""
    if storage_url.startswith("journal:"):
        check_store_file(Path(storage_url.removeprefix("journal://")), "Optuna journal")
    elif (storage_file := sqlite_path(storage_url)) is not None:
        check_store_file(storage_file, "Optuna storage")
    if tracking_uri is not None and (tracking_file := sqlite_path(tracking_uri)) is not None:
        check_store_file(tracking_file, "MLflow store")
        check_store_folder(local_artifact_root(), "MLflow artifact folder", name=artifact_folder_name(study_name))
