"""The study: create or resume it, seed its sampler, publish its MLflow parent run, and handle dead workers' trials."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from trainlib.data_files import file_sha256
from trainlib.errors import InvalidArgument
from trainlib.stores import redact
from trainlib.sweep.plan import SweepPlan
from trainlib.sweep.search import PRUNERS, SAMPLERS, search_distributions
from trainlib.sweep.stale_trials import fail_dead_local_trials
from trainlib.sweep.storage import open_storage
from trainlib.tracking import MlflowTracker
from trainlib.workload import DEFAULT_VAL_FRACTION

log = logging.getLogger(__name__)

# Attributes trainlib keeps in the Optuna study: the MLflow parent run (study) and each trial's run (trial).
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"
DEFINITION_ATTR = "trainlib_definition"  # the dataset and model every trial of the study shares


@dataclass(frozen=True)
class OpenedStudy:
    """A study ready to optimize, the storage it lives in, and whether this command created it."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    created: bool


def open_study(plan: SweepPlan, worker_index: int = 0) -> OpenedStudy:
    """Create the study, or load it to resume: checked against the config, dead local commands' trials failed.

    Raises InvalidArgument, before anything is added to the study, where the config cannot resume it.
    """
    settings = plan.config.study
    storage = open_storage(
        plan.storage_url,
        heartbeat_interval=plan.heartbeat_interval,
        grace_period=plan.grace_period,
        on_stale_trial=StaleTrialHandler(plan),
        max_outage_seconds=plan.max_outage_seconds,
    )
    # Several objectives: Optuna cannot prune (optuna#3450); the objective's CurvePruner applies the rule instead.
    pruner_name = "none" if settings.multi_objective else settings.pruner
    pruner = PRUNERS[pruner_name](settings.pruner_startup_trials, settings.pruner_warmup_epochs)
    try:
        study = optuna.create_study(
            storage=storage, pruner=pruner, study_name=settings.name, directions=settings.directions
        )
        created = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(settings.metric_names)  # plots and trials.csv name the objectives
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, pruner=pruner, study_name=settings.name)
        created = False
        check_objectives_match(study, plan)
        check_study_matches(study, plan)
        if not plan.uses_heartbeats:  # a journal or sqlite study: trials of killed local commands are failed now
            handler = StaleTrialHandler(plan, reason="its command is gone (killed, or crashed mid-write)")
            fail_dead_local_trials(study, storage, handler)
    if study.user_attrs.get(DEFINITION_ATTR) is None:
        study.set_user_attr(DEFINITION_ATTR, study_definition(plan))
    # A resumed study or a second worker must not replay the first command's random draws. Commands that join
    # at the same moment (other machines) see the same trial count, so a joiner's seed also gets a random part;
    # only the command that creates a study draws reproducibly.
    seed_offset = len(study.get_trials(deepcopy=False)) + 10_007 * worker_index
    if not created:
        seed_offset += secrets.randbits(30)
    study.sampler = SAMPLERS[settings.sampler](settings.seed + seed_offset)
    return OpenedStudy(study, storage, created)


def study_definition(plan: SweepPlan) -> dict[str, Any]:
    """What a study's trials must share to be compared: the data (a file by its content) and its split, the model."""
    workload = plan.workload
    options = dict(workload.data_options)
    if workload.data_kind == "dataset":  # as studies recorded it before files and factories existed
        recorded_data = {"dataset": workload.data, "val_fraction": options.get("val_fraction", DEFAULT_VAL_FRACTION)}
        recorded_data["num_samples"] = options.get("num_samples")
    elif workload.data_kind == "path":
        path = workload.data_file()
        recorded_data = {"path": path.name, "sha256": file_sha256(path), **options}
    else:
        recorded_data = {"factory": workload.data, **options}
    return {"data": recorded_data, "model": plan.config.model.model_dump(exclude_none=True)}


def check_objectives_match(study: optuna.Study, plan: SweepPlan) -> None:
    """Raise InvalidArgument if the study was created with other objectives than the config's."""
    settings = plan.config.study
    directions = [direction.name.lower() for direction in study.directions]
    recorded = study.metric_names
    if recorded is None and len(directions) == 1 and not settings.multi_objective:
        recorded = [settings.metric_names[0]] if directions == settings.directions else None  # before names existed
    if recorded != settings.metric_names or directions != settings.directions:
        raise InvalidArgument(
            f"study {settings.name!r} optimises {_objectives_text(recorded, directions)}, the config says "
            f"{_objectives_text(settings.metric_names, settings.directions)}; give a new --study-name"
        )


def _objectives_text(metrics: list[str] | None, directions: list[str]) -> str:
    names = metrics or ["?"] * len(directions)
    return ", ".join(f"{name} ({direction})" for name, direction in zip(names, directions, strict=True))


def check_study_matches(study: optuna.Study, plan: SweepPlan) -> None:
    """Raise InvalidArgument if ``plan`` cannot resume ``study``: other data or another model, or search choices
    that Optuna cannot mix with the earlier trials' (e.g. a changed list of batch sizes)."""
    config = plan.config
    recorded = study.user_attrs.get(DEFINITION_ATTR)
    current = study_definition(plan)
    for section in ("data", "model"):
        if recorded is not None and recorded.get(section) != current[section]:
            raise InvalidArgument(
                f"study {study.study_name!r} was run with [{section}] {recorded.get(section)}, the config has "
                f"{current[section]}; its trials could not be compared: give a new --study-name"
            )
    new = search_distributions(config.search)
    for trial in reversed(study.get_trials(deepcopy=False)):
        if not new:
            break
        for name, old in trial.distributions.items():
            if name in new:
                try:
                    optuna.distributions.check_distribution_compatibility(old, new.pop(name))
                except ValueError:
                    raise InvalidArgument(
                        f"study {study.study_name!r} drew {name} from {_choices(old)}, the config says "
                        f"{_choices(search_distributions(config.search)[name])}; Optuna cannot mix them in one "
                        "study: restore the earlier choices or give a new --study-name"
                    ) from None


def _choices(distribution: optuna.distributions.BaseDistribution) -> str:
    choices = getattr(distribution, "choices", None)
    return str(list(choices)) if choices is not None else repr(distribution)


def check_study_exists(plan: SweepPlan) -> None:
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


class StudyParentSlot:
    """Where a study publishes its MLflow parent run (implements trainlib.tracking.ParentRunSlot).

    The claim is a second study: creating a study is atomic in every Optuna storage (a unique name in the
    database, a lock on the journal file), so at most one command, on any machine, holds it at a time.
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
        self.study = study
        self.storage = storage
        self.claim_name = f"{study.study_name}:mlflow-parent-claim"  # ':' cannot occur in a config's study name

    def published(self) -> str | None:
        return self.study.user_attrs.get(PARENT_RUN_ATTR)  # read from the storage at each call

    @contextlib.contextmanager
    def claim(self) -> Iterator[bool]:
        try:
            claim_id = self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], self.claim_name)
        except optuna.exceptions.DuplicatedStudyError:
            yield False
            return
        try:
            yield True
        finally:
            self.storage.delete_study(claim_id)

    def publish(self, run_id: str) -> None:
        self.study.set_user_attr(PARENT_RUN_ATTR, run_id)

    def claim_hint(self) -> str:
        return f"delete study {self.claim_name!r} (optuna delete-study)"


class StaleTrialHandler:
    """A trial's worker died (no heartbeat for the grace period): retry the trial once, end its run as KILLED.

    Called from the reaper thread and from Optuna at each trial's start, hence the lock.
    """

    def __init__(self, plan: SweepPlan, reason: str | None = None) -> None:
        self.plan = plan
        self.reason = reason or f"its worker sent no heartbeat for {plan.grace_period} s (killed, or lost its machine)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        self.tracker: MlflowTracker | None = None  # its own, made on first use: the sweep's may be busy
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retried = len(trial.system_attrs.get("retry_history", []))
        reason = self.reason
        log.warning("trial %d failed: %s; %s", trial.number, reason, "retrying it" if not retried else "not retried")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, trial)
        if self.plan.tracking_uri is not None:
            with self._lock:
                if self.tracker is None:
                    self.tracker = MlflowTracker(self.plan.tracking_uri, study.study_name, self.plan.max_outage_seconds)
                self.tracker.end_lost_trial(study.study_name, trial.number, trial.user_attrs.get(RUN_ID_ATTR), reason)
