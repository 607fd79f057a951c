"""The bench path stays bare: running a bench case imports neither MLflow, Optuna, pandas nor scikit-learn."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs one tiny grid case and one parity loop in-process with only pytest-benchmark as plugin (as on a bare GPU
# machine), then reports which modules that pulled in.
CHECK = """
import json, sys
import pytest
exit_code = pytest.main([
    "-q", "-p", "pytest_benchmark.plugin", "-p", "no:cacheprovider", "--benchmark-disable",
    "bench/test_throughput.py", "bench/test_parity.py",
    "-k", "cpu-in_memory-trainlib_loader-0_workers or (test_parity_loop and cpu-trainlib)",
    "--workers", "0", "--in-memory-samples", "250", "--rounds", "1", "--max-rounds", "1",
])
print(json.dumps({"exit_code": int(exit_code), "modules": sorted(sys.modules)}))
"""
FORBIDDEN = ("mlflow", "optuna", "pandas", "sklearn", "sqlalchemy")
FORBIDDEN += ("trainlib.bench_report", "trainlib.bench_gate", "trainlib.tracking")


def test_running_the_bench_imports_no_tracking_or_reporting_stack():
    environment = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exit_code"] == 0, result.stdout[-2000:]
    modules = set(report["modules"])
    assert {"bench.conftest", "bench.test_throughput", "bench.test_parity", "bench.interleave", "torch"} <= modules
    assert {"trainlib.engine", "trainlib.bench_stats"} <= modules
    leaked = sorted(name for name in modules if any(name == bad or name.startswith(f"{bad}.") for bad in FORBIDDEN))
    assert not leaked, leaked
