"""The sweep recipe: an Optuna study whose trials call the engine, tracked in MLflow through callbacks.

Each trial reads as: suggest, build, train, report. Tracking and pruning arrive as engine callbacks.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import multiprocessing
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from tqdm import tqdm

from trainlib.config import SweepConfig
from trainlib.data import DatasetSplits, load_dataset, make_loader
from trainlib.device import resolve_device
from trainlib.engine import EpochResult, TrainingDiverged, evaluate_model, train_model
from trainlib.errors import InvalidArgument, check_non_negative_int, check_positive_int
from trainlib.models import build_model
from trainlib.search import PRUNERS, SAMPLERS, suggest
from trainlib.seeding import seed_everything
from trainlib.stale_trials import (
    WORKER_ATTR,
    StaleTrialReaper,
    is_live_local_worker,
    retried_trial_number,
    wait_for_other_trials,
    worker_identity,
)
from trainlib.stores import (
    GRACE_PERIOD_SECONDS,
    HEARTBEAT_INTERVAL_SECONDS,
    MAX_OUTAGE_SECONDS,
    StoreUnavailable,
    call_patiently,
    is_database_server,
    is_sqlite,
    redact,
    resolve_storage_url,
    resolve_tracking_uri,
    scrub,
)
from trainlib.tracking import NullTracker, SweepTracker, environment_tags

log = logging.getLogger(__name__)

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep command needs, validated: what each worker process receives."""

    config: SweepConfig
    config_file: Path
    n_trials: int
    storage_url: str
    tracking_uri: str | None
    workers: int
    heartbeat_interval: int = HEARTBEAT_INTERVAL_SECONDS  # PostgreSQL/MySQL storages: see open_storage
    grace_period: int = GRACE_PERIOD_SECONDS
    max_outage_seconds: float = MAX_OUTAGE_SECONDS  # how long a worker waits out a lost store before exiting


@dataclass
class SweepSummary:
    """What a sweep command leaves behind, for the CLI to print."""

    study_name: str
    counts: dict[str, int]
    top_trials: pd.DataFrame
    best_params: dict[str, Any] | None
    best_value: float | None
    test_accuracy: float | None
    parent_run_id: str | None
    tracking_uri: str | None
    seconds: float
    report_deferred: bool = False  # other workers are alive and running trials; the last to finish writes the report


_LOST_STORE_EXIT = 3  # a worker process that gave up on a store (the CLI uses the same code)


class _QuietLostStore(logging.Filter):
    """Optuna logs a trial that raised with its traceback; for a lost store our own one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StoreUnavailable))


logging.getLogger("optuna.study._optimize").addFilter(_QuietLostStore())


class SweepInterrupted(Exception):
    """SIGINT stopped the sweep; every run and trial it touched has been closed."""


_interrupt_received = threading.Event()


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: raise KeyboardInterrupt, and remember it (see install_interrupt_handler)."""
    _interrupt_received.set()
    raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    """Make SIGINT and SIGTERM stop the sweep, even where the shell started it with SIGINT ignored.

    Python drops an exception raised while it runs a finalizer or a weakref callback ("Exception ignored in
    ..."), and the sweep's thread runs those whenever it collects garbage (e.g. SQLAlchemy's, made on the
    tracking thread). So the interrupt is also remembered and raised again at the next trial or epoch.
    """
    _interrupt_received.clear()
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _raise_if_interrupted(*_: object) -> None:
    if _interrupt_received.is_set():
        raise KeyboardInterrupt


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
    storage_url = resolve_storage_url(storage)
    if workers > 1 and is_sqlite(storage_url):
        raise InvalidArgument(
            "sqlite storage is not safe with --workers > 1; use the default journal file, journal:///path or postgresql://"
        )
    return SweepPlan(
        config=config,
        config_file=Path(config_file),
        n_trials=n_trials,
        storage_url=storage_url,
        tracking_uri=resolve_tracking_uri(tracking_uri) if tracking else None,
        workers=workers,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_outage_seconds=max_outage_seconds,
    )


def open_storage(
    storage_url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_stale_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    max_outage_seconds: float = MAX_OUTAGE_SECONDS,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``storage_url`` (journal:///file, sqlite, postgresql, mysql).

    PostgreSQL and MySQL storages wait out a lost connection (PatientRDBStorage) and, given a heartbeat
    interval, record heartbeats so that other workers fail (and ``on_stale_trial`` handles) a dead worker's trial.
    """
    if storage_url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage_url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if is_sqlite(storage_url):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        if not is_database_server(storage_url):
            return optuna.storages.RDBStorage(storage_url, engine_kwargs={"pool_pre_ping": True})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice
            return PatientRDBStorage(
                storage_url,
                max_outage_seconds=max_outage_seconds,
                engine_kwargs={"pool_pre_ping": True, "connect_args": _connect_args(storage_url)},
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period if heartbeat_interval else None,
                heartbeat_stale_trial_callback=on_stale_trial if heartbeat_interval else None,
            )
    except Exception as error:  # sqlalchemy raises many kinds; the user needs one line (and never the password)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidArgument(
            f"cannot open Optuna storage {redact(storage_url)}: {scrub(first_line, storage_url)}"
        ) from None


def _connect_args(storage_url: str) -> dict[str, int]:
    """Driver options so a lost database shows up as an error within seconds, never as a hang."""
    if storage_url.startswith(("postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://")):
        # libpq: give up connecting after 10 s; notice a silently dead server on an idle connection within ~30 s.
        return {"connect_timeout": 10, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
    if storage_url.startswith(("mysql://", "mysql+pymysql://", "mysql+mysqldb://")):
        return {"connect_timeout": 10}
    return {}


def _database_unreachable(error: BaseException) -> bool:
    """True when ``error`` (or what caused it) is a lost or refused database connection, not a bad query."""
    import sqlalchemy.exc

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class PatientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls wait out a lost database (bounded backoff, one log line per retry).

    After ``max_outage_seconds`` a call raises StoreUnavailable. A lost commit acknowledgement (the database
    dies between committing and answering) can still surface as an error on the retry; that window is tiny.
    """

    def __init__(self, url: str, *, max_outage_seconds: float = MAX_OUTAGE_SECONDS, **kwargs: Any) -> None:
        import sqlalchemy.exc

        self.max_outage_seconds = max_outage_seconds
        for attempt in range(5):
            try:
                super().__init__(url, **kwargs)
                return
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers starting together on an empty database race to create Optuna's tables; the losers'
                # CREATE fails on a duplicate name, and a second look finds the tables there.
                if attempt == 4:
                    raise
                time.sleep(0.5 + attempt)

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat; past the outage budget, stop quietly (the worker's own next call says why)."""
        try:
            self._patiently(lambda: optuna.storages.RDBStorage.record_heartbeat(self, trial_id))
        except StoreUnavailable:
            log.debug("heartbeat of trial %d not recorded: the database is unreachable", trial_id)
            raise SystemExit from None  # ends the heartbeat thread without a traceback

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials (no heartbeat for the grace period), less those of live processes of this machine.

        Optuna asks this at every trial's start and the reaper every heartbeat interval; a trial whose worker
        runs here is alive whatever its heartbeat says, so a loaded machine never fails its own trials.
        """
        stale = self._patiently(lambda: optuna.storages.RDBStorage._get_stale_trial_ids(self, study_id))
        return [
            trial_id
            for trial_id in stale
            if not is_live_local_worker(self.get_trial_user_attrs(trial_id).get(WORKER_ATTR))
        ]

    def _patiently(self, call: Callable[[], Any]) -> Any:
        return call_patiently(
            call,
            store="storage",
            label=f"Optuna storage {redact(self.url)}",
            is_transient=_database_unreachable,
            max_outage_seconds=self.max_outage_seconds,
            secret_url=self.url,
        )


def _patient_method(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def patient(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._patiently(lambda: method(self, *args, **kwargs))

    return patient


# Every storage call a worker makes while optimizing, and the heartbeat thread's two.
for _name in (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
):
    setattr(PatientRDBStorage, _name, _patient_method(_name))


def open_study(plan: SweepPlan, worker_index: int = 0) -> tuple[optuna.Study, bool]:
    """Create the study, or load it to resume; returns (study, whether this call created it).

    With ``--n-trials 0`` the study must exist: such a command only finishes it (see stale_trials).
    """
    settings = plan.config.study
    if plan.n_trials == 0:
        _check_study_exists(plan)
    storage = open_storage(
        plan.storage_url,
        heartbeat_interval=plan.heartbeat_interval,
        grace_period=plan.grace_period,
        on_stale_trial=_OnStaleTrial(plan),
        max_outage_seconds=plan.max_outage_seconds,
    )
    pruner = PRUNERS[settings.pruner](settings.pruner_startup_trials, settings.pruner_warmup_epochs)
    try:
        study = optuna.create_study(
            storage=storage, pruner=pruner, study_name=settings.name, direction=settings.direction
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, pruner=pruner, study_name=settings.name)
        created = False
        if study.direction.name.lower() != settings.direction:
            raise InvalidArgument(
                f"study {settings.name!r} exists with direction {study.direction.name.lower()}, "
                f"the config says {settings.direction}"
            ) from None
    # A resumed study or a second worker must not replay the first command's random draws. Commands that join
    # at the same moment (other machines) see the same trial count, so a joiner's seed also gets a random part;
    # only the command that creates a study draws reproducibly.
    seed_offset = len(study.get_trials(deepcopy=False)) + 10_007 * worker_index
    if not created:
        seed_offset += secrets.randbits(30)
    study.sampler = SAMPLERS[settings.sampler](settings.seed + seed_offset)
    return study, created


def _check_study_exists(plan: SweepPlan) -> None:
    """Raise InvalidArgument unless the study exists (checked without creating a journal file)."""
    name, url = plan.config.study.name, plan.storage_url
    missing = InvalidArgument(
        f"study {name!r} not found in {redact(url)}; --n-trials 0 finishes an existing study "
        "(retries its dead workers' trials, writes its report), give --n-trials 1 or more to start one"
    )
    for prefix in ("journal://", "sqlite:///"):
        if url.startswith(prefix) and not Path(url.removeprefix(prefix)).exists():
            raise missing
    if name not in optuna.get_all_study_names(open_storage(url, max_outage_seconds=plan.max_outage_seconds)):
        raise missing


def uses_heartbeats(plan: SweepPlan) -> bool:
    """True where running trials record heartbeats, so a dead worker's trial is found (PostgreSQL, MySQL)."""
    return is_database_server(plan.storage_url)


class _OnStaleTrial:
    """A trial's worker died (no heartbeat for the grace period): retry the trial once, end its run as KILLED."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        self.tracker: SweepTracker | None = None
        self._lock = threading.Lock()  # called from the reaper thread and from Optuna at each trial's start

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retried = len(trial.system_attrs.get("retry_history", []))
        reason = f"its worker sent no heartbeat for {self.plan.grace_period} s (killed, or lost its machine)"
        log.warning("trial %d failed: %s; %s", trial.number, reason, "retrying it" if not retried else "not retried")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, trial)
        if self.plan.tracking_uri is not None:
            with self._lock:
                if self.tracker is None:
                    self.tracker = SweepTracker(self.plan.tracking_uri, study.study_name, self.plan.max_outage_seconds)
                self.tracker.end_lost_trial(study, trial, reason)


@functools.lru_cache(maxsize=4)
def _load_splits(dataset: str, seed: int, val_fraction: float, num_samples: int | None) -> DatasetSplits:
    return load_dataset(dataset, seed=seed, val_fraction=val_fraction, num_samples=num_samples)


def run_trial(
    trial: optuna.Trial, config: SweepConfig, splits: DatasetSplits, device: torch.device, tracker: Any
) -> float:
    """One trial: suggest hyperparameters, build the model, train it with tracking and pruning callbacks."""
    _raise_if_interrupted()
    trial.set_user_attr(WORKER_ATTR, worker_identity())  # its own machine never fails it as stale while it runs
    params = suggest(trial, config.search)
    seed_everything(config.training.seed + trial.number)
    model = build_model(config.model.name, splits.num_features, splits.num_classes, **config.model.options())
    optimizer_options = {key: params[key] for key in params if key not in ("lr", "batch_size", "optimizer")}
    train_loader = make_loader(
        splits.train, params["batch_size"], True, config.data.num_workers, device=device, seed=trial.number
    )
    val_loader = make_loader(splits.val, config.data.eval_batch_size, False, device=device)
    metric, maximize = config.study.metric, config.study.direction == "maximize"
    best = _BestEpoch(model, metric, maximize)

    def report(result: EpochResult) -> None:
        value = result.metrics()[metric]
        trial.report(value, result.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch} ({metric}={value:.4f})")

    with tracker.trial_run(trial, params) as trial_run:
        train_model(
            model,
            train_loader,
            val_loader,
            config.training.epochs,
            params["lr"],
            device,
            optimizer=params["optimizer"],
            callbacks=[_raise_if_interrupted, trial_run.log_epoch, best.update, report],
            optimizer_options=optimizer_options,
            divergence_threshold=config.training.divergence_threshold,
        )
        tracker.log_trial_result(trial_run, metric, best.value, best.weights)
    return best.value


class _BestEpoch:
    """Callback keeping the best epoch's metric and a CPU copy of its weights."""

    def __init__(self, model: torch.nn.Module, metric: str, maximize: bool) -> None:
        self.model, self.metric, self.maximize = model, metric, maximize
        self.value = -math.inf if maximize else math.inf
        self.weights: dict[str, torch.Tensor] = {}

    def update(self, result: EpochResult) -> None:
        value = result.metrics()[self.metric]
        if (value > self.value) if self.maximize else (value < self.value):
            self.value = value
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}


def _make_tracker(plan: SweepPlan) -> SweepTracker | NullTracker:
    if plan.tracking_uri is None:
        return NullTracker()
    return SweepTracker(plan.tracking_uri, plan.config.study.name, plan.max_outage_seconds)


def _optimize(
    study: optuna.Study,
    plan: SweepPlan,
    tracker: Any,
    new_trials: int,
    on_trial: Callable[..., None] | None = None,
) -> None:
    """Run ``new_trials`` new trials; retries of dead workers' trials that come this way run in addition."""
    if new_trials > 0:
        _run_trials(study, plan, tracker, [_NewTrialBudget(new_trials), *([on_trial] if on_trial else [])])


def _run_one_trial(study: optuna.Study, plan: SweepPlan, tracker: Any) -> None:
    """Run one trial, a waiting one (a retry) first; used once this command's share is done."""
    _run_trials(study, plan, tracker, [], n_trials=1)


def _run_trials(
    study: optuna.Study,
    plan: SweepPlan,
    tracker: Any,
    callbacks: list[Callable[..., None]],
    n_trials: int | None = None,
) -> None:
    config = plan.config
    device = resolve_device(config.training.device)
    data = config.data
    splits = _load_splits(data.dataset, config.training.seed, data.val_fraction, data.num_samples)
    objective = functools.partial(run_trial, config=config, splits=splits, device=device, tracker=tracker)
    callbacks = [functools.partial(tracker.on_trial_finished, metric=config.study.metric), *callbacks]
    study.optimize(objective, n_trials=n_trials, catch=(TrainingDiverged,), callbacks=callbacks)


class _NewTrialBudget:
    """Optuna callback: stop the study's optimize loop once ``n`` trials that are not retries have finished.

    Optuna runs a waiting trial (a dead worker's, enqueued for retry) before it draws a new one, and would count
    it against ``n_trials``; here a retry replaces the lost trial, so --n-trials new trials still run.
    """

    def __init__(self, n: int) -> None:
        self.remaining = n

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if retried_trial_number(trial) is None:
            self.remaining -= 1
        if self.remaining <= 0:
            study.stop()


def _worker_main(plan: SweepPlan, worker_index: int, n_trials: int, threads: int, parent_run_id: str | None) -> None:
    """Entry point of one worker process: its share of the trials on the shared study."""
    install_interrupt_handler()
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _ = open_study(plan, worker_index)
    tracker = _make_tracker(plan)
    if parent_run_id is not None:
        tracker.attach(parent_run_id)
    # On SIGINT the interrupted trial and its run are closed on the way out; the parent process reports it.
    with contextlib.suppress(KeyboardInterrupt):
        try:
            _optimize(study, plan, tracker, n_trials)
        except StoreUnavailable as lost:
            log.error("%s", lost)
            sys.exit(_LOST_STORE_EXIT)
        except KeyboardInterrupt:
            tracker.flush()
            raise
        tracker.flush()  # this worker's queued logging (the parent's best value so far) reaches the store


def run_sweep(plan: SweepPlan, show_progress: bool = True) -> SweepSummary:
    """Run ``plan.n_trials`` trials of the study (in ``plan.workers`` processes) and record the summary."""
    started = time.perf_counter()
    config = plan.config
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, created = open_study(plan)
    tracker = _make_tracker(plan)
    device = resolve_device(config.training.device)
    fixed_params = _fixed_params(config)
    tags = environment_tags(device, plan.storage_url, config.study.sampler, config.study.pruner)
    tracker.start_sweep(study, created, fixed_params, tags, plan.config_file)  # on the tracking thread
    already_finished = _count_finished(study)
    progress = tqdm(total=plan.n_trials, desc=f"study {config.study.name}", unit="trial", disable=not show_progress)
    try:
        with _reaper(study, plan) as reaper:
            if plan.workers == 1:
                _optimize(study, plan, tracker, plan.n_trials, on_trial=lambda s, t: _advance(progress, s, t))
            else:
                _run_workers(plan, tracker.parent_run_id, study, progress, already_finished)
            last_alive = _finish_study(study, plan, tracker, reaper)
    except KeyboardInterrupt:
        progress.close()
        tracker.end_sweep("KILLED")
        raise SweepInterrupted(config.study.name) from None
    except StoreUnavailable as lost:
        progress.close()
        if lost.store == "storage":  # the tracking server can still be told; one that is gone cannot
            tracker.end_sweep("FAILED")
        raise
    except BaseException:
        progress.close()
        tracker.end_sweep("FAILED")
        raise
    progress.close()
    summary = _summarize(study, plan, tracker, started, report=last_alive)
    tracker.end_sweep("FINISHED" if last_alive else None)  # else the last live command ends the parent run
    return summary


def _reaper(study: optuna.Study, plan: SweepPlan) -> contextlib.AbstractContextManager[StaleTrialReaper | None]:
    """While the command lives, fail dead workers' trials every heartbeat interval (heartbeat storages only)."""
    return StaleTrialReaper(study, plan.heartbeat_interval) if uses_heartbeats(plan) else contextlib.nullcontext()


def _finish_study(study: optuna.Study, plan: SweepPlan, tracker: Any, reaper: StaleTrialReaper | None) -> bool:
    """After this command's share: wait for other workers' trials, retry dead ones; True if this command reports.

    Without heartbeats a dead worker cannot be told from a live one, so every command writes the report.
    """
    if reaper is None:
        return True
    return wait_for_other_trials(
        study,
        reaper,
        grace_period=plan.grace_period,
        heartbeat_interval=plan.heartbeat_interval,
        run_retry=lambda: _run_one_trial(study, plan, tracker),
        before_poll=_raise_if_interrupted,
    )


def _advance(progress: tqdm, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if retried_trial_number(trial) is not None:
        progress.total += 1  # a dead worker's trial, run again in addition
    progress.update(1)
    _show_best(progress, study)


def _show_best(progress: tqdm, study: optuna.Study) -> None:
    with contextlib.suppress(ValueError):  # no complete trial yet
        progress.set_postfix(best=f"{study.best_value:.4f}")


def _count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def _run_workers(
    plan: SweepPlan, parent_run_id: str | None, study: optuna.Study, progress: tqdm, baseline: int
) -> None:
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // plan.workers)
    shares = [plan.n_trials // plan.workers + (i < plan.n_trials % plan.workers) for i in range(plan.workers)]
    processes = [
        context.Process(target=_worker_main, args=(plan, index, share, threads, parent_run_id), name=f"worker-{index}")
        for index, share in enumerate(shares)
        if share > 0
    ]
    for process in processes:
        process.start()
    try:
        while any(process.is_alive() for process in processes):
            time.sleep(1.0)
            _show_progress(progress, study, baseline)
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    _show_progress(progress, study, baseline)
    lost = [process.name for process in processes if process.exitcode == _LOST_STORE_EXIT]
    if lost:
        raise StoreUnavailable(f"worker processes {', '.join(lost)} gave up on an unreachable store (see above)", "")
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker processes {', '.join(failed)} exited with an error; see the log above")


def _show_progress(progress: tqdm, study: optuna.Study, baseline: int) -> None:
    done = min(_count_finished(study) - baseline, progress.total)
    progress.update(done - progress.n)
    _show_best(progress, study)


def _fixed_params(config: SweepConfig) -> dict[str, Any]:
    """The settings every trial shares, flattened for MLflow params (the search space as text)."""
    dumped = config.model_dump()
    flat: dict[str, Any] = {}
    for section in ("study", "data", "model", "training"):
        for key, value in dumped[section].items():
            flat[f"{section}.{key}"] = value
    for key, value in dumped["search"].items():
        flat[f"search.{key}"] = value
    return flat


def _summarize(study: optuna.Study, plan: SweepPlan, tracker: Any, started: float, report: bool) -> SweepSummary:
    trials = study.get_trials(deepcopy=False)
    counts = {
        name: sum(trial.state == state for trial in trials)
        for name, state in zip(("complete", "pruned", "failed"), FINISHED_STATES, strict=True)
    }
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration"))
    if len(frame):
        frame["seconds"] = frame.pop("duration").dt.total_seconds().round(1)
        frame.columns = [column.removeprefix("params_") for column in frame.columns]
    complete = frame[frame["state"] == "COMPLETE"] if len(frame) else frame
    ascending = plan.config.study.direction == "minimize"
    top = complete.sort_values("value", ascending=ascending).head(10) if len(complete) else complete
    best_trial = study.best_trial if counts["complete"] else None
    test_accuracy = None
    files: list[Path] = []
    if best_trial is not None and report:  # first: the tracking thread logs the model while the report is drawn
        test_accuracy = _test_best_model(best_trial, plan.config, tracker)
    with tempfile.TemporaryDirectory(prefix="trainlib-report-") as folder_name:
        folder = Path(folder_name)
        if len(frame) and report:
            csv_path = folder / "trials.csv"
            study.trials_dataframe().to_csv(csv_path, index=False)
            files.append(csv_path)
            files.extend(_plot_study(study, folder))
        tracker.log_summary(counts, files)
    return SweepSummary(
        study_name=study.study_name,
        counts=counts,
        top_trials=top,
        best_params=best_trial.params if best_trial else None,
        best_value=best_trial.value if best_trial else None,
        test_accuracy=test_accuracy,
        parent_run_id=tracker.parent_run_id,
        tracking_uri=plan.tracking_uri,
        seconds=time.perf_counter() - started,
        report_deferred=not report,
    )


def _plot_study(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's plots as PNG files; a plot that needs more trials than exist is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "optimization_history": optuna_plots.plot_optimization_history,
        "param_importances": optuna_plots.plot_param_importances,
        "parallel_coordinate": optuna_plots.plot_parallel_coordinate,
        "slice": optuna_plots.plot_slice,
    }
    written = []
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" notices and small-sample caveats, every run
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            log.info("skipped plot %s: %s", name, error)
            continue
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        figure.set_size_inches(10, 6)
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def _test_best_model(best_trial: optuna.trial.FrozenTrial, config: SweepConfig, tracker: Any) -> float | None:
    """Rebuild the best trial's best epoch and measure it once on the held-out test split."""
    weights = tracker.load_trial_weights(best_trial)
    if weights is None:
        log.warning("best trial %d logged no weights; no test accuracy", best_trial.number)
        return None
    data = config.data
    splits = _load_splits(data.dataset, config.training.seed, data.val_fraction, data.num_samples)
    model = build_model(config.model.name, splits.num_features, splits.num_classes, **config.model.options())
    model.load_state_dict(weights)
    test_loader = make_loader(splits.test, data.eval_batch_size, False)
    _, test_accuracy = evaluate_model(model, test_loader, torch.nn.CrossEntropyLoss(), "cpu")
    example = splits.test.tensors[0][:5].clone()
    tracker.log_best_model(model, example, test_accuracy, best_trial.number)
    return test_accuracy
