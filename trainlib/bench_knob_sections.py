"""The Markdown sections of the bench report about speed knobs: CPU against CUDA, each knob setting, the guard.

Each function takes the report's rows (pandas, as bench_report.load_results makes them) and returns lines.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from trainlib.bench_sections import case_speed_ratio, listing, rate_cell, speedup_cells
from trainlib.bench_stats import speed_verdict


def _knob_label(row: Any) -> str:
    parts = [row.precision, "compiled" if row.compile else "eager"]
    return " · ".join([*parts, "channels_last"] if row.channels_last else parts)


def device_speedup_section(knobs: pd.DataFrame, machine: dict[str, Any]) -> list[str]:
    """fp32 eager samples/s on the CPU and on CUDA per workload and batch size, and where the GPU starts to pay."""
    plain = knobs[(knobs["precision"] == "fp32") & ~knobs["compile"] & ~knobs["channels_last"]]
    lines = [
        "## CPU against CUDA (fp32, eager)",
        "",
        "| workload | batch | CPU samples/s | CUDA samples/s | CUDA / CPU [95% interval] | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for workload, rows in plain.groupby("workload", sort=False):
        pays_from = None
        for batch_size, pair in rows.groupby("batch_size"):
            by_device = {row.device: row for row in pair.itertuples()}
            cells = [rate_cell(by_device[name]) if name in by_device else "not measured" for name in ("cpu", "cuda")]
            ratio_cells = "n/a | -"
            if len(by_device) == 2:
                cuda, cpu = by_device["cuda"], by_device["cpu"]
                ratio = case_speed_ratio(cuda, cpu)
                if ratio is None:
                    ratio_cells = f"{cuda.samples_per_second / cpu.samples_per_second:.2f}× | -"
                else:
                    ratio_cells = f"{ratio.text()} | CUDA {speed_verdict(ratio)}"
                    if pays_from is None and speed_verdict(ratio) == "faster":
                        pays_from = batch_size
            lines.append(
                f"| {str(workload).removeprefix('knobs-')} | {batch_size} | {cells[0]} | {cells[1]} | {ratio_cells} |"
            )
        if "cuda" in set(rows["device"]):
            verdicts.append(
                f"{str(workload).removeprefix('knobs-')}: the GPU is measurably faster from batch size {pays_from} on"
                if pays_from is not None
                else f"{str(workload).removeprefix('knobs-')}: the GPU was not measurably faster at any batch size"
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
        "| device | knobs | samples/s (median [95% interval]) | vs fp32 eager [95% interval] | verdict "
        "| first epoch (s) | compile + warm-up (s) | break-even (epochs) | memory (MiB) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for device, on_device in compared.groupby("device", sort=False):
        for row in _knob_order(on_device).itertuples():
            overhead, break_even = _compile_cost(row, on_device)
            memory = row.peak_memory_mb if not math.isnan(row.peak_memory_mb) else row.rss_growth_mb
            memory_text = (
                "n/a" if math.isnan(memory) else f"{memory:,.0f}" + (" (RSS growth)" if device == "cpu" else "")
            )
            lines.append(
                f"| {device} | {_knob_label(row)} | {rate_cell(row)} | {speedup_cells(row)} "
                f"| {_seconds(row.first_epoch_seconds)} | {overhead} | {break_even} | {memory_text} |"
            )
    lines += [
        "",
        "A verdict is *faster* or *slower* only when the whole 95% interval of the ratio is above or below 1. "
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
