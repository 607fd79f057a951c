"""Experiment configs: a TOML file becomes a validated SweepConfig once, and every mistake names file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainlib import InvalidArgument
from trainlib.optim import OPTIMIZER_NAMES
from trainlib.sweep import load_config
from trainlib.sweep.config import METRICS, validate_config
from trainlib.sweep.search import PRUNER_NAMES, SAMPLER_NAMES

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))


def smoke() -> dict:
    """smoke.toml as a mapping, to be edited by a test."""
    import tomllib

    return tomllib.loads((ROOT / "experiments" / "smoke.toml").read_text())


def first_problem(raw: dict) -> str:
    with pytest.raises(InvalidArgument) as raised:
        validate_config(raw, source="study.toml")
    return str(raised.value)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[path.stem for path in EXPERIMENTS])
def test_every_shipped_experiment_is_valid(path: Path) -> None:
    config = load_config(path)

    assert config.study.n_trials > 0 and config.training.epochs > 0
    assert METRICS[config.study.metric] == config.study.direction


def test_lr_log_false_is_kept_and_log_defaults_to_true() -> None:
    raw = smoke()
    assert load_config(ROOT / "experiments" / "smoke.toml").search.lr.log is True
    raw["search"]["lr"] = {"low": 1e-3, "high": 3e-2, "log": False}

    assert validate_config(raw).search.lr.log is False


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("study", "sampler", "grid", ["study.toml: study.sampler", "'grid'", *SAMPLER_NAMES]),
        ("study", "pruner", "asha", ["study.pruner", *PRUNER_NAMES]),
        ("search", "optimizer", ["sgd", "lbfgs"], ["search.optimizer", "'lbfgs'", *OPTIMIZER_NAMES]),
        ("search", "lr", {"low": 0.1, "high": 0.01}, ["search.lr", "low (0.1) must be below high (0.01)"]),
        ("search", "momentum", {"low": 0.5, "high": 1.5}, ["search.momentum.high", "1.5"]),
        ("search", "batch_size", [32, 32], ["search.batch_size", "must not repeat"]),
        ("search", "weight_decay", {"low": 0, "high": 1e-3}, ["search.weight_decay.low", "greater than 0"]),
        ("study", "direction", "minimize", ["val_accuracy", "maximize"]),
        ("training", "epochs", 0, ["training.epochs", "greater than 0"]),
        ("data", "val_fraction", 1.0, ["data.val_fraction", "less than 1"]),
    ],
    ids=[
        "sampler",
        "pruner",
        "optimizer",
        "lr-reversed",
        "momentum-above-one",
        "batch-repeated",
        "weight-decay-zero",
        "direction",
        "epochs",
        "val-fraction",
    ],
)
def test_a_bad_value_is_one_line_naming_source_key_and_choices(section: str, key: str, value: object, words: list[str]):
    raw = smoke()
    raw[section][key] = value

    message = first_problem(raw)

    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_unknown_and_missing_keys_are_named() -> None:
    raw = smoke()
    raw["study"]["seeds"] = 1
    del raw["search"]

    message = first_problem(raw)

    assert "study.seeds: unknown key" in message or "search: required key is missing" in message
    assert message.endswith("; and 1 more problem")


def test_model_options_are_checked_by_the_model_factory() -> None:
    raw = smoke()
    raw["model"]["hidden_sizes"] = [0]

    assert "model" in first_problem(raw)


def test_overrides_are_reported_under_the_flag_not_the_file_key() -> None:
    config = load_config(ROOT / "experiments" / "smoke.toml")

    with pytest.raises(InvalidArgument, match=r"^--epochs -2: .*greater than 0"):
        config.with_overrides({"training.epochs": ("--epochs", -2)})
    assert config.with_overrides({"training.epochs": ("--epochs", None)}) == config
    assert config.with_overrides({"training.epochs": ("--epochs", 7)}).training.epochs == 7
