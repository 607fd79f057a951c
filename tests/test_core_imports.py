"""The core stays plain PyTorch: importing it must not pull in MLflow or Optuna."""

import subprocess
import sys

CHECK = """
import sys
import trainlib, trainlib.engine, trainlib.data, trainlib.models, trainlib.optim, trainlib.device
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("mlflow", "optuna"))
assert not heavy, heavy
assert "trainlib.engine" in sys.modules and "torch" in sys.modules
print("clean")
"""


def test_core_imports_neither_mlflow_nor_optuna():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
