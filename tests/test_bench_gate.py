"""trainlib bench-compare: the regression gate on two bench runs' per-round times (exit 1 slower, 0 not, 2 misuse)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainlib.bench_gate import compare_runs
from trainlib.cli import main

CASES = [f"test_epoch_throughput[cpu-in_memory-torch_loader-{workers}_workers]" for workers in range(8)]


def bench_json(
    path: Path,
    medians: dict[str, float],
    *,
    rounds: int = 8,
    noise: float = 0.02,
    seed: int = 0,
    dataset_size: int = 2000,
) -> Path:
    """A pytest-benchmark document with the fields bench/ writes, rounds drawn around each case's median."""
    generator = np.random.default_rng(seed)
    benchmarks = []
    for name, median in medians.items():
        data = sorted(median * generator.lognormal(0.0, noise, size=rounds))
        benchmarks.append(
            {
                "name": name,
                "group": "in_memory",
                "extra_info": {
                    "workload": "in_memory",
                    "device": "cpu",
                    "loader": "torch",
                    "num_workers": int(name.split("-")[-1].split("_")[0]),
                    "batch_size": 100,
                    "dataset_size": dataset_size,
                    "interleave_group": "in_memory-batch_100",
                },
                "stats": {
                    "median": float(np.median(data)),
                    "min": data[0],
                    "q1": float(np.quantile(data, 0.25)),
                    "q3": float(np.quantile(data, 0.75)),
                    "rounds": rounds,
                    "data": list(generator.permutation(data)),
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
    assert out.count("no difference measurable here") == len(CASES) + 1  # every case and the suite
    assert "time ratio [95% interval]" in out


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
