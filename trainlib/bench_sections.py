"""The Markdown sections of the bench report: worker grid, loop parity, CPU against CUDA, speed knobs, guard.

Each function takes the report's rows (pandas, as bench_report.load_results makes them) and returns lines.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from trainlib.bench_stats import Interval, median_interval, speed_ratio, speed_verdict, target_verdict


def case_speed_ratio(row: Any, base: Any) -> Interval | None:
    """samples/s of one case over another's, with its 95% interval; None without per-round data. Paired by cycle
    when both were timed in the same interleaved group (bench.interleave)."""
    if not len(row.round_seconds) or not len(base.round_seconds):
        return None
    paired = bool(row.interleave_group) and row.interleave_group == base.interleave_group
    paired = paired and len(row.round_seconds) == len(base.round_seconds)
    return speed_ratio(row.round_seconds, row.dataset_size, base.round_seconds, base.dataset_size, paired=bool(paired))


PARITY_SLOWDOWN_LIMIT = 1.03  # (a) trainlib within 3% of (b) the eager loop
PARITY_SPEEDUP_TARGET = 1.10  # (a) trainlib at least 1.10x as fast as (c) the seed's loop


def listing(values: pd.Series) -> str:
    return ", ".join(str(value) for value in sorted(values.unique()))


FULL_COVERAGE_ROUNDS = 6  # the fewest epochs whose order-statistic interval of the median reaches 95%
BUSY_MACHINE_CORES = 0.25  # other processes' average CPU use above which the report warns


def header_section(cases: pd.DataFrame, machine: dict[str, Any], commit: dict[str, Any], run: str) -> list[str]:
    """Title, what makes runs comparable (machine, torch, threads, commit), how rounds were timed, load warning."""
    commit_text = (
        f", commit {str(commit.get('id', ''))[:7]}{' (dirty tree)' if commit.get('dirty') else ''}" if commit else ""
    )
    gpus = f"{machine['gpu_name']} ×{machine['gpu_count']}" if machine.get("gpu_count") else "none"
    timed = cases[cases["group"] != "guard"]
    lines = [
        "# Epoch throughput",
        "",
        f"Bench run {run}{commit_text}.",
        f"Machine: {machine.get('cpu_model', 'unknown CPU')}, {machine.get('usable_cpu_count', '?')} usable cores; "
        f"torch {machine.get('torch_version', '?')} with {machine.get('torch_num_threads', '?')} intra-op thread(s); "
        f"CUDA {machine.get('cuda_version', 'none')}; GPU: {gpus}.",
        *_load_lines(machine),
        "",
        f"One round is one full training epoch (forward, backward, Adam step) of {listing(cases['model'])} on "
        f"{listing(cases['dataset'])} at batch size {listing(cases['batch_size'])}; samples/s is the training "
        f"split's size over the median of a case's timed epochs ({listing(timed['rounds'])} rounds, after "
        f"{listing(timed['warmup_rounds'])} warm-up epoch(s)). {_timing_sentence(timed)} A verdict says *faster* "
        "or *slower* only when the "
        "whole interval is above or below 1, else *no difference measurable here*. Speedup is over the same "
        "workload's cpu / 0 workers case at the same batch size (torch's loader where it ran).",
    ]
    few = timed[timed["rounds"] < FULL_COVERAGE_ROUNDS]
    if not few.empty:
        coverage = median_interval([1.0] * int(few["rounds"].min())).confidence
        lines += [
            "",
            f"**Few rounds:** {len(few)} case(s) ran fewer than {FULL_COVERAGE_ROUNDS} timed epochs; their median's "
            f"interval is the range of their epochs and covers only {coverage:.0%} or more, and ratios of so few "
            "epochs are rough: read their verdicts as tentative.",
        ]
    return lines


def _timing_sentence(timed: pd.DataFrame) -> str:
    if (timed["interleave_group"] != "").all():
        return (
            "The cases of one table were timed in turn, round by round (interleaved), so a slow patch of the machine "
            "hits them alike. Intervals are 95%: order statistics for a median, a bootstrap paired by round for a "
            "ratio."
        )
    return (
        "The cases were timed one after another (this run predates interleaved rounds), so a slow patch of the "
        "machine may favour one case. Intervals are 95%: order statistics for a median, a bootstrap for a ratio."
    )


def _load_lines(machine: dict[str, Any]) -> list[str]:
    """How busy the machine was with other work during the run, and a warning when it was."""
    other = machine.get("other_processes_cpu_cores")
    if not isinstance(other, (int, float)):
        return []
    stolen = float(machine.get("stolen_cpu_cores", 0.0))
    load = (
        f"Other processes used {other:.2f} CPU cores on average during the run"
        f"{f' and the hypervisor took {stolen:.2f}' if stolen >= 0.01 else ''} (load average "
        f"{machine.get('load_average_start', -1):.2f} at the start, "
        f"{machine.get('load_average_end', -1):.2f} at the end)."
    )
    if other + stolen > BUSY_MACHINE_CORES:
        return [
            load,
            "",
            "**Warning: the machine was busy during this run.** Its figures are slower than on an idle "
            "machine of this kind and should not be compared with an idle run's.",
        ]
    return [load]


def rate_cell(row: Any) -> str:
    """'15,667 [14,902, 16,310]': median samples/s and its 95% interval (no interval without per-round data)."""
    if math.isnan(row.samples_per_second_low):
        return f"{row.samples_per_second:,.0f}"
    return f"{row.samples_per_second:,.0f} [{row.samples_per_second_low:,.0f}, {row.samples_per_second_high:,.0f}]"


def speedup_cells(row: Any) -> str:
    """'1.19× [1.10, 1.27] | faster' for a row with a speedup column, or n/a cells."""
    if math.isnan(row.speedup):
        return "n/a | -"
    if math.isnan(row.speedup_low):
        return f"{row.speedup:.2f}× | -"
    return f"{row.speedup:.2f}× [{row.speedup_low:.2f}, {row.speedup_high:.2f}] | {row.speedup_verdict}"


def workload_section(workload: str, rows: pd.DataFrame) -> list[str]:
    rows = rows.sort_values(["batch_size", "device", "memory", "loader", "num_workers"])
    lines = [
        f"## {workload}: {rows['dataset_size'].iloc[0]:,} training samples per epoch "
        f"(model {listing(rows['model'])}, data {listing(rows['dataset'])})",
        "",
        "| batch | device | memory | loader | workers | samples/s (median [95% interval]) | speedup [95% interval] "
        "| verdict |",
        "|---:|---|---|---|---:|---:|---:|---|",
    ]
    for row in rows.itertuples():
        memory = row.memory if row.device != "cpu" else "-"
        lines.append(
            f"| {row.batch_size} | {row.device} | {memory} | {row.loader} | {row.num_workers} "
            f"| {rate_cell(row)} | {speedup_cells(row)} |"
        )
    if workload == "on_the_fly" and set(rows["loader"]) == {"torch"}:
        lines += ["", "On-the-fly data is not a tensor dataset, so trainlib's loader is torch's DataLoader here."]
    grid_rows = rows[rows["loader"] != "auto"]
    lines += ["", _best_sentence(grid_rows if not grid_rows.empty else rows)]
    lines += [sentence for sentence in _auto_sentences(rows)]
    return lines


AUTO_WITHIN = 0.05  # num_workers = "auto" should land within 5% of the grid's best case


def _auto_sentences(rows: pd.DataFrame) -> list[str]:
    """For each probed ("auto") case: its pick, and its samples/s against the best grid case on the same device."""
    sentences = []
    for row in rows[rows["loader"] == "auto"].itertuples():
        grid = rows[
            (rows["loader"] != "auto") & (rows["device"] == row.device) & (rows["batch_size"] == row.batch_size)
        ]
        if grid.empty:
            continue
        best = grid.sort_values("samples_per_second", ascending=False).iloc[0]
        ratio = case_speed_ratio(row, best)
        if ratio is None:
            ratio_text = f"{row.samples_per_second / best['samples_per_second']:.2f}×"
            verdict = "no per-round data to judge"
        else:
            ratio_text = ratio.text()
            judged = target_verdict(ratio, 1 - AUTO_WITHIN, at_least=True)
            within = {"met": "within", "NOT met": "NOT within"}.get(judged)
            verdict = f"{within} {AUTO_WITHIN:.0%}" if within else f"within {AUTO_WITHIN:.0%} or not: undecided here"
        if _same_setting(row, best):
            verdict += "; it is the grid's best setting itself, so a gap is between two measurements of one setting"
        workers = "1 worker" if row.num_workers == 1 else f"{row.num_workers} workers"
        sentences += [
            "",
            f"num_workers = auto picked {workers} on {row.device} ({row.probe_pick}; probe {row.probe_seconds:.1f} s): "
            f"{rate_cell(row)} samples/s, {ratio_text} of the best grid case's median "
            f"({best['loader']} loader, {best['num_workers']} workers: {best['samples_per_second']:,.0f}/s): "
            f"{verdict}.",
        ]
    return sentences


def _same_setting(auto: Any, best: pd.Series) -> bool:
    """True when the probe picked what the grid's best case ran: trainlib's loader, as many workers, default
    prefetching (the grid's worker cases keep torch's prefetch_factor of 2)."""
    default_prefetch = auto.num_workers == 0 or "prefetch_factor=2" in auto.probe_pick
    return best["loader"] == "trainlib" and best["num_workers"] == auto.num_workers and default_prefetch


def _case_label(row: Any) -> str:
    memory = f", {row.memory} memory" if row.device != "cpu" else ""
    workers = "1 worker" if row.num_workers == 1 else f"{row.num_workers} workers"
    return f"{row.device}, {row.loader} loader, {workers}{memory}, batch size {row.batch_size}"


def _best_sentence(rows: pd.DataFrame) -> str:
    """The fastest case, and only the ranking its intervals support: which others it is not measurably faster than."""
    ranked = list(rows.sort_values("samples_per_second", ascending=False).itertuples())
    best = ranked[0]
    ratios = [(other, case_speed_ratio(best, other)) for other in ranked[1:]]
    if any(ratio is None for _, ratio in ratios):
        return f"Highest median: **{_case_label(best)}** ({best.samples_per_second:,.0f} samples/s; no per-round data)."
    ties = [other for other, ratio in ratios if speed_verdict(ratio) != "faster"]
    sentence = f"Highest median: **{_case_label(best)}** at {best.samples_per_second:,.0f} samples/s"
    if not ratios:
        return sentence + "."
    if not ties:
        runner_up, ratio = ratios[0]
        next_case = f"next: {_case_label(runner_up)}, by {ratio.text()}"
        return sentence + f", measurably faster than every other case ({next_case})."
    names = "; ".join(_case_label(other) for other in ties)
    return (
        sentence + f", but not measurably faster than {names} (the intervals of their ratios include 1): this run "
        "does not rank these."
    )


def parity_ratios(rows: pd.DataFrame) -> dict[str, Interval]:
    """Epoch-time ratios of the parity loops with intervals: trainlib / eager (target <= 1.03), seed / trainlib
    (>= 1.10); paired by cycle when the loops were interleaved."""
    by_loop = {row.loop: row for row in rows.itertuples()}
    ratios: dict[str, Interval] = {}
    # A speed ratio of other over trainlib is trainlib's epoch time over the other's (same data, same size).
    pairs = {"trainlib_over_eager": ("eager", "trainlib"), "seed_over_trainlib": ("trainlib", "seed")}
    for name, (faster, slower) in pairs.items():
        if faster in by_loop and slower in by_loop:
            ratio = case_speed_ratio(by_loop[faster], by_loop[slower])
            if ratio is not None:
                ratios[name] = ratio
    return ratios


def parity_section(device: str, rows: pd.DataFrame) -> list[str]:
    names = {
        "trainlib": "(a) trainlib train_one_epoch, trainlib loader",
        "eager": "(b) hand-written loop over pre-shuffled tensor slices",
        "seed": "(c) seed loop over DataLoader(TensorDataset)",
    }
    lines = [
        f"## Loop parity ({device}): {rows['dataset_size'].iloc[0]:,} training samples, batch size "
        f"{rows['batch_size'].iloc[0]}",
        "",
        "| loop | median epoch (s) | fastest epoch (s) | rounds | samples/s (median [95% interval]) |",
        "|---|---:|---:|---:|---:|",
    ]
    order = {loop: index for index, loop in enumerate(names)}
    for row in sorted(rows.itertuples(), key=lambda row: order.get(row.loop, len(order))):
        lines.append(
            f"| {names.get(row.loop, row.loop)} | {row.median_epoch_seconds:.3f} | {row.min_epoch_seconds:.3f} "
            f"| {row.rounds} | {rate_cell(row)} |"
        )
    ratios = parity_ratios(rows)
    checks = []
    if "trainlib_over_eager" in ratios:
        ratio = ratios["trainlib_over_eager"]
        verdict = target_verdict(ratio, PARITY_SLOWDOWN_LIMIT, at_least=False)
        checks.append(f"(a)/(b) epoch time = {ratio.text(3, '')} (target ≤ {PARITY_SLOWDOWN_LIMIT:.2f}: {verdict})")
    if "seed_over_trainlib" in ratios:
        ratio = ratios["seed_over_trainlib"]
        verdict = target_verdict(ratio, PARITY_SPEEDUP_TARGET, at_least=True)
        checks.append(f"(a) is {ratio.text()} as fast as (c) (target ≥ {PARITY_SPEEDUP_TARGET:.2f}×: {verdict})")
    if checks:
        paired = ", paired by cycle" if (rows["interleave_group"] != "").all() else ""
        lines += ["", "; ".join(checks) + f". Ratios of medians with 95% bootstrap intervals{paired}."]
    return lines
