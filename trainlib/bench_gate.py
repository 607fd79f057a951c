"""make bench-compare's regression gate: a statistical test on the rounds of a baseline and a candidate bench run.

Per case, the candidate's epoch times are compared with the baseline's by a one-sided Mann-Whitney U test (does
the candidate take longer?), Holm-corrected over the cases so that a grid of many cases does not raise an alarm
on one unlucky case, and by the ratio of medians with a bootstrap interval. A case is *slower* only when the test
says so at ``alpha`` **and** its ratio is at least 1 + ``case_min_effect`` (15%): a difference too small to
matter is not a regression, however certain, and one case's median moves more between two runs on a shared
machine than the rounds within a run show. Across the suite, the geometric mean of the cases' ratios, with its
bootstrap interval, catches a slowdown spread over every case (a slower machine, a slower training loop) from
1 + ``min_effect`` (5%) on. The gate fails when a case or the suite is slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from trainlib.bench_report import load_results
from trainlib.bench_stats import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    FASTER,
    NO_DIFFERENCE,
    SLOWER,
    Interval,
    ratio_interval,
)
from trainlib.errors import InvalidArgument

MIN_EFFECT = 0.05  # over the suite (geometric mean of every case's ratio)
CASE_MIN_EFFECT = 0.15  # for one case alone: a single case's median moves more between runs of a shared machine
ALPHA = 0.05
MIN_ROUNDS = 3  # fewer rounds on a side: the case is listed, not tested
COMPARABLE_KEYS = ("dataset_size", "batch_size", "device", "workload")


@dataclass(frozen=True)
class CaseComparison:
    """One case in both runs: medians (seconds per epoch), candidate/baseline time ratio, test, verdict."""

    name: str
    baseline_seconds: float
    candidate_seconds: float
    ratio: Interval | None
    p_slower: float
    p_faster: float
    verdict: str


@dataclass(frozen=True)
class GateResult:
    """The comparison of two runs: each case, the suite's geometric-mean ratio, and whether it is a regression."""

    baseline: Path
    candidate: Path
    cases: list[CaseComparison]
    suite_ratio: Interval | None
    suite_verdict: str
    min_effect: float
    case_min_effect: float
    alpha: float

    @property
    def regression(self) -> bool:
        return self.suite_verdict == SLOWER or any(case.verdict == SLOWER for case in self.cases)


def compare_runs(
    baseline: str | Path,
    candidate: str | Path,
    *,
    min_effect: float = MIN_EFFECT,
    case_min_effect: float = CASE_MIN_EFFECT,
    alpha: float = ALPHA,
) -> GateResult:
    """Compare every case the two runs share; InvalidArgument when they are not runs of the same grid."""
    for option, value in (("--min-effect", min_effect), ("--case-min-effect", case_min_effect)):
        if not 0 <= value < 1:
            raise InvalidArgument(f"{option} {value!r}: expected a fraction in [0, 1), such as 0.05")
    if not 0 < alpha < 1:
        raise InvalidArgument(f"--alpha {alpha!r}: expected a probability in (0, 1), such as 0.05")
    before, after = _timed_cases(baseline), _timed_cases(candidate)
    shared = [name for name in after.index if name in before.index]
    if not shared:
        raise InvalidArgument(
            f"{baseline} and {candidate} share no bench case: compare two runs of the same grid "
            "(a --quick candidate needs a --quick baseline)"
        )
    for name in shared:
        for key in COMPARABLE_KEYS:
            old, new = before.at[name, key], after.at[name, key]
            if old != new:
                raise InvalidArgument(
                    f"case {name!r} has {key} {str(old)!r} in the baseline but {str(new)!r} in "
                    "the candidate: compare runs of the same grid (a --quick candidate needs a --quick baseline, "
                    "e.g. BASELINE=.cache/bench-quick/bench.json)"
                )
    tests = {name: _rank_tests(before.at[name, "round_seconds"], after.at[name, "round_seconds"]) for name in shared}
    tested = [name for name in shared if tests[name] is not None]
    p_slower = _holm({name: tests[name][0] for name in tested})
    p_faster = _holm({name: tests[name][1] for name in tested})
    cases = []
    for name in shared:
        base_rounds, new_rounds = before.at[name, "round_seconds"], after.at[name, "round_seconds"]
        if name not in p_slower:
            ratio = None
            verdict = f"not tested: fewer than {MIN_ROUNDS} rounds"
        else:
            ratio = ratio_interval(new_rounds, base_rounds)
            verdict = _verdict(ratio.estimate, p_slower[name], p_faster[name], case_min_effect, alpha)
        cases.append(
            CaseComparison(
                name,
                float(np.median(base_rounds)),
                float(np.median(new_rounds)),
                ratio,
                p_slower.get(name, math.nan),
                p_faster.get(name, math.nan),
                verdict,
            )
        )
    suite = _geometric_mean_ratio([(before.at[n, "round_seconds"], after.at[n, "round_seconds"]) for n in tested])
    suite_verdict = NO_DIFFERENCE
    if suite is not None and suite.low > 1 and suite.estimate >= 1 + min_effect:
        suite_verdict = SLOWER
    elif suite is not None and suite.high < 1 and suite.estimate <= 1 - min_effect:
        suite_verdict = FASTER
    return GateResult(Path(baseline), Path(candidate), cases, suite, suite_verdict, min_effect, case_min_effect, alpha)


def _timed_cases(path: str | Path) -> pd.DataFrame:
    """The run's cases with per-round times, by name (the accuracy guard's time to target is not a round time)."""
    cases = load_results(path).cases
    cases = cases[cases["group"] != "guard"]
    return cases.set_index("name")


def _rank_tests(baseline: list[float], candidate: list[float]) -> tuple[float, float] | None:
    """One-sided Mann-Whitney U p-values: (candidate slower, candidate faster); None with too few rounds."""
    if len(baseline) < MIN_ROUNDS or len(candidate) < MIN_ROUNDS:
        return None
    slower = mannwhitneyu(candidate, baseline, alternative="greater").pvalue
    faster = mannwhitneyu(candidate, baseline, alternative="less").pvalue
    return float(slower), float(faster)


def _holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (family-wise error over the cases)."""
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, (name, p_value) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p_value))
        adjusted[name] = running
    return adjusted


def _verdict(ratio: float, p_slower: float, p_faster: float, min_effect: float, alpha: float) -> str:
    if p_slower < alpha and ratio >= 1 + min_effect:
        return SLOWER
    if p_faster < alpha and ratio <= 1 - min_effect:
        return FASTER
    return NO_DIFFERENCE


def _geometric_mean_ratio(pairs: list[tuple[list[float], list[float]]], seed: int = 0) -> Interval | None:
    """Geometric mean over cases of candidate/baseline median ratios, with a bootstrap interval (rounds resampled
    within each case and run)."""
    if not pairs:
        return None
    generator = np.random.default_rng(seed)
    estimate = float(np.exp(np.mean([np.log(np.median(new) / np.median(old)) for old, new in pairs])))
    logs = np.zeros(BOOTSTRAP_RESAMPLES)
    for old, new in pairs:
        old_values, new_values = np.asarray(old), np.asarray(new)
        old_medians = np.median(old_values[generator.integers(0, len(old), (BOOTSTRAP_RESAMPLES, len(old)))], axis=1)
        new_medians = np.median(new_values[generator.integers(0, len(new), (BOOTSTRAP_RESAMPLES, len(new)))], axis=1)
        logs += np.log(new_medians / old_medians)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.exp(np.quantile(logs / len(pairs), [tail, 1 - tail]))
    return Interval(estimate, float(min(low, estimate)), float(max(high, estimate)), CONFIDENCE)


def render_table(result: GateResult) -> str:
    """The gate's table (case, baseline, candidate, ratio with interval, p, verdict) and its decision."""
    lines = [
        f"baseline:  {result.baseline}",
        f"candidate: {result.candidate}",
        "",
        f"{'case':<64} {'baseline':>9} {'candidate':>9}  {'time ratio [95% interval]':<26} {'p (Holm)':>8}  verdict",
    ]
    for case in result.cases:
        ratio = case.ratio.text(3) if case.ratio else "-"
        p_value = min(case.p_slower, case.p_faster)
        lines.append(
            f"{case.name[:64]:<64} {case.baseline_seconds:>8.3f}s {case.candidate_seconds:>8.3f}s  {ratio:<26} "
            f"{'-' if math.isnan(p_value) else f'{p_value:.3f}':>8}  {case.verdict}"
        )
    suite = result.suite_ratio.text(3) if result.suite_ratio else "-"
    lines += [
        "",
        f"suite (geometric mean of the time ratios): {suite}: {result.suite_verdict}",
        f"rule: a case is slower when a one-sided Mann-Whitney U test gives p < {result.alpha} after Holm's correction "
        f"and its time ratio is at least {1 + result.case_min_effect:.2f}; the suite when its whole interval is "
        f"above 1 and its estimate at least {1 + result.min_effect:.2f}",
        "REGRESSION: the candidate is slower" if result.regression else "no regression",
    ]
    return "\n".join(lines)
