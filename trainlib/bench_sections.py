"""The Markdown sections of the bench report: worker grid, loop parity, CPU against CUDA, speed knobs, guard.

Each function takes the report's rows (pandas, as bench_report.load_results makes them) and returns lines.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

PARITY_SLOWDOWN_LIMIT = 1.03  # (a) trainlib within 3% of (b) the eager loop
PARITY_SPEEDUP_TARGET = 1.10  # (a) trainlib at least 1.10x as fast as (c) the seed's loop


def listing(values: pd.Series) -> str:
    return ", ".join(str(value) for value in sorted(values.unique()))


def workload_section(workload: str, rows: pd.DataFrame) -> list[str]:
    rows = rows.sort_values(["batch_size", "device", "memory", "loader", "num_workers"])
    lines = [
        f"## {workload}: {rows['dataset_size'].iloc[0]:,} training samples per epoch "
        f"(model {listing(rows['model'])}, data {listing(rows['dataset'])})",
        "",
        "| batch | device | memory | loader | workers | samples/s (median) | IQR (samples/s) | speedup |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows.itertuples():
        memory = row.memory if row.device != "cpu" else "-"
        speedup = "n/a" if math.isnan(row.speedup) else f"{row.speedup:.2f}×"
        lines.append(
            f"| {row.batch_size} | {row.device} | {memory} | {row.loader} | {row.num_workers} "
            f"| {row.samples_per_second:,.0f} | {row.samples_per_second_iqr:,.0f} | {speedup} |"
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
        ratio = row.samples_per_second / best["samples_per_second"]
        verdict = f"within {AUTO_WITHIN:.0%}" if ratio >= 1 - AUTO_WITHIN else f"NOT within {AUTO_WITHIN:.0%}"
        if _same_setting(row, best):
            verdict += (
                ": but it is the grid's best setting itself, so the gap is between two measurements of one setting "
                f"(their IQRs: {row.samples_per_second_iqr:,.0f} and {best['samples_per_second_iqr']:,.0f} samples/s), "
                "not a worse pick"
            )
        workers = "1 worker" if row.num_workers == 1 else f"{row.num_workers} workers"
        sentences += [
            "",
            f"num_workers = auto picked {workers} on {row.device} ({row.probe_pick}; probe {row.probe_seconds:.1f} s): "
            f"{row.samples_per_second:,.0f} samples/s, {ratio:.2f}× of the best grid case "
            f"({best['loader']} loader, {best['num_workers']} workers: {best['samples_per_second']:,.0f}/s), "
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
    ranked = rows.sort_values("samples_per_second", ascending=False)
    best = next(ranked.itertuples())
    sentence = f"Best on this machine: **{_case_label(best)}** at {best.samples_per_second:,.0f} samples/s"
    if not math.isnan(best.speedup):
        sentence += f" ({best.speedup:.2f}× the baseline)"
    if len(ranked) > 1:
        runner_up = list(ranked.itertuples())[1]
        # Ranges of the quartile epochs overlap: the order of the two is within this run's noise.
        if runner_up.dataset_size / runner_up.q1_epoch_seconds >= best.dataset_size / best.q3_epoch_seconds:
            sentence += f"; {_case_label(runner_up)} is within the measured spread of it"
    return sentence + "."


def parity_ratios(rows: pd.DataFrame, statistic: str = "median") -> dict[str, float]:
    """Epoch-time ratios of the parity loops: trainlib / eager (target <= 1.03), seed / trainlib (>= 1.10)."""
    median = rows.set_index("loop")[f"{statistic}_epoch_seconds"]
    ratios: dict[str, float] = {}
    if {"trainlib", "eager"} <= set(median.index):
        ratios["trainlib_over_eager"] = median["trainlib"] / median["eager"]
    if {"trainlib", "seed"} <= set(median.index):
        ratios["seed_over_trainlib"] = median["seed"] / median["trainlib"]
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
        "| loop | median epoch (s) | IQR (s) | fastest epoch (s) | samples/s (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    order = {loop: index for index, loop in enumerate(names)}
    for row in sorted(rows.itertuples(), key=lambda row: order.get(row.loop, len(order))):
        lines.append(
            f"| {names.get(row.loop, row.loop)} | {row.median_epoch_seconds:.3f} "
            f"| {row.q3_epoch_seconds - row.q1_epoch_seconds:.3f} | {row.min_epoch_seconds:.3f} "
            f"| {row.samples_per_second:,.0f} |"
        )
    ratios = parity_ratios(rows)
    checks = []
    if "trainlib_over_eager" in ratios:
        ratio = ratios["trainlib_over_eager"]
        met = "met" if ratio <= PARITY_SLOWDOWN_LIMIT else "NOT met"
        checks.append(f"(a)/(b) epoch time = {ratio:.3f} (target ≤ {PARITY_SLOWDOWN_LIMIT:.2f}: {met})")
    if "seed_over_trainlib" in ratios:
        ratio = ratios["seed_over_trainlib"]
        met = "met" if ratio >= PARITY_SPEEDUP_TARGET else "NOT met"
        checks.append(f"(a) is {ratio:.2f}× as fast as (c) (target ≥ {PARITY_SPEEDUP_TARGET:.2f}×: {met})")
    if checks:
        lines += ["", "; ".join(checks) + "."]
    fastest = parity_ratios(rows, "min")
    if len(fastest) == 2:  # fastest epochs: least disturbed by other load on a shared machine
        lines += [
            "",
            f"On the fastest epochs instead of medians: (a)/(b) = {fastest['trainlib_over_eager']:.3f}, "
            f"(a) is {fastest['seed_over_trainlib']:.2f}× as fast as (c).",
        ]
    return lines


def _knob_label(row: Any) -> str:
    parts = [row.precision, "compiled" if row.compile else "eager"]
    return " · ".join([*parts, "channels_last"] if row.channels_last else parts)


def device_speedup_section(knobs: pd.DataFrame, machine: dict[str, Any]) -> list[str]:
    """fp32 eager samples/s on the CPU and on CUDA per workload and batch size, and where the GPU starts to pay."""
    plain = knobs[(knobs["precision"] == "fp32") & ~knobs["compile"] & ~knobs["channels_last"]]
    lines = [
        "## CPU against CUDA (fp32, eager)",
        "",
        "| workload | batch | CPU samples/s | CUDA samples/s | CUDA / CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for workload, rows in plain.groupby("workload", sort=False):
        pays_from = None
        for batch_size, pair in rows.groupby("batch_size"):
            by_device = pair.set_index("device")["samples_per_second"]
            cpu, cuda = by_device.get("cpu", math.nan), by_device.get("cuda", math.nan)
            ratio = cuda / cpu
            if pays_from is None and ratio > 1:
                pays_from = batch_size
            cells = [f"{value:,.0f}" if not math.isnan(value) else "not measured" for value in (cpu, cuda)]
            lines.append(
                f"| {str(workload).removeprefix('knobs-')} | {batch_size} | {cells[0]} | {cells[1]} "
                f"| {'n/a' if math.isnan(ratio) else f'{ratio:.2f}×'} |"
            )
        if "cuda" in set(rows["device"]):
            verdicts.append(
                f"{str(workload).removeprefix('knobs-')}: the GPU pays from batch size {pays_from} on"
                if pays_from is not None
                else f"{str(workload).removeprefix('knobs-')}: the GPU did not beat the CPU at any batch size measured"
            )
    if not machine.get("cuda_available", False):
        lines += [
            "",
            "CUDA not measured in this run (no GPU here): `make bench-device` on a GPU machine fills this column.",
        ]
    elif verdicts:
        lines += ["", "; ".join(verdicts) + "."]
    return lines


def knob_section(workload: str, rows: pd.DataFrame) -> list[str]:
    """Each knob setting at the knob batch size: speed against fp32 eager, compile cost and break-even, memory."""
    compared = rows[rows["batch_size"] == rows["batch_size"].mode().iloc[0]]
    lines = [
        f"## Speed knobs, {workload.removeprefix('knobs-')}: {listing(compared['model'])} on "
        f"{listing(compared['dataset'])}, {compared['dataset_size'].iloc[0]:,} samples per epoch, batch size "
        f"{compared['batch_size'].iloc[0]}",
        "",
        "| device | knobs | samples/s (median) | vs fp32 eager | first epoch (s) | compile + warm-up (s) "
        "| break-even (epochs) | memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for device, on_device in compared.groupby("device", sort=False):
        for row in _knob_order(on_device).itertuples():
            overhead, break_even = _compile_cost(row, on_device)
            memory = row.peak_memory_mb if not math.isnan(row.peak_memory_mb) else row.rss_growth_mb
            memory_text = (
                "n/a" if math.isnan(memory) else f"{memory:,.0f}" + (" (RSS growth)" if device == "cpu" else "")
            )
            lines.append(
                f"| {device} | {_knob_label(row)} | {row.samples_per_second:,.0f} "
                f"| {'n/a' if math.isnan(row.speedup) else f'{row.speedup:.2f}×'} "
                f"| {_seconds(row.first_epoch_seconds)} | {overhead} | {break_even} | {memory_text} |"
            )
    lines += [
        "",
        "First epoch: timed on its own before the timed rounds (it holds compilation and autotuning). Compile + "
        "warm-up: how much longer the compiled first epoch took than a steady one, beyond the same for eager. "
        "Break-even: epochs after which the compiled run has caught up with eager (never: its steady epochs are "
        "not faster). Memory: CUDA's peak allocated bytes; on the CPU the growth of the resident set.",
    ]
    return lines


PRECISION_ORDER = {"fp32": 0, "bf16": 1, "fp16": 2}


def _knob_order(rows: pd.DataFrame) -> pd.DataFrame:
    """fp32 eager first, then by precision, compilation and memory format."""
    key = rows["precision"].map(PRECISION_ORDER).fillna(9) * 4 + rows["compile"] * 2 + rows["channels_last"]
    return rows.assign(_order=key).sort_values("_order").drop(columns="_order")


def _seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _compile_cost(row: Any, on_device: pd.DataFrame) -> tuple[str, str]:
    """A compiled row's extra first-epoch seconds over its eager twin and its break-even epoch count."""
    if not row.compile:
        return "-", "-"
    twin = on_device[
        (on_device["precision"] == row.precision)
        & ~on_device["compile"]
        & (on_device["channels_last"] == row.channels_last)
    ]
    if twin.empty or math.isnan(row.first_epoch_seconds):
        return "n/a", "n/a"
    eager = twin.iloc[0]
    overhead = (row.first_epoch_seconds - row.median_epoch_seconds) - (
        eager["first_epoch_seconds"] - eager["median_epoch_seconds"]
    )
    saving = eager["median_epoch_seconds"] - row.median_epoch_seconds
    break_even = "never" if saving <= 0 else f"{max(math.ceil(overhead / saving), 0):,}"
    return f"{overhead:.1f}", break_even


def guard_section(guard: pd.DataFrame) -> list[str]:
    """Time to the default study's target accuracy for each knob setting, against fp32 eager on the same device."""
    target = guard["target_accuracy"].iloc[0]
    lines = [
        f"## Accuracy guard: time to {target:.0%} validation accuracy (the default study's best configuration, "
        f"{listing(guard['model'])} on {listing(guard['dataset'])}, batch size {listing(guard['batch_size'])})",
        "",
        "| device | knobs | reached | epochs to target | time to target (s) | vs fp32 eager | best val accuracy |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for _, on_device in guard.groupby("device", sort=False):
        plain = on_device[(on_device["precision"] == "fp32") & ~on_device["compile"]]
        base = plain["time_to_target"].iloc[0] if not plain.empty else math.nan
        for row in _knob_order(on_device).itertuples():
            reached = not math.isnan(row.time_to_target)
            ratio = row.time_to_target / base if reached and not math.isnan(base) else math.nan
            lines.append(
                f"| {row.device} | {_knob_label(row)} | {'yes' if reached else 'no'} "
                f"| {f'{row.epochs_to_target:.0f}' if reached else '-'} | {_seconds(row.time_to_target)} "
                f"| {'n/a' if math.isnan(ratio) else f'{ratio:.2f}×'} | {row.best_val_accuracy:.1%} |"
            )
    lines += [
        "",
        "Time to target: the training epochs' seconds until validation accuracy first reached the target, "
        "compilation included; a knob with faster epochs that needs more of them shows it here.",
    ]
    return lines
