"""Fixtures shared by the sweep tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Embedded default stores rooted in tmp_path (TRAINLIB_MLRUNS_DIR), as `make sweep` would use them."""
    mlruns = tmp_path / "mlruns"
    monkeypatch.setenv("TRAINLIB_MLRUNS_DIR", str(mlruns))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRAINLIB_OPTUNA_STORAGE", raising=False)
    return {
        "mlruns": str(mlruns),
        "tracking_uri": f"sqlite:///{mlruns / 'mlflow.db'}",
        "storage": f"journal:///{mlruns / 'optuna.journal'}",
    }
