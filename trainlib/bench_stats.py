"""Intervals and verdicts for benchmark rounds: a median's interval, a ratio's interval, and what they support.

numpy and the standard library only: the bench uses median_interval to decide when a case has been measured
precisely enough, on a bare GPU machine as well.

- A case's median epoch time gets a distribution-free interval from order statistics (the number of rounds
  below the true median is binomial(n, 1/2)); with fewer than 6 rounds no such interval reaches 95%, and the
  interval says what it does reach (``confidence``).
- A ratio of two cases' medians gets a percentile-bootstrap interval. Cases timed in the same interleaved
  cycles are resampled by cycle (paired), so a slow patch of the machine that hit both cases cancels out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000
FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no difference measurable here"


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval; ``confidence`` is the coverage the interval has (order statistics can only
    reach some levels, and with few rounds less than asked for)."""

    estimate: float
    low: float
    high: float
    confidence: float

    @property
    def relative_half_width(self) -> float:
        """Half the interval's width over the estimate (0.05: the estimate is known to about ±5%)."""
        return (self.high - self.low) / 2 / self.estimate if self.estimate else math.inf

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def scaled(self, factor: float) -> Interval:
        """The interval of factor * x (factor > 0)."""
        return Interval(self.estimate * factor, self.low * factor, self.high * factor, self.confidence)

    def inverse(self) -> Interval:
        """The interval of 1/x (a ratio of times becomes a ratio of speeds)."""
        return Interval(1 / self.estimate, 1 / self.high, 1 / self.low, self.confidence)

    def text(self, digits: int = 2, suffix: str = "×") -> str:
        """'1.12× [1.05, 1.19]'."""
        return f"{self.estimate:.{digits}f}{suffix} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _binomial_coverage(rounds: int, lower_rank: int) -> float:
    """P(lower_rank <= B <= rounds - lower_rank) for B ~ binomial(rounds, 1/2): the coverage of the order-statistic
    interval [x_(lower_rank), x_(rounds - lower_rank + 1)] (ranks from 1) for the median."""
    inside = sum(math.comb(rounds, count) for count in range(lower_rank, rounds - lower_rank + 1))
    return inside / 2**rounds


def median_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The median with the narrowest order-statistic interval whose coverage is at least ``confidence``
    (with too few samples for that: the widest one, [min, max], and the coverage it has)."""
    values = np.sort(np.asarray(samples, dtype=float))
    rounds = len(values)
    if rounds == 0:
        raise ValueError("median_interval needs at least one sample")
    median = float(np.median(values))
    if rounds == 1:
        return Interval(median, median, median, 0.0)
    lower_rank = 1
    while lower_rank + 1 <= rounds // 2 and _binomial_coverage(rounds, lower_rank + 1) >= confidence:
        lower_rank += 1
    coverage = _binomial_coverage(rounds, lower_rank)
    return Interval(median, float(values[lower_rank - 1]), float(values[rounds - lower_rank]), coverage)


def ratio_interval(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    paired: bool = False,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """median(numerator) / median(denominator) with a percentile-bootstrap interval.

    ``paired``: the i-th values of both were measured in the same cycle; cycles are resampled as units.
    The bootstrap is seeded, so one results file always gives the same report.
    """
    top, bottom = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if len(top) == 0 or len(bottom) == 0:
        raise ValueError("ratio_interval needs samples on both sides")
    estimate = float(np.median(top) / np.median(bottom))
    generator = np.random.default_rng(seed)
    if paired:
        if len(top) != len(bottom):
            raise ValueError("paired samples must have the same length")
        picks = generator.integers(0, len(top), size=(resamples, len(top)))
        ratios = np.median(top[picks], axis=1) / np.median(bottom[picks], axis=1)
    else:
        top_picks = generator.integers(0, len(top), size=(resamples, len(top)))
        bottom_picks = generator.integers(0, len(bottom), size=(resamples, len(bottom)))
        ratios = np.median(top[top_picks], axis=1) / np.median(bottom[bottom_picks], axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return Interval(estimate, float(min(low, estimate)), float(max(high, estimate)), confidence)


def speed_verdict(speedup: Interval) -> str:
    """A speed ratio (>1: faster) in words: faster or slower only when the whole interval says so."""
    if speedup.low > 1:
        return FASTER
    if speedup.high < 1:
        return SLOWER
    return NO_DIFFERENCE


def target_verdict(interval: Interval, target: float, *, at_least: bool) -> str:
    """Whether a ratio meets a target (at_least: ratio >= target, else ratio <= target), as the interval allows."""
    if (interval.low >= target) if at_least else (interval.high <= target):
        return "met"
    if (interval.high < target) if at_least else (interval.low > target):
        return "NOT met"
    return "undecided at this noise"


def speed_ratio(
    times: Sequence[float], samples: int, base_times: Sequence[float], base_samples: int, *, paired: bool
) -> Interval:
    """samples/s of a case over a base case's (each: samples / median epoch seconds), with its interval."""
    return ratio_interval(base_times, times, paired=paired).scaled(samples / base_samples)
