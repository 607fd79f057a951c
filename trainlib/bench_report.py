"""Turn a pytest-benchmark JSON file from bench/ into throughput tables (Markdown, CSV), a chart and MLflow runs.

Not on the bench path: the bench itself runs without pandas, matplotlib or MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trainlib.errors import InvalidArgument
from trainlib.stores import resolve_tracking_uri

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "throughput"
MARKDOWN_FILE, CSV_FILE, CHART_FILE = "throughput.md", "throughput.csv", "throughput.png"
CASE_KEYS = ("workload", "device", "loader", "num_workers", "batch_size", "dataset_size")
# Speedups are relative to this case of the same workload and batch size: the seed's setup (torch's DataLoader, no
# workers, CPU), or where that did not run (a study's own workload), trainlib's loader with no workers on the CPU.
BASELINE_CASES = ({"device": "cpu", "loader": "torch", "num_workers": 0}, {"device": "cpu", "num_workers": 0})
PARITY_SLOWDOWN_LIMIT = 1.03  # (a) trainlib within 3% of (b) the eager loop
PARITY_SPEEDUP_TARGET = 1.10  # (a) trainlib at least 1.10x as fast as (c) the seed's loop


@dataclass(frozen=True)
class BenchResults:
    """One bench run: its JSON document's metadata and one row per case."""

    path: Path
    sha256: str
    machine_info: dict[str, Any]
    commit_info: dict[str, Any]
    datetime: str
    cases: pd.DataFrame


@dataclass(frozen=True)
class BenchReport:
    """What write_reports produced: the files, and the MLflow parent run (None without tracking)."""

    markdown: Path
    csv: Path
    chart: Path
    run_id: str | None = None

    @property
    def files(self) -> tuple[Path, Path, Path]:
        """The report files, Markdown first."""
        return self.markdown, self.csv, self.chart


def load_results(json_path: str | Path) -> BenchResults:
    """Read a pytest-benchmark JSON file written by bench/; InvalidArgument if it is missing or not one."""
    path = Path(json_path)
    if not path.is_file():
        raise InvalidArgument(f"benchmark results file {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"benchmark results file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list):
        raise InvalidArgument(
            f"benchmark results file {str(path)!r} is not pytest-benchmark JSON (no 'benchmarks' list)"
        )
    rows = [_checked_case_row(bench, path) for bench in document["benchmarks"] if _is_bench_case(bench)]
    if not rows:
        raise InvalidArgument(
            f"benchmark results file {str(path)!r} holds no bench/ cases (benchmarks with extra_info "
            f"{', '.join(CASE_KEYS)} and timings); run 'make bench' to produce one"
        )
    cases = pd.DataFrame(rows)
    cases["speedup"] = _speedups(cases)
    return BenchResults(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        machine_info=document.get("machine_info") or {},
        commit_info=document.get("commit_info") or {},
        datetime=str(document.get("datetime", "")),
        cases=cases,
    )


def _is_bench_case(bench: Any) -> bool:
    if not isinstance(bench, dict):
        return False
    extra, stats = bench.get("extra_info") or {}, bench.get("stats") or {}
    return all(key in extra for key in CASE_KEYS) and all(
        key in stats for key in ("median", "min", "q1", "q3", "rounds")
    )


def _checked_case_row(bench: dict[str, Any], path: Path) -> dict[str, Any]:
    """The case's row; InvalidArgument naming the case if a value has the wrong type or is not positive."""
    name = bench.get("name", "?")
    try:
        row = _case_row(bench)
        timings = [row[key] for key in ("median_epoch_seconds", "min_epoch_seconds", "q1_epoch_seconds")]
        if not all(isinstance(value, (int, float)) and value > 0 for value in [*timings, row["dataset_size"]]):
            raise ValueError("timings and dataset_size must be positive numbers")
    except (TypeError, ValueError, ZeroDivisionError, KeyError) as error:
        raise InvalidArgument(f"benchmark results file {str(path)!r}: case {name!r} is malformed ({error})") from None
    return row


def _case_row(bench: dict[str, Any]) -> dict[str, Any]:
    extra, stats = bench["extra_info"], bench["stats"]
    size = extra["dataset_size"]
    return {
        "name": bench["name"],
        "group": bench.get("group") or "",
        "workload": extra["workload"],
        "model": str(extra.get("model", "cnn1d")),
        "dataset": str(extra.get("dataset", "mnist1d")),
        "device": extra["device"],
        "device_name": extra.get("device_name", extra["device"]),
        "memory": extra.get("memory", "pageable"),
        "loader": extra["loader"],
        "loop": extra.get("loop", ""),
        "num_workers": int(extra["num_workers"]),
        "batch_size": int(extra["batch_size"]),
        "dataset_size": int(size),
        "rounds": int(stats["rounds"]),
        "warmup_rounds": int(extra.get("warmup_rounds", 0)),
        "median_epoch_seconds": stats["median"],
        "min_epoch_seconds": stats["min"],
        "q1_epoch_seconds": stats["q1"],
        "q3_epoch_seconds": stats["q3"],
        "samples_per_second": size / stats["median"],
        # Fast quartile minus slow quartile of the epoch times, in samples/s.
        "samples_per_second_iqr": size / stats["q1"] - size / stats["q3"],
        # Speed knobs (bench/test_speed_knobs.py, bench/test_accuracy_guard.py); fp32 eager where not recorded.
        "precision": str(extra.get("precision", "fp32")),
        "compile": bool(extra.get("compile", False)),
        "channels_last": bool(extra.get("channels_last", False)),
        **{key: _number(extra.get(key)) for key in KNOB_FIGURES},
        "probe_pick": str(extra.get("probe_pick", "")),
    }


# Optional figures of knob and guard cases; NaN in the table where a case did not record one.
KNOB_FIGURES = (
    "probe_seconds",
    "first_epoch_seconds",
    "peak_memory_mb",
    "rss_growth_mb",
    "target_accuracy",
    "time_to_target",
    "epochs_to_target",
    "best_val_accuracy",
)


def _number(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _section_of(cases: pd.DataFrame) -> pd.Series:
    """Which part of the report each case belongs to: grid, parity, knobs (speed knobs) or guard (accuracy guard)."""
    group = cases["group"]
    return pd.Series(
        [
            "parity"
            if name.startswith("parity")
            else "knobs"
            if name.startswith("knobs")
            else name
            if name == "guard"
            else "grid"
            for name in group
        ],
        index=cases.index,
    )


def _is_parity(cases: pd.DataFrame) -> pd.Series:
    return _section_of(cases) == "parity"


def _speedups(cases: pd.DataFrame) -> pd.Series:
    """samples/s over the baseline case of the workload and batch size (NaN where none ran): the worker grid's
    baseline for its cases, fp32 eager on the same device for speed-knob cases; parity and guard excluded."""
    sections = _section_of(cases)
    knobs = cases[sections == "knobs"]
    grid = cases[sections == "grid"]
    speedups = pd.Series(math.nan, index=cases.index)
    for _, rows in grid.groupby(["workload", "batch_size"]):
        for baseline in BASELINE_CASES:
            is_baseline = pd.Series(True, index=rows.index)
            for key, value in baseline.items():
                is_baseline &= rows[key] == value
            if is_baseline.any():
                base = rows.loc[is_baseline, "samples_per_second"].iloc[0]
                speedups[rows.index] = rows["samples_per_second"] / base
                break
    for _, rows in knobs.groupby(["workload", "device", "batch_size"]):
        plain = rows[(rows["precision"] == "fp32") & ~rows["compile"] & ~rows["channels_last"]]
        if not plain.empty:
            speedups[rows.index] = rows["samples_per_second"] / plain["samples_per_second"].iloc[0]
    return speedups


def write_reports(
    json_path: str | Path, out_dir: str | Path = "bench/reports", tracking_uri: str | None = None, *, track: bool = True
) -> BenchReport:
    """Write throughput.md, throughput.csv and throughput.png to ``out_dir``; with ``track``, log MLflow runs.

    The MLflow experiment 'throughput' gets one parent run per bench run (machine info, the report files)
    and one child run per case. A bench run already logged (same JSON content) is not logged twice.
    """
    results = load_results(json_path)
    uri = resolve_tracking_uri(tracking_uri) if track else None  # validated before anything is written
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgument(
            f"--out-dir {str(out)!r} cannot be a folder: it, or a folder above it, is a file"
        ) from None
    report = BenchReport(markdown=out / MARKDOWN_FILE, csv=out / CSV_FILE, chart=out / CHART_FILE)
    report.markdown.write_text(render_markdown(results), encoding="utf-8")
    results.cases.to_csv(report.csv, index=False, float_format="%.6g")
    plot_throughput(results, report.chart)
    log.debug("wrote %s", ", ".join(str(path) for path in report.files))
    if uri is None:
        return report
    from trainlib.tracking.bench_runs import BENCH_FILE_TAG, BENCH_SHA256_TAG, log_bench_run

    tags = {
        BENCH_SHA256_TAG: results.sha256,
        BENCH_FILE_TAG: results.path.name,
        "bench.datetime": results.datetime,
        "git.commit": str(results.commit_info.get("id", "unknown")),
        "git.dirty": str(results.commit_info.get("dirty", "unknown")),
        "host": str(results.machine_info.get("node", "unknown")),
    }
    files = [*report.files, results.path]
    run_id = log_bench_run(results.cases, results.machine_info, tags, files, uri, EXPERIMENT_NAME)
    return BenchReport(report.markdown, report.csv, report.chart, run_id)


# ---- Markdown ----


def render_markdown(results: BenchResults) -> str:
    """The human report: one throughput table per workload, then the loop-parity comparison if it ran."""
    cases = results.cases
    sections = _section_of(cases)
    grid, parity = cases[sections == "grid"], cases[sections == "parity"]
    knobs, guard = cases[sections == "knobs"], cases[sections == "guard"]
    machine = results.machine_info
    commit = results.commit_info
    commit_text = (
        f", commit {str(commit.get('id', ''))[:7]}{' (dirty)' if commit.get('dirty') else ''}" if commit else ""
    )
    rounds = _listing(cases["rounds"])
    if len(grid) and len(parity):
        rounds = f"{_listing(grid['rounds'])} ({_listing(parity['rounds'])} for the parity loops)"
    gpus = f"{machine['gpu_name']} ×{machine['gpu_count']}" if machine.get("gpu_count") else "none"
    lines = [
        "# Epoch throughput",
        "",
        f"Bench run {results.datetime} (`{results.path.name}`){commit_text}.",
        f"Machine: {machine.get('cpu_model', 'unknown CPU')}, {machine.get('usable_cpu_count', '?')} usable cores; "
        f"torch {machine.get('torch_version', '?')} with {machine.get('torch_num_threads', '?')} intra-op thread(s); "
        f"CUDA {machine.get('cuda_version', 'none')}; GPU: {gpus}.",
        "",
        f"One round is one full training epoch (forward, backward, Adam step) of {_listing(cases['model'])} on "
        f"{_listing(cases['dataset'])} at batch size {_listing(cases['batch_size'])}; samples/s is the training "
        f"split's size over the median of {rounds} timed epochs, after {_listing(cases['warmup_rounds'])} warm-up "
        "epoch(s). IQR is the spread between the fast and slow quartile epochs, in samples/s. Speedup is over the "
        "same workload's cpu / 0 workers case at the same batch size (torch's loader where it ran).",
    ]
    if not machine.get("cuda_available", False):
        lines += ["", "No GPU here: the CUDA cases (pinned, pageable and GPU-resident memory) were skipped."]
    for workload, rows in grid.groupby("workload", sort=False):
        lines += ["", *_workload_section(str(workload), rows)]
    if not parity.empty:
        for device, rows in parity.groupby("device", sort=False):
            lines += ["", *_parity_section(str(device), rows)]
    if not knobs.empty:
        lines += ["", *_device_speedup_section(knobs, machine)]
        for workload, rows in knobs.groupby("workload", sort=False):
            lines += ["", *_knob_section(str(workload), rows)]
    if not guard.empty:
        lines += ["", *_guard_section(guard)]
    return "\n".join(lines) + "\n"


def _listing(values: pd.Series) -> str:
    return ", ".join(str(value) for value in sorted(values.unique()))


def _workload_section(workload: str, rows: pd.DataFrame) -> list[str]:
    rows = rows.sort_values(["batch_size", "device", "memory", "loader", "num_workers"])
    lines = [
        f"## {workload}: {rows['dataset_size'].iloc[0]:,} training samples per epoch "
        f"(model {_listing(rows['model'])}, data {_listing(rows['dataset'])})",
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


def _parity_section(device: str, rows: pd.DataFrame) -> list[str]:
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


def _device_speedup_section(knobs: pd.DataFrame, machine: dict[str, Any]) -> list[str]:
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


def _knob_section(workload: str, rows: pd.DataFrame) -> list[str]:
    """Each knob setting at the knob batch size: speed against fp32 eager, compile cost and break-even, memory."""
    compared = rows[rows["batch_size"] == rows["batch_size"].mode().iloc[0]]
    lines = [
        f"## Speed knobs, {workload.removeprefix('knobs-')}: {_listing(compared['model'])} on "
        f"{_listing(compared['dataset'])}, {compared['dataset_size'].iloc[0]:,} samples per epoch, batch size "
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


def _guard_section(guard: pd.DataFrame) -> list[str]:
    """Time to the default study's target accuracy for each knob setting, against fp32 eager on the same device."""
    target = guard["target_accuracy"].iloc[0]
    lines = [
        f"## Accuracy guard: time to {target:.0%} validation accuracy (the default study's best configuration, "
        f"{_listing(guard['model'])} on {_listing(guard['dataset'])}, batch size {_listing(guard['batch_size'])})",
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


# ---- chart ----


def plot_throughput(results: BenchResults, path: Path) -> None:
    """samples/s against DataLoader workers: one panel per workload, one line per device + loader (+ memory)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = results.cases[_section_of(results.cases) == "grid"]
    workloads = list(dict.fromkeys(grid["workload"]))
    figure = Figure(figsize=(5.5 * max(len(workloads), 1), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(len(workloads), 1), squeeze=False)[0]
    for axis, workload in zip(axes, workloads, strict=False):
        rows = grid[grid["workload"] == workload]
        several_batch_sizes = rows["batch_size"].nunique() > 1
        for (device, loader, memory, batch), line in rows.groupby(
            ["device", "loader", "memory", "batch_size"], sort=True
        ):
            line = line.sort_values("num_workers")
            label = f"{device} · {loader}" + (f" · {memory}" if device != "cpu" else "")
            label += f" · batch {batch}" if several_batch_sizes else ""
            fast, slow = (
                line["dataset_size"] / line["q1_epoch_seconds"],
                line["dataset_size"] / line["q3_epoch_seconds"],
            )
            axis.errorbar(
                line["num_workers"],
                line["samples_per_second"],
                yerr=[line["samples_per_second"] - slow, fast - line["samples_per_second"]],
                marker="o",
                capsize=3,
                label=label,
            )
        axis.set_title(f"{workload} ({rows['dataset_size'].iloc[0]:,} samples/epoch)")
        axis.set_xlabel("DataLoader workers")
        axis.set_ylabel("samples/s (median, IQR bars)")
        axis.set_xticks(sorted(rows["num_workers"].unique()))
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    models = ", ".join(dict.fromkeys(grid["model"]))
    figure.suptitle(
        f"Epoch throughput, {models} + Adam ({results.machine_info.get('cpu_model', '')})", fontsize="medium"
    )
    figure.savefig(path, dpi=90)
