"""bench/interleave.py: rounds of a comparison group timed in turn, adaptive stopping, and the hand-over clock."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from bench.interleave import Case, ReplayClock, RoundRules, order_by_group, run_cycles


class FakeClock:
    """A clock that only moves when a case's round says how long it took: schedules without real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def recording_cases(clock: FakeClock, durations: dict[str, list[float]], calls: list[str]) -> dict[str, Case]:
    """Cases whose k-th round takes durations[name][k % len] fake seconds and is logged in ``calls``."""

    def case(name: str) -> Case:
        def run_round() -> float:
            seconds = durations[name][len([call for call in calls if call == name]) % len(durations[name])]
            calls.append(name)
            clock.now += seconds
            return 0.5

        return Case(run_round, {"name": name})

    return {name: case(name) for name in durations}


def rules(**overrides: float) -> RoundRules:
    values = {"warmup_rounds": 1, "min_rounds": 4, "max_rounds": 4, "interval_target": 0.0, "group_seconds": 1e9}
    return RoundRules(**{**values, **overrides})  # type: ignore[arg-type]


def test_rounds_alternate_between_cases_in_rotating_order_after_one_warm_up_cycle():
    clock, calls = FakeClock(), []
    cases = recording_cases(clock, {"A": [1.0], "B": [2.0], "C": [3.0]}, calls)

    cycles = run_cycles(cases, rules(interval_target=0.0), clock)

    assert calls == list("ABC" + "ABC" + "BCA" + "CAB" + "ABC")  # warm-up, then four timed cycles
    assert cycles.round_seconds == {"A": [1.0] * 4, "B": [2.0] * 4, "C": [3.0] * 4}
    assert cycles.last_loss == {"A": 0.5, "B": 0.5, "C": 0.5}
    assert cycles.stop_reason == "interval target after 4 rounds"  # constant times: known exactly


def test_a_group_stops_at_the_minimum_once_every_median_is_known_to_the_target():
    clock, calls = FakeClock(), []
    cases = recording_cases(clock, {"A": [1.0], "B": [2.0]}, calls)

    cycles = run_cycles(cases, rules(min_rounds=6, max_rounds=30, interval_target=0.01), clock)

    assert cycles.stop_reason == "interval target after 6 rounds"
    assert [len(seconds) for seconds in cycles.round_seconds.values()] == [6, 6]


def test_a_noisy_group_keeps_cycling_until_its_time_cap_and_never_past_the_round_limit():
    clock, calls = FakeClock(), []
    noisy = {"A": [1.0, 3.0, 1.5, 2.5], "B": [2.0, 0.5, 4.0, 1.0]}  # never within ±1%

    capped = run_cycles(
        recording_cases(clock, noisy, calls),
        rules(min_rounds=6, max_rounds=30, group_seconds=40.0, interval_target=0.01),
        clock,
    )

    # Each cycle takes 3 to 6.5 fake seconds: the cap of 40 s is passed after the 8th to 13th cycle.
    rounds = len(capped.round_seconds["A"])
    assert capped.stop_reason == f"time cap after {rounds} rounds" and 8 <= rounds <= 13
    limited = run_cycles(
        recording_cases(FakeClock(), noisy, []), rules(min_rounds=6, max_rounds=9, interval_target=0.01), FakeClock()
    )
    assert limited.stop_reason == "round limit of 9"


def test_a_case_whose_epoch_raises_leaves_the_cycle_and_the_others_finish():
    clock, calls = FakeClock(), []
    cases = recording_cases(clock, {"A": [1.0], "B": [1.0], "C": [1.0]}, calls)
    broken = cases["B"].run_round
    epochs = []

    def fails_in_its_third_round() -> float:
        epochs.append(1)
        if len(epochs) == 3:
            raise RuntimeError("CUDA out of memory")
        return broken()

    cases["B"] = Case(fails_in_its_third_round, {})

    cycles = run_cycles(cases, rules(), clock)

    assert isinstance(cycles.errors["B"], RuntimeError) and set(cycles.errors) == {"B"}
    assert len(cycles.round_seconds["A"]) == len(cycles.round_seconds["C"]) == 4
    assert len(cycles.round_seconds["B"]) == 1  # one warm-up, one timed round, then the error


def test_a_case_built_warm_skips_the_warm_up_cycle():
    clock, calls = FakeClock(), []
    cases = recording_cases(clock, {"A": [1.0], "B": [1.0]}, calls)
    cases["B"].warmed_up = True

    run_cycles(cases, rules(min_rounds=1, max_rounds=1), clock)

    assert calls == ["A", "A", "B"]


def test_the_planted_slowdown_lengthens_every_timed_round_by_its_fraction_of_work():
    def sleeps() -> float:
        time.sleep(0.02)
        return 0.5

    cycles = run_cycles(
        {"A": Case(sleeps, {})}, rules(warmup_rounds=0, min_rounds=3, max_rounds=3, planted_slowdown=1.0)
    )

    assert min(cycles.round_seconds["A"]) >= 2 * 0.02  # slept 0.02 s at least, then spun as long again


def test_the_replay_clock_hands_pytest_benchmark_exactly_the_measured_rounds():
    clock = ReplayClock()
    clock.load([0.5, 0.25, 2.0])

    readings = [clock() for _ in range(6)]

    assert [end - start for start, end in zip(readings[::2], readings[1::2], strict=True)] == [0.5, 0.25, 2.0]
    with pytest.raises(RuntimeError, match="read more often than rounds were loaded"):
        clock()


def test_members_of_a_group_run_one_after_another_at_the_place_of_its_first_member() -> None:
    # Parametrized as pytest collects them: device outermost, so a group's members lie apart.
    module = SimpleNamespace(__name__="bench.test_fake", interleave_group=lambda batch, **_: f"batch_{batch}")
    items = [
        SimpleNamespace(name=f"{device}-{batch}", module=module, callspec=SimpleNamespace(params={"batch": batch}))
        for device in ("cpu", "cuda")
        for batch in (32, 512)
    ]
    ungrouped = SimpleNamespace(name="plain", module=None, callspec=None)
    items.insert(1, ungrouped)

    order_by_group(items)

    assert [item.name for item in items] == ["cpu-32", "cuda-32", "plain", "cpu-512", "cuda-512"]
