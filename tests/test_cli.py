"""The CLI's contract for mistakes: one clear line on stderr, exit code 2, nothing written to any store."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainlib.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.toml"


@pytest.fixture
def mlruns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "mlruns"
    monkeypatch.setenv("TRAINLIB_MLRUNS_DIR", str(folder))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRAINLIB_OPTUNA_STORAGE", raising=False)
    return folder


def smoke_with(tmp_path: Path, old: str, new: str) -> str:
    text = SMOKE.read_text()
    assert old in text, f"{old!r} is not in smoke.toml"
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new))
    return str(path)


CPU = 'device = "cpu"'  # smoke.toml's [training] device line, where training keys are added
ONE = 'direction = "maximize"\nmetric = "val_accuracy"'  # smoke.toml's one objective


def objectives(*metrics: str) -> str:
    return "objectives = [" + ", ".join(f'{{ metric = "{metric}" }}' for metric in metrics) + "]"


# (what is wrong, how to make the config file, extra flags, words the message must contain)
BAD_CONFIGS = [
    ("unknown sampler", ('sampler = "random"', 'sampler = "grid"'), [], ["study.sampler", "'grid'", "tpe", "cmaes"]),
    ("unknown pruner", ('pruner = "none"', 'pruner = "asha"'), [], ["study.pruner", "'asha'", "median", "hyperband"]),
    ("unknown optimizer", ('["sgd", "adam"]', '["sgd", "lbfgs"]'), [], ["search.optimizer", "'lbfgs'", "rmsprop"]),
    ("unknown dataset", ('dataset = "digits"', 'dataset = "cifar"'), [], ["data.dataset", "'cifar'", "mnist1d"]),
    ("unknown model", ('name = "mlp"', 'name = "vit"'), [], ["model.name", "'vit'", "cnn1d", "resnet"]),
    ("batch size not a power of two", ("[32, 64]", "[32, 48]"), [], ["search.batch_size", "48", "powers of two"]),
    ("lr range reversed", ("low = 1e-3, high = 3e-2", "low = 3e-2, high = 1e-3"), [], ["search.lr", "below"]),
    ("negative lr", ("low = 1e-3", "low = -1e-3"), [], ["search.lr.low", "-0.001", "greater than 0"]),
    ("zero epochs", ("epochs = 3", "epochs = 0"), [], ["training.epochs", "0"]),
    ("unknown key", ("seed = 0\n\n[data]", "seed = 0\nseeds = 1\n\n[data]"), [], ["study.seeds", "unknown key"]),
    ("missing section", ("[search]", "[searching]"), [], ["search", "missing"]),
    ("unknown model option", ("hidden_sizes = [32]", "widths = [32]"), [], ["model", "widths", "hidden_sizes"]),
    ("device absent", ('device = "cpu"', 'device = "cuda:7"'), [], ["training.device", "cuda:7"]),
    ("unknown device name", ('device = "cpu"', 'device = "tpu"'), [], ["training.device", "tpu", "auto, cpu"]),
    ("negative workers in config", ("num_workers = 0", "num_workers = -1"), [], ["data.num_workers", "-1"]),
    ("direction against metric", ('direction = "maximize"', 'direction = "minimize"'), [], ["val_accuracy"]),
    ("not TOML", ("[study]", "[study"), [], ["not valid TOML"]),
    # Objectives, targets, budgets (several objectives replace the metric and direction lines).
    ("unknown metric", ('metric = "val_accuracy"', 'metric = "f1"'), [], ["study.metric", "'f1'", "time_to_target"]),
    ("unknown direction", ('direction = "maximize"', 'direction = "upward"'), [], ["study.direction", "minimize"]),
    ("unknown objective", (ONE, objectives("val_accuracy", "speed")), [], ["objectives.1.metric", "train_seconds"]),
    (
        "objective direction",
        (ONE, 'objectives = [{ metric = "val_accuracy", direction = "up" }]'),
        [],
        ["objectives.0.direction", "'up'", "maximize"],
    ),
    (
        "objective against its metric",
        (ONE, 'objectives = [{ metric = "train_seconds", direction = "maximize" }]'),
        [],
        ["train_seconds", "minimize"],
    ),
    ("time to target without a target", (ONE, objectives("val_accuracy", "time_to_target")), [], ["target_accuracy"]),
    ("target above 1", ("seed = 0\n\n[data]", "seed = 0\ntarget_accuracy = 1.5\n\n[data]"), [], ["target_accuracy"]),
    ("target of 0", ("seed = 0\n\n[data]", "seed = 0\ntarget_accuracy = 0\n\n[data]"), [], ["target_accuracy"]),
    ("negative budget", ("seed = 0\n\n[data]", "seed = 0\ntime_budget_seconds = -5\n\n[data]"), [], ["budget"]),
    ("objectives beside metric", ('direction = "maximize"', objectives("val_accuracy")), [], ["either metric"]),
    ("no quality objective", (ONE, objectives("train_seconds")), [], ["val_accuracy or val_loss"]),
    (
        "cmaes with two objectives",
        (
            ONE + '\nn_trials = 4\nsampler = "random"',
            objectives("val_accuracy", "train_seconds") + '\nn_trials = 4\nsampler = "cmaes"',
        ),
        [],
        ["cmaes", "nsga2"],
    ),
    ("peak memory on a CPU", (ONE, objectives("val_accuracy", "peak_memory_mb")), [], ["peak_memory_mb", "CUDA"]),
    (
        "unknown lr schedule",
        ("[32, 64]", '[32, 64]\nlr_schedule = ["cosine", "step"]'),
        [],
        ["lr_schedule", "one_cycle"],
    ),
    # Strict types: a boolean is a boolean, an integer an integer, a number finite.
    ("batch_norm as text", ("hidden_sizes = [32]", 'hidden_sizes = [32]\nbatch_norm = "false"'), [], ["batch_norm"]),
    ("boolean batch size", ("[32, 64]", "[true]"), [], ["search.batch_size", "valid integer", "True"]),
    ("float epochs", ("\nepochs = 3", "\nepochs = 3.0"), [], ["training.epochs", "valid integer"]),
    ("text dropout", ("hidden_sizes = [32]", 'hidden_sizes = [32]\ndropout = "0.1"'), [], ["dropout", "number"]),
    ("infinite lr", ("high = 3e-2", "high = inf"), [], ["search.lr.high", "finite"]),
    ("study name too long", ('name = "smoke"', f'name = "{"s" * 300}"'), [], ["study.name", "200 characters"]),
    # Speed knobs.
    ("unknown precision", (CPU, CPU + '\nprecision = "fp8"'), [], ["training.precision", "'fp8'", "bf16", "fp16"]),
    ("unknown drawn precision", ("[32, 64]", '[32, 64]\nprecision = ["fp32", "int8"]'), [], ["search.precision"]),
    ("compile as text", (CPU, CPU + '\ncompile = "yes"'), [], ["training.compile", "valid boolean"]),
    ("unknown compile mode", (CPU, CPU + '\ncompile_mode = "fast"'), [], ["compile_mode", "reduce-overhead"]),
    ("channels_last without Conv2d", (CPU, CPU + "\nchannels_last = true"), [], ["channels_last", "2-D convolutions"]),
    (
        "drawn channels_last without Conv2d",
        ("[32, 64]", "[32, 64]\nchannels_last = [false, true]"),
        [],
        ["channels_last", "2-D convolutions"],
    ),
    (
        "resnet on flat samples",
        ('name = "mlp"\nhidden_sizes = [32]', 'name = "resnet"'),
        [],
        ["(channels, height, width)"],
    ),
    ("num_workers as text", ("num_workers = 0", 'num_workers = "many"'), [], ["data.num_workers", "auto"]),
    (
        "prefetch without workers",
        ("num_workers = 0", "num_workers = 0\nprefetch_factor = 4"),
        [],
        ["prefetch_factor", "num_workers > 0"],
    ),
    # Checks that need the dataset, still before any store is opened.
    ("tiny val_fraction", ("num_workers = 0", "num_workers = 0\nval_fraction = 0.0001"), [], ["val_fraction"]),
    ("val_fraction near 1", ("num_workers = 0", "num_workers = 0\nval_fraction = 0.9999"), [], ["val_fraction"]),
    ("num_samples on digits", ("num_workers = 0", "num_workers = 0\nnum_samples = 500"), [], ["num_samples"]),
]

BAD_FLAGS = [
    ("negative trials", ["--n-trials", "-1"], ["--n-trials", "-1"]),
    ("zero trials on a new study", ["--n-trials", "0"], ["--n-trials 0", "not found"]),
    ("zero workers", ["--workers", "0"], ["--workers", "0"]),
    ("non-integer epochs", ["--epochs", "many"], ["--epochs", "many"]),
    ("negative epochs", ["--epochs", "-2"], ["--epochs", "-2"]),
    ("bad study name", ["--study-name", "a b/c"], ["--study-name", "a b/c"]),
    ("file store tracking URI", ["--tracking-uri", "file:///tmp/mlruns"], ["tracking URI", "sqlite, postgresql"]),
    ("unknown storage scheme", ["--storage", "redis://localhost/0"], ["storage URL", "journal"]),
    ("sqlite with workers", ["--storage", "sqlite:///x.db", "--workers", "2"], ["sqlite", "--workers"]),
    ("unknown device flag", ["--device", "gpu"], ["device", "'gpu'", "cuda:N"]),
    ("unknown flag", ["--trials", "3"], ["--trials"]),
    ("negative time budget", ["--time-budget", "-1"], ["--time-budget", "-1"]),
    ("zero time budget", ["--time-budget", "0"], ["--time-budget", "0"]),
    ("infinite time budget", ["--time-budget", "inf"], ["--time-budget", "inf"]),
    ("time budget not a number", ["--time-budget", "soon"], ["--time-budget", "soon"]),
    ("one seed", ["--reevaluate", "2", "--seeds", "1"], ["--seeds", "2 seeds or more"]),
    ("negative reevaluate", ["--reevaluate", "-1"], ["--reevaluate", "-1"]),
    ("study name too long", ["--study-name", "s" * 300], ["--study-name", "200 characters"]),
    ("journal path is a folder", ["--storage", f"journal:///{ROOT}"], ["Optuna journal", "is a folder"]),
    ("journal under a file", ["--storage", f"journal:///{SMOKE}/x.journal"], ["is a file, not a folder"]),
    ("mlflow store is a folder", ["--tracking-uri", f"sqlite:///{ROOT}"], ["MLflow store", "is a folder"]),
]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return stopped.value.code, capsys.readouterr().err


def assert_one_clear_line(code: int, stderr: str, words: list[str], mlruns: Path) -> None:
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("trainlib: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not mlruns.exists(), "a bad input wrote to the store"


@pytest.mark.parametrize(("problem", "edit", "flags", "words"), BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_malformed_config_is_one_line_and_exit_2(
    problem: str,
    edit: tuple[str, str],
    flags: list[str],
    words: list[str],
    tmp_path: Path,
    mlruns: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = smoke_with(tmp_path, *edit)
    code, stderr = run_cli(["sweep", config, *flags], capsys)
    assert_one_clear_line(code, stderr, [*words, "bad.toml"] if problem != "not TOML" else words, mlruns)


@pytest.mark.parametrize(("problem", "flags", "words"), BAD_FLAGS, ids=[case[0] for case in BAD_FLAGS])
def test_bad_flag_is_one_line_and_exit_2(
    problem: str, flags: list[str], words: list[str], mlruns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = run_cli(["sweep", str(SMOKE), *flags], capsys)
    assert_one_clear_line(code, stderr, words, mlruns)


def test_missing_config_file(tmp_path: Path, mlruns: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stderr = run_cli(["sweep", str(tmp_path / "nope.toml")], capsys)
    assert_one_clear_line(code, stderr, ["nope.toml", "not found"], mlruns)


def test_help_lists_every_sweep_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["sweep", "--help"])
    output = capsys.readouterr().out
    assert stopped.value.code == 0
    for option in ("--n-trials", "--epochs", "--study-name", "--storage", "--tracking-uri", "--workers", "--device"):
        assert option in output
    assert "--no-tracking" in output
    for option in ("--time-budget", "--reevaluate", "--seeds", "--study-seed"):
        assert option in output
