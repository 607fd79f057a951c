"""make bench-compare's regression gate: a statistical test on the rounds of a baseline and a candidate bench run.

Two runs minutes apart on a shared machine differ by more than their rounds show: on this project's 2-core VM the
same code's suite ran up to 24% slower from one idle run to the next. So the gate judges the code by each case's
epoch time **relative to the reference** (bench.support.reference_epoch, plain torch, timed in the same cycle),
which a slower machine slows alike, and the machine by the raw times:

- per case: a one-sided Mann-Whitney U test (does the candidate take longer, relative to the reference?),
  Holm-corrected over the cases, and the ratio of medians with a bootstrap interval; *slower* only when the test
  says so at ``alpha`` **and** the ratio is at least 1 + ``case_min_effect`` (15%) relative to the reference and
  in raw time alike: one case alone moves more between runs than the suite (by a drift of the machine in raw
  time, by the reference's own noise relative to it), and a difference too small to matter is not a regression;
- the suite: the geometric mean of the cases' relative ratios with its bootstrap interval catches a slowdown
  spread over every case (a slower training loop) from 1 + ``min_effect`` (5%) on;
- the machine: the geometric mean of the raw ratios, from 1 + ``machine_min_effect`` (30%) on (both cores kept
  busy by other work, a slower machine): a regression too, reported as the machine's.

Runs without reference rounds (older JSON) are judged on raw times.
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

MIN_EFFECT = 0.05  # over the suite (geometric mean of every case's ratio relative to the reference)
CASE_MIN_EFFECT = 0.15  # for one case alone: a single case's median moves more between runs of a shared machine
MACHINE_MIN_EFFECT = 0.30  # raw times of the whole suite: beyond the drift of an idle shared machine
ALPHA = 0.05
MIN_ROUNDS = 3  # fewer rounds on a side: the case is listed, not tested
COMPARABLE_KEYS = ("dataset_size", "batch_size", "device", "workload")


@dataclass(frozen=True)
class CaseComparison:
    """One case in both runs: medians (seconds per epoch), candidate/baseline time ratios (raw, and the judged one:
    relative to the reference where both runs have it), test, verdict."""

    name: str
    baseline_seconds: float
    candidate_seconds: float
    raw_ratio: Interval | None
    ratio: Interval | None
    relative: bool
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
    machine_ratio: Interval | None
    machine_verdict: str
    min_effect: float
    case_min_effect: float
    machine_min_effect: float
    alpha: float

    @property
    def regression(self) -> bool:
        verdicts = [self.suite_verdict, self.machine_verdict, *(case.verdict for case in self.cases)]
        return SLOWER in verdicts


def compare_runs(
    baseline: str | Path,
    candidate: str | Path,
    *,
    min_effect: float = MIN_EFFECT,
    case_min_effect: float = CASE_MIN_EFFECT,
    machine_min_effect: float = MACHINE_MIN_EFFECT,
    alpha: float = ALPHA,
) -> GateResult:
    """Compare every case the two runs share; InvalidArgument when they are not runs of the same grid."""
    efforts = (("--min-effect", min_effect), ("--case-min-effect", case_min_effect))
    for option, value in (*efforts, ("--machine-min-effect", machine_min_effect)):
        if not 0 <= value < 1:
            raise InvalidArgument(f"{option} {value!r}: expected a fraction in [0, 1), such as 0.05")
    if not 0 < alpha < 1:
        raise InvalidArgument(f"--alpha {alpha!r}: expected a probability in (0, 1), such as 0.05")
    before, after = _timed_cases(baseline), _timed_cases(candidate)
    shared = _shared_cases(before, after, baseline, candidate)
    judged = {name: _judged_rounds(before.loc[name], after.loc[name]) for name in shared}
    tests = {name: _rank_tests(*judged[name][:2]) for name in shared}
    tested = [name for name in shared if tests[name] is not None]
    p_slower = _holm({name: tests[name][0] for name in tested})
    p_faster = _holm({name: tests[name][1] for name in tested})
    cases = []
    for name in shared:
        old_raw, new_raw = before.at[name, "round_seconds"], after.at[name, "round_seconds"]
        old, new, relative = judged[name]
        ratio = raw = None
        verdict = f"not tested: fewer than {MIN_ROUNDS} rounds"
        if name in p_slower:
            ratio, raw = ratio_interval(new, old), ratio_interval(new_raw, old_raw)
            verdict = _verdict(ratio.estimate, raw.estimate, p_slower[name], p_faster[name], case_min_effect, alpha)
        medians = float(np.median(old_raw)), float(np.median(new_raw))
        p_values = p_slower.get(name, math.nan), p_faster.get(name, math.nan)
        cases.append(CaseComparison(name, *medians, raw, ratio, relative, *p_values, verdict))
    suite = _geometric_mean_ratio([judged[name][:2] for name in tested])
    machine = _geometric_mean_ratio(
        [(before.at[name, "round_seconds"], after.at[name, "round_seconds"]) for name in tested]
    )
    return GateResult(
        Path(baseline),
        Path(candidate),
        cases,
        suite,
        _suite_verdict(suite, min_effect),
        machine,
        _suite_verdict(machine, machine_min_effect, faster_too=False),
        min_effect,
        case_min_effect,
        machine_min_effect,
        alpha,
    )


def _shared_cases(before: pd.DataFrame, after: pd.DataFrame, baseline: str | Path, candidate: str | Path) -> list[str]:
    """The cases both runs timed; InvalidArgument when there are none or they are not runs of the same grid."""
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
    return shared


def _judged_rounds(before: pd.Series, after: pd.Series) -> tuple[list[float], list[float], bool]:
    """Each round's epoch time over the reference's in the same cycle, where both runs timed a reference; else raw."""
    pairs = [(row["round_seconds"], row["reference_round_seconds"]) for row in (before, after)]
    if all(len(rounds) == len(reference) > 0 for rounds, reference in pairs):
        old, new = ((np.asarray(rounds) / np.asarray(reference)).tolist() for rounds, reference in pairs)
        return old, new, True
    return before["round_seconds"], after["round_seconds"], False


def _suite_verdict(ratio: Interval | None, min_effect: float, *, faster_too: bool = True) -> str:
    if ratio is not None and ratio.low > 1 and ratio.estimate >= 1 + min_effect:
        return SLOWER
    if faster_too and ratio is not None and ratio.high < 1 and ratio.estimate <= 1 - min_effect:
        return FASTER
    return NO_DIFFERENCE


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


def _verdict(ratio: float, raw: float, p_slower: float, p_faster: float, min_effect: float, alpha: float) -> str:
    """One case's verdict: significant, and at least ``min_effect`` both relative to the reference and in raw time
    (a slower case is slower either way; a reference round or a machine drift alone moves only one of the two)."""
    if p_slower < alpha and min(ratio, raw) >= 1 + min_effect:
        return SLOWER
    if p_faster < alpha and max(ratio, raw) <= 1 - min_effect:
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
    """The gate's table (case, medians, raw ratio, judged ratio with interval, p, verdict) and its decision."""
    lines = [
        f"baseline:  {result.baseline}",
        f"candidate: {result.candidate}",
        "",
        f"{'case':<64} {'baseline':>9} {'candidate':>9} {'raw':>7}  {'vs reference [95% interval]':<27} "
        f"{'p (Holm)':>8}  verdict",
    ]
    for case in result.cases:
        ratio = case.ratio.text(3) if case.ratio else "-"
        ratio = ratio if case.relative or case.ratio is None else f"{ratio} (raw)"
        raw = f"{case.raw_ratio.estimate:.3f}×" if case.raw_ratio else "-"
        p_value = min(case.p_slower, case.p_faster)
        lines.append(
            f"{case.name[:64]:<64} {case.baseline_seconds:>8.3f}s {case.candidate_seconds:>8.3f}s {raw:>7}  "
            f"{ratio:<27} {'-' if math.isnan(p_value) else f'{p_value:.3f}':>8}  {case.verdict}"
        )
    suite = result.suite_ratio.text(3) if result.suite_ratio else "-"
    machine = result.machine_ratio.text(3) if result.machine_ratio else "-"
    lines += [
        "",
        f"code (geometric mean of the time ratios relative to the reference): {suite}: {result.suite_verdict}",
        f"machine (geometric mean of the raw time ratios): {machine}: {result.machine_verdict}",
        f"rule: a case is slower when a one-sided Mann-Whitney U test gives p < {result.alpha} after Holm's correction "
        f"and its ratio is at least {1 + result.case_min_effect:.2f} relative to the reference and raw; "
        "the code when the whole interval of its "
        f"geometric mean is above 1 and its estimate at least {1 + result.min_effect:.2f}; the machine likewise from "
        f"{1 + result.machine_min_effect:.2f}",
    ]
    if not result.regression:
        lines.append("no regression")
    elif result.machine_verdict == SLOWER and result.suite_verdict != SLOWER:
        lines.append("REGRESSION: the machine is slower (raw times), not the code relative to the reference")
    else:
        lines.append("REGRESSION: the candidate is slower")
    return "\n".join(lines)
