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

from trainlib.bench_knob_sections import device_speedup_section, guard_section, knob_section
from trainlib.bench_sections import case_speed_ratio, header_section, parity_section, workload_section
from trainlib.bench_stats import median_interval, speed_verdict
from trainlib.errors import InvalidArgument
from trainlib.stores import resolve_tracking_uri

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "throughput"
MARKDOWN_FILE, CSV_FILE, CHART_FILE = "throughput.md", "throughput.csv", "throughput.png"
CASE_KEYS = ("workload", "device", "loader", "num_workers", "batch_size", "dataset_size")
# Speedups are relative to this case of the same workload and batch size: the seed's setup (torch's DataLoader, no
# workers, CPU), or where that did not run (a study's own workload), trainlib's loader with no workers on the CPU.
BASELINE_CASES = ({"device": "cpu", "loader": "torch", "num_workers": 0}, {"device": "cpu", "num_workers": 0})


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
    cases = cases.join(_speedups(cases))
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
        **_median_figures(stats.get("data"), size),
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
        "interleave_group": _interleave_group(extra),
        "reference_round_seconds": _seconds_list(extra.get("reference_round_seconds")),
    }


def _interleave_group(extra: dict[str, Any]) -> str:
    """The interleaved group a case was timed in, unique to its pytest run ("" when not interleaved): cases of
    groups with one name from two runs (make bench-device's parts) were not timed in turn, so are not paired."""
    group, session = str(extra.get("interleave_group", "")), str(extra.get("interleave_session", ""))
    return f"{group}@{session}" if group and session else group


def _seconds_list(values: Any) -> list[float]:
    """A list of positive round times, or [] where absent or not one."""
    if not isinstance(values, list) or not all(isinstance(value, (int, float)) and value > 0 for value in values):
        return []
    return [float(value) for value in values]


def _median_figures(data: Any, dataset_size: int) -> dict[str, Any]:
    """The rounds' seconds (pytest-benchmark keeps them under stats.data) and the 95% interval of samples/s."""
    rounds = _seconds_list(data)
    if not rounds or not all(math.isfinite(value) for value in rounds):
        return {"round_seconds": [], "samples_per_second_low": math.nan, "samples_per_second_high": math.nan}
    speed = median_interval(rounds).inverse().scaled(dataset_size)
    return {"round_seconds": rounds, "samples_per_second_low": speed.low, "samples_per_second_high": speed.high}


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


def _speedups(cases: pd.DataFrame) -> pd.DataFrame:
    """samples/s over the baseline case of the workload and batch size, with its interval and verdict (NaN where
    none ran): the worker grid's baseline for its cases, fp32 eager on the same device for speed-knob cases;
    parity and guard excluded."""
    sections = _section_of(cases)
    knobs = cases[sections == "knobs"]
    grid = cases[sections == "grid"]
    bases: dict[Any, Any] = {}
    for _, rows in grid.groupby(["workload", "batch_size"]):
        for baseline in BASELINE_CASES:
            is_baseline = pd.Series(True, index=rows.index)
            for key, value in baseline.items():
                is_baseline &= rows[key] == value
            if is_baseline.any():
                bases.update(dict.fromkeys(rows.index, rows.loc[is_baseline].iloc[0]))
                break
    for _, rows in knobs.groupby(["workload", "device", "batch_size"]):
        plain = rows[(rows["precision"] == "fp32") & ~rows["compile"] & ~rows["channels_last"]]
        if not plain.empty:
            bases.update(dict.fromkeys(rows.index, plain.iloc[0]))
    columns = pd.DataFrame(
        {"speedup": math.nan, "speedup_low": math.nan, "speedup_high": math.nan, "speedup_verdict": ""},
        index=cases.index,
    )
    for index, base in bases.items():
        row = cases.loc[index]
        columns.loc[index, "speedup"] = row["samples_per_second"] / base["samples_per_second"]
        if row["name"] == base["name"]:
            columns.loc[index, ["speedup_low", "speedup_high", "speedup_verdict"]] = 1.0, 1.0, "baseline"
            continue
        interval = case_speed_ratio(row, base)
        if interval is not None:
            columns.loc[index, ["speedup_low", "speedup_high"]] = interval.low, interval.high
            columns.loc[index, "speedup_verdict"] = speed_verdict(interval)
    return columns


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
    results.cases.drop(columns=["round_seconds", "reference_round_seconds"]).to_csv(
        report.csv, index=False, float_format="%.6g"
    )
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
    lines = header_section(cases, machine, results.commit_info, f"{results.datetime} (`{results.path.name}`)")
    if not machine.get("cuda_available", False):
        lines += ["", "No GPU here: the CUDA cases (pinned, pageable and GPU-resident memory) were skipped."]
    for workload, rows in grid.groupby("workload", sort=False):
        lines += ["", *workload_section(str(workload), rows)]
    if not parity.empty:
        for device, rows in parity.groupby("device", sort=False):
            lines += ["", *parity_section(str(device), rows)]
    if not knobs.empty:
        lines += ["", *device_speedup_section(knobs, machine)]
        for workload, rows in knobs.groupby("workload", sort=False):
            lines += ["", *knob_section(str(workload), rows)]
    if not guard.empty:
        lines += ["", *guard_section(guard)]
    return "\n".join(lines) + "\n"


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
            fast = line["samples_per_second_high"].fillna(line["samples_per_second"])
            slow = line["samples_per_second_low"].fillna(line["samples_per_second"])
            axis.errorbar(
                line["num_workers"],
                line["samples_per_second"],
                # clipped at 0: with one round the interval is the median itself, up to rounding
                yerr=[
                    (line["samples_per_second"] - slow).clip(lower=0),
                    (fast - line["samples_per_second"]).clip(lower=0),
                ],
                marker="o",
                capsize=3,
                label=label,
            )
        axis.set_title(f"{workload} ({rows['dataset_size'].iloc[0]:,} samples/epoch)")
        axis.set_xlabel("DataLoader workers")
        axis.set_ylabel("samples/s (median, 95% interval)")
        axis.set_xticks(sorted(rows["num_workers"].unique()))
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    models = ", ".join(dict.fromkeys(grid["model"]))
    figure.suptitle(
        f"Epoch throughput, {models} + Adam ({results.machine_info.get('cpu_model', '')})", fontsize="medium"
    )
    figure.savefig(path, dpi=90)
