"""Trials whose worker died: fail them, retry them once, and decide which command writes the study's report.

With a PostgreSQL or MySQL storage every running trial records a heartbeat every ``--heartbeat-interval``
seconds. A trial silent for ``--grace-period`` seconds belongs to a dead worker (SIGKILL, a lost machine): it
is failed, and the storage's stale-trial callback enqueues one retry with the same parameters. The rule, also
in docs/scale-out.md:

1. Every live command reaps: a ``StaleTrialReaper`` thread fails silent trials every heartbeat interval,
   whether or not any trial starts later (Optuna itself only looks when a trial starts).
2. A command that has run its share does not end while the study may still need it
   (``wait_for_other_trials``): it watches the trials other commands are running. One that completes or is
   pruned proves its worker alive, and so does a trial that starts meanwhile: that worker ends the study, and
   this command leaves. A silent one is reaped within the grace period plus a margin, and this command runs
   the retry itself. When nothing is running or waiting any more, this command is the last one alive: it
   writes the report, logs the best model and ends the parent run.
3. If every command died, the next command on the study (``trainlib sweep CONFIG --n-trials 0``) does step 2.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import optuna
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

# A silent trial is reaped within grace + one heartbeat interval (the reaper's period); the rest is slack for
# a loaded machine (storage calls that take seconds).
REAP_MARGIN_SECONDS = 10.0
POLL_SECONDS = 1.0
# Trial user attribute naming the process that runs the trial (see worker_identity).
WORKER_ATTR = "worker"


def worker_identity(pid: int | None = None) -> str:
    """'host:pid@boot' for a process of this machine (this one by default); the boot id tells reboots apart."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}@{_boot_id()}"


def is_live_local_worker(identity: object) -> bool:
    """True when ``identity`` (a trial's WORKER_ATTR) names a process of this machine that is still running.

    Such a trial is never failed as stale: its heartbeat is late (a starved thread, a slow database), and its
    worker is not dead. A killed process is gone (or a zombie) at once, so its trial can be reaped.
    """
    if not isinstance(identity, str) or "@" not in identity or ":" not in identity:
        return False
    place, boot = identity.rsplit("@", 1)
    host, pid_text = place.rsplit(":", 1)
    if host != socket.gethostname() or boot != _boot_id() or not pid_text.isdigit():
        return False
    return _process_running(int(pid_text))


def is_dead_local_worker(identity: object) -> bool:
    """True when ``identity`` names a process of this machine that has ended (or ran before the last reboot)."""
    if not isinstance(identity, str) or "@" not in identity or ":" not in identity:
        return False
    host = identity.rsplit("@", 1)[0].rsplit(":", 1)[0]
    return host == socket.gethostname() and not is_live_local_worker(identity)


def fail_dead_local_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, on_failed: Callable[[optuna.Study, FrozenTrial], None]
) -> list[int]:
    """Fail the running trials whose worker was a process of this machine that is gone; return their numbers.

    For storages without heartbeats (journal, sqlite): a command killed with SIGKILL, or a journal record cut
    off by a crash, leaves a trial RUNNING that no heartbeat will ever expose. ``on_failed`` retries it once
    and ends its run, as for a heartbeat-stale trial. Trials of other machines are left alone.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead_local_worker(trial.user_attrs.get(WORKER_ATTR)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except RuntimeError:  # another command failed it first (Optuna refuses to update a finished trial)
            continue
        on_failed(study, storage.get_trial(trial_id))
        failed.append(trial.number)
    return failed


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _process_running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # field 3, after the command name
    except OSError:
        if Path("/proc/self/stat").exists():
            return False  # Linux, and no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retried_trial_number(trial: FrozenTrial) -> int | None:
    """The number of the dead trial that ``trial`` retries, or None when it is not a retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the study's trials whose heartbeat is older than the grace period; the storage's callback retries them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class StaleTrialReaper:
    """A thread that fails stale trials every ``interval_seconds`` while the command lives (a context manager).

    A reaping is two steps (fail the trial, then the callback enqueues its retry); ``lock`` is held across both,
    so a thread holding it sees no trial failed whose retry is not enqueued yet.
    """

    def __init__(self, study: optuna.Study, interval_seconds: float) -> None:
        self.study = study
        self.interval_seconds = interval_seconds
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainlib-reaper", daemon=True)

    def __enter__(self) -> StaleTrialReaper:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        # A reaping in progress (failing a trial, enqueuing its retry, ending its MLflow run) is let finish.
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.reap()
            except Exception as error:  # a lost store is the sweep's to report, not this thread's
                log.warning("could not look for dead workers' trials: %s", error)

    def reap(self) -> None:
        """Fail the stale trials now (their retries enqueued), holding ``lock``."""
        with self.lock:
            fail_stale_trials(self.study)


def wait_for_other_trials(
    study: optuna.Study,
    reaper: StaleTrialReaper,
    *,
    grace_period: float,
    heartbeat_interval: float,
    run_retry: Callable[[], None],
    before_poll: Callable[[], None] = lambda: None,
    poll_seconds: float = POLL_SECONDS,
    may_start_trials: Callable[[], bool] = lambda: True,
) -> bool:
    """Wait for the trials other commands are running; run retries of dead ones. True: this command is the last.

    Returns False as soon as another command shows it is alive (a watched trial completes or is pruned, or a
    trial starts), or when a watched trial still runs after ``grace_period`` plus a margin (its heartbeat is
    fresh). ``run_retry`` runs one waiting trial in this command, unless ``may_start_trials`` says no (the time
    budget is spent: the retry waits for a later command); ``before_poll`` may raise to stop waiting.
    """
    while True:
        watched = _numbers(study, TrialState.RUNNING)
        deadline = time.monotonic() + grace_period + heartbeat_interval + REAP_MARGIN_SECONDS
        if watched:
            log.info("waiting for trials %s of other workers (dead ones are retried here)", sorted(watched))
        while True:
            before_poll()
            with reaper.lock:  # no reaping half done (failed, retry not yet enqueued) while we look
                fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
            state = {trial.number: trial.state for trial in trials}
            if any(state[number] in (TrialState.COMPLETE, TrialState.PRUNED) for number in watched):
                return False  # its worker is alive; it ends the study
            running = {number for number, now in state.items() if now == TrialState.RUNNING}
            if running - watched:
                return False  # a live worker started a trial (a retry of a dead one, perhaps)
            retries = any(t.state == TrialState.WAITING and retried_trial_number(t) is not None for t in trials)
            if retries and may_start_trials():
                break
            if not running:
                return True
            if time.monotonic() > deadline:
                return False  # still heartbeating: alive
            time.sleep(poll_seconds)
        run_retry()


def _numbers(study: optuna.Study, state: TrialState) -> set[int]:
    return {trial.number for trial in study.get_trials(deepcopy=False, states=(state,))}
