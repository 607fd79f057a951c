"""trainlib/bench_stats.py: medians and ratios with intervals that hold their coverage, and verdicts in words."""

from __future__ import annotations

import numpy as np
import pytest

from trainlib.bench_stats import (
    FASTER,
    NO_DIFFERENCE,
    SLOWER,
    Interval,
    median_interval,
    ratio_interval,
    speed_ratio,
    speed_verdict,
    target_verdict,
)


@pytest.mark.parametrize("rounds", [6, 10, 25])
def test_the_median_interval_covers_the_true_median_as_often_as_it_says(rounds):
    generator = np.random.default_rng(1)
    true_median = 1.0  # lognormal(0, sigma) has median exp(0)
    samples = generator.lognormal(0.0, 0.3, size=(4000, rounds))

    intervals = [median_interval(row) for row in samples]

    covered = np.mean([interval.contains(true_median) for interval in intervals])
    assert intervals[0].confidence >= 0.95
    assert covered == pytest.approx(intervals[0].confidence, abs=0.015)


def test_with_fewer_than_six_rounds_the_interval_is_the_range_and_says_its_lower_coverage():
    interval = median_interval([3.0, 1.0, 2.0, 5.0, 4.0])

    assert (interval.low, interval.estimate, interval.high) == (1.0, 3.0, 5.0)
    assert interval.confidence == pytest.approx(1 - 2 / 2**5)  # 93.75%, not the 95% asked for


def test_pairing_by_cycle_cancels_a_drift_both_cases_shared():
    generator = np.random.default_rng(2)
    drift = generator.lognormal(0.0, 0.3, size=12)  # a slow patch of the machine hits both cases of a cycle
    fast = 1.0 * drift * generator.lognormal(0.0, 0.01, size=12)
    slow = 1.1 * drift * generator.lognormal(0.0, 0.01, size=12)

    paired = ratio_interval(slow, fast, paired=True)
    unpaired = ratio_interval(slow, fast, paired=False)

    assert paired.contains(1.1) and paired.low > 1.0  # the 10% difference is measurable when paired
    assert unpaired.high - unpaired.low > 4 * (paired.high - paired.low)
    assert speed_verdict(paired.inverse()) == SLOWER


def test_a_speed_ratio_accounts_for_different_samples_per_epoch():
    ratio = speed_ratio([2.0, 2.0, 2.0], 20_000, [1.0, 1.0, 1.0], 2_000, paired=False)

    assert ratio.estimate == pytest.approx(5.0)  # 10,000/s over 2,000/s


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [
        (Interval(1.2, 1.1, 1.3, 0.95), FASTER),
        (Interval(0.8, 0.7, 0.9, 0.95), SLOWER),
        (Interval(1.05, 0.98, 1.12, 0.95), NO_DIFFERENCE),
    ],
)
def test_a_verdict_needs_the_whole_interval_on_one_side_of_one(interval, verdict):
    assert speed_verdict(interval) == verdict


def test_a_target_is_met_not_met_or_undecided_as_the_interval_allows():
    assert target_verdict(Interval(1.2, 1.15, 1.25, 0.95), 1.10, at_least=True) == "met"
    assert target_verdict(Interval(1.0, 0.95, 1.05, 0.95), 1.10, at_least=True) == "NOT met"
    assert target_verdict(Interval(1.1, 1.05, 1.15, 0.95), 1.10, at_least=True) == "undecided at this noise"
    assert target_verdict(Interval(1.01, 1.0, 1.02, 0.95), 1.03, at_least=False) == "met"
