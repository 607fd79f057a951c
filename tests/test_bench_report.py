"""End to end: the quick bench grid writes pytest-benchmark JSON; write_reports turns it into files and MLflow runs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from trainlib.bench_report import EXPERIMENT_NAME, load_results, write_reports
from trainlib.bench_sections import case_speed_ratio
from trainlib.bench_stats import speed_ratio
from trainlib.cli import main

REPO = Path(__file__).resolve().parents[1]
GRID_CASES = {
    f"test_epoch_throughput[cpu-{workload}-{loader}_loader-{workers}_workers]"
    for workload, loader in (("in_memory", "torch"), ("in_memory", "trainlib"), ("on_the_fly", "torch"))
    for workers in (0, 2)
}
GRID_CASES |= {f"test_epoch_throughput[cpu-{workload}-auto_workers]" for workload in ("in_memory", "on_the_fly")}
PARITY_CASES = {f"test_parity_loop[cpu-{loop}]" for loop in ("trainlib", "eager", "seed")}
# The quick grid's speed-knob cases on the CPU: each knob once against fp32 eager, for both knob workloads.
KNOB_CASES = {
    f"test_knob_epoch[cpu-{workload}-batch_128-{knobs}]"
    for workload, knobs in [
        *(
            (workload, knobs)
            for workload in ("mnist1d", "images")
            for knobs in ("fp32-eager", "bf16-eager", "fp32-compiled")
        ),
        ("images", "fp32-eager-channels_last"),
    ]
}
GUARD_CASES = {f"test_time_to_target[cpu-fp32-{mode}]" for mode in ("eager", "compiled")}
CPU_CASES = GRID_CASES | PARITY_CASES | KNOB_CASES | GUARD_CASES
RECORD_KEYS = {
    "samples_per_second",
    "batch_size",
    "dataset_size",
    "device_name",
    "num_workers",
    "loader",
    "workload",
    "device",
}
MACHINE_KEYS = {"torch_version", "cuda_version", "gpu_name", "gpu_count", "cpu_model", "cpu_count", "torch_num_threads"}


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run `pytest bench --quick` (the grid of make bench-quick) once; return its JSON path and document."""
    json_path = tmp_path_factory.mktemp("bench") / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "--quick",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={json_path}",
            # Fewer images per epoch and guard epochs than the quick grid: the figures are not the point here.
            "--image-samples",
            "64",
            "--guard-epochs",
            "2",
            "--max-rounds",
            "6",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,  # two compilations on a loaded 2-core machine; the bound only catches hangs
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return {"path": json_path, "document": json.loads(json_path.read_text()), "output": result.stdout}


def test_quick_bench_records_every_cpu_case_with_its_throughput(quick_bench):
    document = quick_bench["document"]
    benchmarks = {bench["name"]: bench for bench in document["benchmarks"]}

    assert {name for name in benchmarks if "[cpu" in name} == CPU_CASES
    if not torch.cuda.is_available():
        assert set(benchmarks) == CPU_CASES
        assert "CUDA is not available on this machine" in quick_bench["output"]  # the skip reason is shown
    groups: dict[str, set[str]] = {}
    for name, bench in benchmarks.items():
        groups.setdefault(bench["extra_info"].get("interleave_group", "none"), set()).add(name)
    for name, bench in benchmarks.items():
        extra = bench["extra_info"]
        if name in GUARD_CASES:  # one training run to the target: its figures are times, not a throughput
            assert set(extra) >= RECORD_KEYS - {"samples_per_second"} | {"time_to_target", "epochs_trained"}, name
            assert bench["stats"]["rounds"] == 1 and extra["epochs_trained"] <= 2
            continue
        assert set(extra) >= RECORD_KEYS, name
        assert extra["samples_per_second"] == pytest.approx(extra["dataset_size"] / bench["stats"]["median"])
        assert bench["stats"]["rounds"] == 6 and len(bench["stats"]["data"]) == 6  # --rounds (quick 6) = --max-rounds
        assert bench["options"]["timer"] == "interleaved_rounds"  # the rounds timed in turn are handed over
        assert extra["interleaved_cases"] == len(groups[extra["interleave_group"]]), name
    assert groups["parity-cpu"] == PARITY_CASES
    assert groups["in_memory-batch_100"] == {name for name in GRID_CASES if "in_memory" in name}
    assert groups["knobs-images-batch_128"] == {name for name in KNOB_CASES if "images" in name}
    assert (
        benchmarks["test_epoch_throughput[cpu-in_memory-torch_loader-0_workers]"]["extra_info"]["dataset_size"] == 2000
    )
    assert benchmarks["test_epoch_throughput[cpu-on_the_fly-torch_loader-2_workers]"]["extra_info"]["num_workers"] == 2
    assert set(document["machine_info"]) >= MACHINE_KEYS
    assert document["machine_info"]["torch_num_threads"] == 1


def test_write_reports_writes_tables_chart_and_mlflow_runs(quick_bench, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLIB_MLRUNS_DIR", str(tmp_path / "mlruns"))  # where the experiment's artifacts go
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"

    report = write_reports(quick_bench["path"], tmp_path / "reports", tracking_uri)

    names = {bench["name"] for bench in quick_bench["document"]["benchmarks"]}
    markdown = report.markdown.read_text()
    assert "## in_memory: 2,000 training samples per epoch" in markdown
    assert "## on_the_fly: 400 training samples per epoch" in markdown
    assert "| cpu | - | trainlib | 2 |" in markdown and "| cpu | - | torch | 0 |" in markdown
    assert markdown.count("Highest median: **") == 2
    assert "samples/s (median [95% interval])" in markdown and "Other processes used " in markdown
    assert markdown.count("num_workers = auto picked ") == 2 and "of the best grid case" in markdown
    assert "(a)/(b) epoch time = " in markdown and "as fast as (c)" in markdown
    assert "## Speed knobs, mnist1d: cnn1d on mnist1d, 2,000 samples per epoch, batch size 128" in markdown
    assert "## Speed knobs, images: resnet on shapes, 64 samples per epoch, batch size 128" in markdown
    assert "| cpu | fp32 · eager | " in markdown and "| cpu | fp32 · compiled | " in markdown
    assert "| cpu | fp32 · eager · channels_last | " in markdown and "| cpu | bf16 · eager | " in markdown
    assert "## Accuracy guard: time to 90% validation accuracy" in markdown
    assert "CUDA not measured in this run (no GPU here)" in markdown or torch.cuda.is_available()
    with report.csv.open() as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert set(rows) == names
    baseline = rows["test_epoch_throughput[cpu-in_memory-torch_loader-0_workers]"]
    assert float(baseline["speedup"]) == 1.0 and baseline["speedup_verdict"] == "baseline"
    for row in rows.values():  # every timed case has its 95% interval around its median
        if row["group"] != "guard":
            low, high = float(row["samples_per_second_low"]), float(row["samples_per_second_high"])
            assert low <= float(row["samples_per_second"]) <= high, row["name"]
    verdicts = {row["speedup_verdict"] for row in rows.values() if row["speedup_verdict"] not in ("", "baseline")}
    assert verdicts and verdicts <= {"faster", "slower", "no difference measurable here"}
    assert report.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report.chart.stat().st_size > 10_000

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment.artifact_location == (tmp_path / "mlruns" / "artifacts" / EXPERIMENT_NAME).as_uri()
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == report.run_id]
    assert [run.info.run_id for run in parents] == [report.run_id]
    parent = parents[0]
    assert parent.data.params["torch_version"] == quick_bench["document"]["machine_info"]["torch_version"]
    assert {"cpu_model", "cpu_count", "gpu_count", "torch_num_threads"} <= set(parent.data.params)
    artifacts = {item.path for item in client.list_artifacts(report.run_id)}
    assert {"throughput.md", "throughput.csv", "throughput.png"} <= artifacts
    assert {run.info.run_name for run in children} == names
    for child in children:
        row = rows[child.info.run_name]
        params, metrics = child.data.params, child.data.metrics
        assert {key: params[key] for key in ("device", "num_workers", "workload", "loader", "batch_size")} == {
            key: row[key] for key in ("device", "num_workers", "workload", "loader", "batch_size")
        }
        assert metrics["samples_per_second"] == pytest.approx(float(row["samples_per_second"]), rel=1e-5)
        assert metrics["median_epoch_seconds"] == pytest.approx(float(row["median_epoch_seconds"]), rel=1e-5)

    again = write_reports(quick_bench["path"], tmp_path / "reports", tracking_uri)

    assert again.run_id == report.run_id  # the same bench run is not logged twice
    assert len(client.search_runs([experiment.experiment_id], max_results=100)) == len(runs)


@pytest.mark.parametrize("content", [None, "not json", '{"benchmarks": []}'], ids=["missing", "not-json", "no-cases"])
def test_bench_report_command_rejects_a_bad_file_in_one_line(content, tmp_path, capsys):
    json_path = tmp_path / "results.json"
    if content is not None:
        json_path.write_text(content)
    out_dir = tmp_path / "reports"

    with pytest.raises(SystemExit) as exit_info:
        main(["bench-report", str(json_path), "--out-dir", str(out_dir), "--no-tracking"])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("trainlib: error: benchmark results file") and "\n" not in error
    assert not out_dir.exists()


def test_bench_report_names_a_malformed_case_in_one_line(quick_bench, tmp_path, capsys):
    document = json.loads(Path(quick_bench["path"]).read_text())
    broken = document["benchmarks"][0]
    broken["extra_info"]["num_workers"] = "two"
    json_path = tmp_path / "results.json"
    json_path.write_text(json.dumps(document))
    out_dir = tmp_path / "reports"

    with pytest.raises(SystemExit) as exit_info:
        main(["bench-report", str(json_path), "--out-dir", str(out_dir), "--no-tracking"])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and broken["name"] in error and "malformed" in error
    assert not out_dir.exists()


def test_bench_report_out_dir_naming_a_file_is_one_line(quick_bench, tmp_path, capsys):
    a_file = tmp_path / "reports"
    a_file.write_text("not a folder")

    with pytest.raises(SystemExit) as exit_info:
        main(["bench-report", str(quick_bench["path"]), "--out-dir", str(a_file / "sub"), "--no-tracking"])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--out-dir" in error
    assert a_file.read_text() == "not a folder"


def test_a_one_round_case_whose_interval_rounds_past_its_median_still_gets_a_chart(tmp_path):
    # 2000 / 0.1137 and (1 / 0.1137) * 2000 differ in the last bit: the error bar must not come out negative.
    seconds = 0.11370000000000001
    case = {
        "name": "test_epoch_throughput[cpu-in_memory-torch_loader-0_workers]",
        "group": "in_memory",
        "extra_info": {"workload": "in_memory", "device": "cpu", "loader": "torch", "num_workers": 0},
        "stats": {"median": seconds, "min": seconds, "q1": seconds, "q3": seconds, "rounds": 1, "data": [seconds]},
    }
    case["extra_info"] |= {"batch_size": 100, "dataset_size": 2000}
    path = tmp_path / "one_round.json"
    path.write_text(json.dumps({"benchmarks": [case], "machine_info": {}, "commit_info": {}}))

    report = write_reports(path, tmp_path / "report", track=False)

    assert report.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**Few rounds:** 1 case(s)" in report.markdown.read_text()


def test_cases_of_groups_with_one_name_from_two_pytest_runs_are_compared_unpaired(tmp_path: Path) -> None:
    # make bench-device times its parts in separate pytest runs: a group name repeats, the rounds were not in turn.
    base_rounds, same_run_rounds, other_run_rounds = [1.0, 1.1, 0.9, 1.2], [0.5, 0.6, 0.4, 0.7], [0.5, 0.4, 0.7, 0.6]
    document = {"machine_info": {}, "commit_info": {}, "benchmarks": []}
    for name, rounds, session in (
        ("base", base_rounds, "a"),
        ("same", same_run_rounds, "a"),
        ("other", other_run_rounds, "b"),
    ):
        extra = {"workload": "in_memory", "device": "cpu", "loader": "torch", "num_workers": 0, "batch_size": 100}
        extra |= {"dataset_size": 1000, "interleave_group": "in_memory-batch_100", "interleave_session": session}
        stats = {"median": sorted(rounds)[1], "min": min(rounds), "q1": min(rounds), "q3": max(rounds)}
        stats |= {"rounds": len(rounds), "data": rounds}
        document["benchmarks"].append({"name": name, "group": "in_memory", "extra_info": extra, "stats": stats})
    path = tmp_path / "two-runs.json"
    path.write_text(json.dumps(document))

    rows = {row.name: row for row in load_results(path).cases.itertuples()}

    assert rows["same"].interleave_group == rows["base"].interleave_group != rows["other"].interleave_group
    paired = speed_ratio(same_run_rounds, 1000, base_rounds, 1000, paired=True)
    unpaired = speed_ratio(other_run_rounds, 1000, base_rounds, 1000, paired=False)
    assert paired != speed_ratio(same_run_rounds, 1000, base_rounds, 1000, paired=False)  # the choice shows
    assert case_speed_ratio(rows["same"], rows["base"]) == paired
    assert case_speed_ratio(rows["other"], rows["base"]) == unpaired
