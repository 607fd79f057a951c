"""Interleaved rounds: the cases a report compares are timed in turn (ABC, BCA, CAB, ...), not one after another.

A slow patch of a shared machine then hits every case of a comparison alike instead of one case's whole run.
pytest runs one test at a time, so the first test of a comparison group builds every selected case of the group
(through its module's ``build_case``), warms each up, and times their rounds cycle by cycle; every test of the
group then hands its own rounds to pytest-benchmark. The hand-over uses the plugin's public timer hook:
``replay_clock`` returns readings whose differences are the measured round durations, so pytest-benchmark's
statistics, JSON and tables hold exactly the epochs timed here (each one synchronised with CUDA).

Every group also times a reference (bench.support.reference_epoch: plain torch, independent of trainlib's code) in
each cycle; its rounds go into every case's record, so make bench-compare can set a case's epochs against the
machine's speed at that moment.

Rounds adapt: after ``--rounds`` cycles the group keeps cycling until every case's median is known to within
``--interval-target`` (its 95% order-statistic interval, trainlib.bench_stats) or ``--group-seconds`` have passed,
at most ``--max-rounds`` cycles.

A test module taking part defines ``interleave_group(**params) -> str`` (the comparison a case belongs to) and
``build_case(fixture, config, **params) -> Case`` (``fixture(name)`` returns a session fixture's value).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.support import epoch_record, reference_epoch, synchronized_perf_counter
from trainlib.bench_stats import median_interval

log = logging.getLogger(__name__)

# Test-only: time every round this fraction longer (a planted regression, to measure make bench-compare's gate).
PLANTED_SLOWDOWN_VARIABLE = "TRAINLIB_BENCH_PLANTED_SLOWDOWN"
REFERENCE = "reference"  # the extra case of every group: bench.support.reference_epoch


@dataclass
class Case:
    """One case ready to time: ``run_round`` trains one epoch and returns its mean loss; ``record`` is its
    extra_info without timings (parameters, and figures measured while building, such as the first epoch)."""

    run_round: Callable[[], float]
    record: dict[str, Any]
    warmed_up: bool = False  # its builder already ran (and timed) an untimed first epoch
    planted: bool = True  # a planted slowdown applies (not to the reference)


@dataclass
class MeasuredCase:
    """A case's timed rounds (seconds, in cycle order) and what its last round returned."""

    round_seconds: list[float]
    last_loss: float
    record: dict[str, Any] = field(default_factory=dict)

    def hand_over(self, benchmark: Any) -> None:
        """Give the rounds to pytest-benchmark (its statistics and JSON)."""
        hand_over_rounds(benchmark, self.round_seconds, self.last_loss)


def hand_over_rounds(benchmark: Any, round_seconds: list[float], result: Any = None) -> None:
    """Give rounds timed elsewhere to pytest-benchmark, which records them as if it had timed them: the test
    is marked ``pytest.mark.benchmark(timer=replay_clock)``; ``result`` is what the benchmark returns."""
    replay_clock.load(round_seconds)
    benchmark.pedantic(lambda: result, rounds=len(round_seconds), warmup_rounds=0, iterations=1)


class ReplayClock:
    """A pytest-benchmark timer that returns, call after call, the start and end readings of measured rounds."""

    __name__ = "interleaved_rounds"

    def __init__(self) -> None:
        self._readings: deque[float] = deque()

    def load(self, round_seconds: list[float]) -> None:
        reading = 0.0
        self._readings.clear()
        for seconds in round_seconds:
            self._readings.extend((reading, reading + seconds))
            reading += seconds + 1.0

    def __call__(self) -> float:
        if not self._readings:
            raise RuntimeError("replay_clock read more often than rounds were loaded: a benchmark timed by hand?")
        return self._readings.popleft()


replay_clock = ReplayClock()


@dataclass(frozen=True)
class RoundRules:
    """How many rounds a group gets (from the bench options)."""

    warmup_rounds: int
    min_rounds: int
    max_rounds: int
    interval_target: float
    group_seconds: float
    planted_slowdown: float = 0.0

    @classmethod
    def from_config(cls, config: pytest.Config) -> RoundRules:
        planted = os.environ.get(PLANTED_SLOWDOWN_VARIABLE, "")
        try:
            slowdown = float(planted) if planted else 0.0
        except ValueError:
            message = f"{PLANTED_SLOWDOWN_VARIABLE}={planted!r}: expected a fraction such as 0.1"
            raise pytest.UsageError(message) from None
        min_rounds = config.getoption("--rounds")
        return cls(
            warmup_rounds=config.getoption("--warmup-rounds"),
            min_rounds=min_rounds,
            max_rounds=max(config.getoption("--max-rounds"), min_rounds),
            interval_target=config.getoption("--interval-target"),
            group_seconds=config.getoption("--group-seconds"),
            planted_slowdown=slowdown,
        )


class Interleaver:
    """Measures each comparison group once, interleaved, when its first test runs; hands out the results."""

    def __init__(self, rules: RoundRules) -> None:
        self.rules = rules
        # Names this process's groups: a group of the same name timed by another pytest run is another group.
        self.session = uuid.uuid4().hex[:12]
        self._outcomes: dict[str, MeasuredCase | BaseException] = {}

    def time_case(self, request: pytest.FixtureRequest, benchmark: Any, group: str | None = None) -> MeasuredCase:
        """Measure this test's case (its whole group on the group's first test) and hand its rounds and record to
        pytest-benchmark, in benchmark group ``group`` (default: the case's workload)."""
        measured = self.measure(request)
        benchmark.group = group or measured.record["workload"]  # set before the hand-over, which makes the stats
        measured.hand_over(benchmark)
        benchmark.extra_info.update(epoch_record(benchmark, **measured.record))
        return measured

    def measure(self, request: pytest.FixtureRequest) -> MeasuredCase:
        """This test's measured case; its whole group is built and timed on the group's first test."""
        item = request.node
        if item.nodeid not in self._outcomes:  # the group's first test (or a rerun of one)
            key = _group_key(item)
            members = [other for other in request.session.items if _group_key(other) == key]
            self._measure_group(key, members, request)
        outcome = self._outcomes.pop(item.nodeid)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _measure_group(self, key: tuple[str, str], members: list[pytest.Item], request: pytest.FixtureRequest) -> None:
        cases: dict[str, Case] = {}
        for member in members:
            try:
                cases[member.nodeid] = member.module.build_case(  # type: ignore[attr-defined]
                    request.getfixturevalue, request.config, **member.callspec.params
                )
            except (Exception, pytest.skip.Exception) as error:  # the member's own test reports it
                self._outcomes[member.nodeid] = error
        if not cases:  # every member skipped or failed to build
            return
        # The reference (plain torch, independent of trainlib) runs in every cycle: the machine's speed right then.
        cases[REFERENCE] = Case(reference_epoch(), {}, planted=False)
        cycles = run_cycles(cases, self.rules)
        reference_rounds = cycles.round_seconds.pop(REFERENCE)
        del cases[REFERENCE]
        self._outcomes.update(cycles.errors)
        for nodeid, case in cases.items():
            if nodeid in self._outcomes:
                continue
            record = {
                **case.record,
                "interleave_group": key[1],
                "interleave_session": self.session,
                "interleaved_cases": len(cases),
                "reference_round_seconds": reference_rounds,
                "warmup_rounds": 1 if case.warmed_up else self.rules.warmup_rounds,
                "rounds_stopped_by": cycles.stop_reason,
            }
            if self.rules.planted_slowdown:
                record["planted_slowdown"] = self.rules.planted_slowdown
            self._outcomes[nodeid] = MeasuredCase(cycles.round_seconds[nodeid], cycles.last_loss[nodeid], record)
        log.info("group %s: %d cases, %s", key[1], len(cases), cycles.stop_reason)


@dataclass
class Cycles:
    """What run_cycles measured: each case's round seconds and last loss, the cases whose epoch raised, and why
    the cycling stopped."""

    round_seconds: dict[str, list[float]]
    last_loss: dict[str, float]
    errors: dict[str, Exception]
    stop_reason: str = ""


def run_cycles(
    cases: dict[str, Case], rules: RoundRules, clock: Callable[[], float] = synchronized_perf_counter
) -> Cycles:
    """Warm-up cycles, then timed cycles in rotating order (ABC, BCA, CAB, ...) until ``rules`` say stop.

    A case whose epoch raises leaves the cycle; the others go on. ``clock`` times rounds and the group's seconds.
    """
    cycles = Cycles({name: [] for name in cases}, dict.fromkeys(cases, math.nan), {})
    running = dict(cases)

    def run_round(name: str, *, timed: bool) -> None:
        try:
            started = clock()
            loss = running[name].run_round()
            if rules.planted_slowdown and running[name].planted:
                _spin(rules.planted_slowdown * (clock() - started))
            finished = clock()
        except Exception as error:
            cycles.errors[name] = error
            del running[name]
            return
        cycles.last_loss[name] = loss
        if timed:
            cycles.round_seconds[name].append(finished - started)

    for _ in range(rules.warmup_rounds):
        for name in [name for name, case in running.items() if not case.warmed_up]:
            run_round(name, timed=False)
    started = clock()
    for cycle in range(rules.max_rounds):
        order = list(running)
        shift = cycle % len(order) if order else 0
        for name in order[shift:] + order[:shift]:
            run_round(name, timed=True)
        done = cycle + 1
        if not running:
            cycles.stop_reason = "no case left running"
            return cycles
        if done >= rules.min_rounds:
            widths = [median_interval(cycles.round_seconds[name]).relative_half_width for name in running]
            if max(widths) <= rules.interval_target:
                cycles.stop_reason = f"interval target after {done} rounds"
                return cycles
            if clock() - started >= rules.group_seconds:
                cycles.stop_reason = f"time cap after {done} rounds"
                return cycles
    cycles.stop_reason = f"round limit of {rules.max_rounds}"
    return cycles


def _spin(seconds: float) -> None:
    """Keep the CPU busy for ``seconds`` (the planted slowdown is work, not sleep)."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def order_by_group(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place so that the members of a group run one after another, at the place of the
    group's first member: a group is timed as a whole on its first test, and a run interrupted later (make
    bench-device stops a part at its time share) keeps every member whose group finished."""
    keys = [_group_key(item) or ("ungrouped item", place) for place, item in enumerate(items)]
    first_place: dict[tuple[str, Any], int] = {}
    for place, key in enumerate(keys):
        first_place.setdefault(key, place)
    sort_keys = {id(item): (first_place[keys[place]], place) for place, item in enumerate(items)}
    items.sort(key=lambda item: sort_keys[id(item)])


def _group_key(item: pytest.Item) -> tuple[str, str] | None:
    module = getattr(item, "module", None)
    callspec = getattr(item, "callspec", None)
    group_of = getattr(module, "interleave_group", None)
    if group_of is None or callspec is None:
        return None
    return module.__name__, group_of(**callspec.params)
