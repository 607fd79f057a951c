"""trainlib bench-compare: the regression gate on two bench runs' per-round times (exit 1 slower, 0 not, 2 misuse)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from trainlib.bench_gate import compare_runs
from trainlib.cli import main

REPO = Path(__file__).resolve().parents[1]
CASES = [f"test_epoch_throughput[cpu-in_memory-torch_loader-{workers}_workers]" for workers in range(8)]


def bench_json(
    path: Path,
    medians: dict[str, float],
    *,
    rounds: int = 8,
    noise: float = 0.02,
    seed: int = 0,
    dataset_size: int = 2000,
    machine: float = 1.0,
    drift: float = 0.0,
    reference: float | None = None,
) -> Path:
    """A pytest-benchmark document with the fields bench/ writes: each round drawn around its case's median times
    ``machine`` (a slower machine) times a per-cycle ``drift`` (a slow patch) that the reference rounds share."""
    generator = np.random.default_rng(seed)
    benchmarks = []
    cycle_speed = machine * generator.lognormal(0.0, drift, size=rounds) if drift else np.full(rounds, machine)
    reference_rounds = (
        (reference * cycle_speed * generator.lognormal(0.0, noise, size=rounds)).tolist() if reference else None
    )
    for name, median in medians.items():
        data = (median * cycle_speed * generator.lognormal(0.0, noise, size=rounds)).tolist()
        extra = {
            "workload": "in_memory",
            "device": "cpu",
            "loader": "torch",
            "num_workers": 0,
            "batch_size": 100,
            "dataset_size": dataset_size,
            "interleave_group": "in_memory-batch_100",
        }
        if reference_rounds:
            extra["reference_round_seconds"] = reference_rounds
        benchmarks.append(
            {
                "name": name,
                "group": "in_memory",
                "extra_info": extra,
                "stats": {
                    "median": float(np.median(data)),
                    "min": min(data),
                    "q1": float(np.quantile(data, 0.25)),
                    "q3": float(np.quantile(data, 0.75)),
                    "rounds": rounds,
                    "data": data,
                },
            }
        )
    path.write_text(json.dumps({"benchmarks": benchmarks, "machine_info": {}, "commit_info": {}}))
    return path


def run_gate(*args: str, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["bench-compare", *args])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_two_runs_of_identical_code_pass_with_a_table_and_no_regression(tmp_path, capsys):
    medians = dict.fromkeys(CASES, 0.2)
    baseline = bench_json(tmp_path / "a.json", medians, seed=1)
    candidate = bench_json(tmp_path / "b.json", medians, seed=2)

    code, out, err = run_gate(str(baseline), str(candidate), capsys=capsys)

    assert code == 0 and "no regression" in out and err == ""
    assert out.count("no difference measurable here") == len(CASES) + 2  # every case, the code and the machine
    assert "vs reference [95% interval]" in out


def test_a_slower_candidate_fails_the_gate_case_by_case_and_over_the_suite(tmp_path, capsys):
    baseline = bench_json(tmp_path / "a.json", dict.fromkeys(CASES, 0.2), seed=1)
    candidate = bench_json(tmp_path / "b.json", dict.fromkeys(CASES, 0.24), seed=2)  # 20% slower

    code, out, _ = run_gate(str(baseline), str(candidate), capsys=capsys)

    assert code == 1 and "REGRESSION: the candidate is slower" in out
    result = compare_runs(baseline, candidate)
    assert result.suite_verdict == "slower" and result.suite_ratio.contains(1.2)
    assert all(case.verdict == "slower" for case in result.cases)


def test_a_thin_slowdown_over_every_case_is_caught_by_the_suite(tmp_path):
    baseline = bench_json(tmp_path / "a.json", dict.fromkeys(CASES, 0.2), seed=1, noise=0.05)
    candidate = bench_json(tmp_path / "b.json", dict.fromkeys(CASES, 0.22), seed=2, noise=0.05)  # 10%, noisy

    result = compare_runs(baseline, candidate)

    assert result.regression and result.suite_verdict == "slower"


def test_one_case_much_slower_fails_even_when_the_suite_is_not(tmp_path):
    medians = dict.fromkeys(CASES, 0.2)
    baseline = bench_json(tmp_path / "a.json", medians, seed=1)
    candidate = bench_json(tmp_path / "b.json", {**medians, CASES[3]: 0.25}, seed=2)  # 25%: the suite 2.8%

    result = compare_runs(baseline, candidate)

    assert [case.name for case in result.cases if case.verdict == "slower"] == [CASES[3]]
    assert result.regression and result.suite_verdict == "no difference measurable here"


def test_one_case_slower_by_less_than_the_case_minimum_is_not_a_regression(tmp_path):
    medians = dict.fromkeys(CASES, 0.2)
    baseline = bench_json(tmp_path / "a.json", medians, seed=1, noise=0.005)
    candidate = bench_json(tmp_path / "b.json", {**medians, CASES[3]: 0.22}, seed=2, noise=0.005)  # 10% < 15%

    result = compare_runs(baseline, candidate)

    assert not result.regression
    assert compare_runs(baseline, candidate, case_min_effect=0.05).regression  # a stricter gate catches it


def test_a_certain_but_tiny_slowdown_is_not_a_regression(tmp_path):
    baseline = bench_json(tmp_path / "a.json", dict.fromkeys(CASES, 0.2), seed=1, noise=0.001)
    candidate = bench_json(tmp_path / "b.json", dict.fromkeys(CASES, 0.204), seed=2, noise=0.001)  # 2%: < 5%, 15%

    result = compare_runs(baseline, candidate)

    assert all(case.p_slower < 0.05 for case in result.cases)  # measurable ...
    assert not result.regression  # ... but smaller than --min-effect


def test_a_slow_patch_of_the_machine_is_cancelled_by_the_reference_timed_in_the_same_cycles(tmp_path):
    medians = dict.fromkeys(CASES, 0.2)
    baseline = bench_json(tmp_path / "a.json", medians, seed=1, reference=0.2, drift=0.15)
    candidate = bench_json(tmp_path / "b.json", medians, seed=2, reference=0.2, drift=0.15, machine=1.2)

    result = compare_runs(baseline, candidate)

    assert all(case.relative for case in result.cases)
    assert result.suite_verdict == "no difference measurable here" and not result.regression
    assert result.machine_ratio.contains(1.2)  # 20% slower machine: within the drift an idle shared machine shows


def test_a_slower_loop_is_caught_relative_to_the_reference_despite_the_drift(tmp_path):
    baseline = bench_json(tmp_path / "a.json", dict.fromkeys(CASES, 0.2), seed=1, reference=0.2, drift=0.15)
    candidate = bench_json(tmp_path / "b.json", dict.fromkeys(CASES, 0.22), seed=2, reference=0.2, drift=0.15)

    result = compare_runs(baseline, candidate)

    assert result.suite_verdict == "slower" and result.suite_ratio.contains(1.1) and result.regression


def test_a_much_slower_machine_fails_the_gate_and_says_it_is_the_machine(tmp_path, capsys):
    baseline = bench_json(tmp_path / "a.json", dict.fromkeys(CASES, 0.2), seed=1, reference=0.2)
    candidate = bench_json(tmp_path / "b.json", dict.fromkeys(CASES, 0.2), seed=2, reference=0.2, machine=1.6)

    code, out, _ = run_gate(str(baseline), str(candidate), capsys=capsys)

    assert code == 1 and "REGRESSION: the machine is slower (raw times), not the code" in out


def test_a_faster_candidate_passes_and_says_so(tmp_path):
    baseline = bench_json(tmp_path / "a.json", dict.fromkeys(CASES, 0.2), seed=1)
    candidate = bench_json(tmp_path / "b.json", dict.fromkeys(CASES, 0.15), seed=2)

    result = compare_runs(baseline, candidate)

    assert not result.regression and result.suite_verdict == "faster"


def test_a_quick_candidate_against_a_full_baseline_is_one_line_and_exit_2(tmp_path, capsys):
    baseline = bench_json(tmp_path / "full.json", dict.fromkeys(CASES, 2.0), dataset_size=20000)
    candidate = bench_json(tmp_path / "quick.json", dict.fromkeys(CASES, 0.2), dataset_size=2000)

    code, out, err = run_gate(str(baseline), str(candidate), capsys=capsys)

    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "dataset_size '20000' in the baseline but '2000' in the candidate" in err
    assert "a --quick candidate needs a --quick baseline" in err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.json", "b.json"], "'missing.json' does not exist"),
        (["a.json", "b.json", "--min-effect", "2"], "--min-effect 2.0: expected a fraction in [0, 1)"),
        (["a.json", "b.json", "--alpha", "0"], "--alpha 0.0: expected a probability in (0, 1)"),
        (["a.json", "b.json", "--case-min-effect", "-1"], "--case-min-effect -1.0: expected a fraction in [0, 1)"),
        (["a.json", "other.json"], "share no bench case"),
    ],
)
def test_misuse_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    bench_json(tmp_path / "a.json", dict.fromkeys(CASES, 0.2))
    bench_json(tmp_path / "b.json", dict.fromkeys(CASES, 0.2), seed=3)
    bench_json(tmp_path / "other.json", {"test_epoch_throughput[cpu-on_the_fly-torch_loader-0_workers]": 0.2})

    code, out, err = run_gate(*arguments, capsys=capsys)

    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


PARITY_CASES = [f"test_parity_loop[cpu-{loop}]" for loop in ("trainlib", "eager", "seed")]


def make_bench_compare(baseline: Path, out: Path) -> subprocess.CompletedProcess:
    """make bench-compare on the quick parity loops (2,000 samples, batch 100), judged against ``baseline``."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "bench-compare",
            f"BASELINE={baseline}",
            f"COMPARE_OUT={out}",
            "BENCH_ARGS=--quick -k parity --max-rounds 6",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # a bound against hangs only
        env={**os.environ, "PYTEST_ADDOPTS": "-p no:cacheprovider"},
        check=False,
    )


def test_make_bench_compare_reruns_the_grid_and_fails_only_against_a_much_faster_baseline(tmp_path):
    # Baselines a thousand times faster and slower than any machine runs these loops: the verdicts cannot depend
    # on this machine's speed.
    fast = bench_json(tmp_path / "fast.json", dict.fromkeys(PARITY_CASES, 1e-4), dataset_size=2000)
    slow = bench_json(tmp_path / "slow.json", dict.fromkeys(PARITY_CASES, 100.0), dataset_size=2000)

    regression = make_bench_compare(fast, tmp_path / "against-fast")
    no_regression = make_bench_compare(slow, tmp_path / "against-slow")

    assert "REGRESSION: the candidate is slower" in regression.stdout, regression.stdout[-3000:] + regression.stderr
    assert "Error 1" in regression.stderr and "Traceback" not in regression.stdout + regression.stderr
    assert no_regression.returncode == 0, no_regression.stdout[-3000:] + no_regression.stderr[-3000:]
    assert "no regression" in no_regression.stdout and "code (geometric mean" in no_regression.stdout
    candidate = json.loads((tmp_path / "against-slow" / "candidate.json").read_text())
    assert {bench["name"] for bench in candidate["benchmarks"]} == set(PARITY_CASES)


def test_make_bench_compare_without_a_baseline_is_one_line(tmp_path):
    result = make_bench_compare(tmp_path / "none.json", tmp_path / "out")

    assert result.returncode != 0 and not (tmp_path / "out").exists()
    assert f"bench-compare: baseline '{tmp_path / 'none.json'}' not found" in result.stderr
