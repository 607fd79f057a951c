"""The path of a metric to the store: a run's buffered log, handed to one tracking thread that writes in order.

An epoch's metrics take two steps: RunLog buffers them on the training thread (coalescing a run's batches into
at most one write every LOG_INTERVAL_SECONDS: each write is a store transaction costing milliseconds of CPU),
and the TrackingThread writes each batch with one patient ``log_batch`` call. Training never waits for the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag

from trainlib.engine import EpochResult

T = TypeVar("T")
LOG_INTERVAL_SECONDS = 2.0
MAX_ITEMS_PER_BATCH, MAX_PARAMS_OR_TAGS_PER_BATCH = 1000, 100  # MLflow's limits for one log_batch


def now_ms() -> int:
    """The time as MLflow stamps metrics: milliseconds since the epoch."""
    return int(time.time() * 1000)


@dataclass
class Batch:
    """Metrics, params and tags for one run, written together."""

    metrics: list[Metric] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params or self.tags)

    def within_limits(self) -> Iterator[Batch]:
        """This batch cut into batches MLflow accepts (at most 1000 items, 100 of them params and 100 tags)."""
        chunk, size = Batch(), 0
        for kind in ("params", "tags", "metrics"):
            for item in getattr(self, kind):
                full = size == MAX_ITEMS_PER_BATCH
                if full or (kind != "metrics" and len(getattr(chunk, kind)) == MAX_PARAMS_OR_TAGS_PER_BATCH):
                    yield chunk
                    chunk, size = Batch(), 0
                getattr(chunk, kind).append(item)
                size += 1
        if size:
            yield chunk


def done(value: T) -> Future[T]:
    """A future that already holds ``value``."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


class TrackingThread:
    """One thread that runs every store call of a tracker, in the order they were handed over.

    A failure there (e.g. StoreUnavailable) is kept: later jobs are not attempted, and the training thread
    raises it at its next hand-over (the next epoch or trial).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainlib-tracking")
        self._jobs: list[Future[Any]] = []
        self._failure: BaseException | None = None

    def submit(self, job: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``job(*args)`` on the thread after everything submitted before it."""
        self.raise_if_failed()
        self._jobs = [future for future in self._jobs if not future.done()]
        future = self._executor.submit(self._guarded, job, *args)
        self._jobs.append(future)
        return future

    def call(self, job: Callable[..., T], *args: Any) -> T:
        """Run ``job(*args)`` on the thread and wait for its result."""
        return self.submit(job, *args).result()

    def raise_if_failed(self) -> None:
        """Raise the thread's failure, if it had one."""
        if self._failure is not None:
            raise self._failure

    def wait(self) -> None:
        """Wait until every job handed over so far has run; raise the thread's failure, if any."""
        jobs, self._jobs = self._jobs, []
        for future in jobs:
            future.result()
        self.raise_if_failed()

    def shutdown(self) -> None:
        """Accept no more jobs; those queued still run."""
        self._executor.shutdown(wait=False)

    def _guarded(self, job: Callable[..., T], *args: Any) -> T:
        if self._failure is not None:  # the store is gone or the record is broken: attempt nothing more
            raise self._failure
        try:
            return job(*args)
        except BaseException as error:
            self._failure = error
            raise


class RunLog:
    """What one run (a trial's child run, or the parent) has to log; ``log_epoch`` is an engine callback.

    ``created`` is the run's id once the tracking thread has created it. Items are buffered and handed to the
    thread at most every ``interval_seconds`` (``hand_over`` forces it); ``write(run_id, batch)`` stores a batch.
    """

    def __init__(
        self,
        thread: TrackingThread,
        write: Callable[[str, Batch], None],
        created: Future[str] | None = None,
        trial_number: int = -1,
        interval_seconds: float = LOG_INTERVAL_SECONDS,
    ) -> None:
        self.thread = thread
        self.write = write
        self.created = created
        self.trial_number = trial_number
        self.interval_seconds = interval_seconds
        self.buffered = Batch()
        self.last_hand_over = time.monotonic()

    def log(self, metrics: list[Metric] = (), params: list[Param] = (), tags: list[RunTag] = ()) -> None:
        """Add items to the run's next batch; hand it over once ``interval_seconds`` have passed."""
        self.buffered.metrics.extend(metrics)
        self.buffered.params.extend(params)
        self.buffered.tags.extend(tags)
        if time.monotonic() - self.last_hand_over >= self.interval_seconds:
            self.hand_over()

    def log_epoch(self, result: EpochResult) -> None:
        """Log one epoch's metrics (step = epoch); raise if the tracking thread has failed."""
        self.thread.raise_if_failed()
        timestamp = now_ms()
        self.log(metrics=[Metric(key, value, timestamp, result.epoch) for key, value in result.metrics().items()])

    def hand_over(self) -> None:
        """Give what is buffered to the tracking thread now (kept until the run is being created)."""
        if not self.buffered or self.created is None:
            return
        batch, self.buffered, self.last_hand_over = self.buffered, Batch(), time.monotonic()
        self.thread.submit(self._write, batch)

    def _write(self, batch: Batch) -> None:  # tracking thread: the run was created by an earlier job
        run_id = self.created.result()
        for chunk in batch.within_limits():
            self.write(run_id, chunk)
