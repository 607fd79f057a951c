"""num_workers = "auto": the candidates, the pick, the cache, and a sweep that probes and logs its pick."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch.utils.data import Dataset, TensorDataset

from tests.sweep_helpers import runs_of, sweep, write_config
from trainlib.loader_tuning import (
    CACHE_FILE,
    LoaderSettings,
    candidates,
    label_of,
    pick_fastest,
    probe_loader_settings,
    tuned_loader_settings,
)

CPU = torch.device("cpu")


class SlowSamples(Dataset):
    """Samples that each wait 10 ms (as reading a file would): workers overlap the waits, whatever the CPU load."""

    def __len__(self) -> int:
        return 400

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(0.01)
        return torch.full((4,), float(index)), torch.tensor(index % 2)


def no_step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """A training step that costs nothing: the loader alone decides the rate."""


def test_candidates_go_up_to_the_usable_cores_and_pin_only_for_a_gpu() -> None:
    assert candidates(2, feeds_gpu=False) == [
        LoaderSettings(0),
        LoaderSettings(1, 2, True),
        LoaderSettings(1, 4, True),
        LoaderSettings(2, 2, True),
        LoaderSettings(2, 4, True),
    ]
    on_gpu = candidates(4, feeds_gpu=True)
    assert {settings.num_workers for settings in on_gpu} == {0, 1, 2, 4}
    assert all(settings.pin_memory for settings in on_gpu)


def test_the_pick_is_the_fastest_or_among_ties_the_fewest_workers() -> None:
    options = candidates(4, feeds_gpu=False)
    rates = {label_of(settings): 100.0 for settings in options}
    rates[label_of(LoaderSettings(4, 4, True))] = 150.0
    rates[label_of(LoaderSettings(2, 2, True))] = 148.0  # within 2% of the fastest: fewer workers win

    assert pick_fastest(options, rates) == LoaderSettings(2, 2, True)
    rates[label_of(LoaderSettings(2, 2, True))] = 140.0
    assert pick_fastest(options, rates) == LoaderSettings(4, 4, True)


def test_the_probe_measures_each_candidate_and_picks_workers_for_waiting_samples() -> None:
    options = [LoaderSettings(0), LoaderSettings(2, 2, True)]

    result = probe_loader_settings(SlowSamples(), 8, CPU, no_step, options, seconds_per_candidate=0.5)

    assert set(result.samples_per_second) == {label_of(settings) for settings in options}
    assert all(rate > 0 for rate in result.samples_per_second.values())
    # Two workers overlap two 10 ms waits: about twice the rate of none, far beyond the tie tolerance.
    assert result.settings == LoaderSettings(2, 2, True), result.samples_per_second


class ColdStartStep:
    """A training step slow on its first calls (kernels, caches and clocks warming up, as on a GPU), then 1 ms."""

    def __init__(self, cold_calls: int) -> None:
        self.calls, self.cold_calls = 0, cold_calls

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.calls += 1
        time.sleep(0.02 if self.calls <= self.cold_calls else 0.001)


def test_a_step_that_starts_cold_does_not_cost_the_first_candidate_the_pick() -> None:
    # In-memory data: no workers is at least as fast as one (a worker only adds a hop between processes), but
    # no workers is probed first. Its 20 slow first steps (0.4 s) fall in the untimed warm-up; the rounds then
    # alternate, so neither candidate is always timed first.
    data = TensorDataset(torch.randn(4000, 4), torch.randint(0, 2, (4000,)))
    options = [LoaderSettings(0), LoaderSettings(1, 2, True)]

    result = probe_loader_settings(data, 8, CPU, ColdStartStep(cold_calls=20), options, seconds_per_candidate=0.9)

    assert result.settings == LoaderSettings(0), result.samples_per_second


def test_the_pick_is_cached_per_machine_workload_and_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINLIB_CACHE_DIR", str(tmp_path))
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))

    first = tuned_loader_settings("workload-a", data, 16, CPU, no_step)
    again = tuned_loader_settings("workload-a", data, 16, CPU, no_step)

    assert not first.cached and first.seconds > 0
    assert again.cached and again.settings == first.settings and again.seconds == 0
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 1
    tuned_loader_settings("workload-a", data, 32, CPU, no_step)  # another batch size: probed again
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 2


def test_a_sweep_with_auto_workers_probes_once_and_logs_the_pick(
    tmp_path: Path, stores: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINLIB_CACHE_DIR", str(tmp_path / "cache"))
    config = write_config(tmp_path, "auto.toml", num_workers='"auto"', epochs="1", batch_size="[32]")

    sweep(config, n_trials=2)

    parent, children = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert parent.data.params["data.num_workers"] == "auto"
    picks = {child.data.params["loader.num_workers"] for child in children}
    assert len(children) == 2 and len(picks) == 1, "one batch size: one probe, one pick"
    cache = json.loads((tmp_path / "cache" / CACHE_FILE).read_text())
    assert [entry["settings"]["num_workers"] for entry in cache.values()] == [int(picks.pop())]
