"""Speed knobs (precision, compile, channels_last) in the core, the config and a sweep, on this CPU for real."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from tests.sweep_helpers import runs_of, sweep, write_config
from trainlib import InvalidArgument, build_model, make_loader, train_model
from trainlib.cli import main
from trainlib.data import load_dataset
from trainlib.engine import evaluate_model, train_one_epoch
from trainlib.optim import build_optimizer
from trainlib.speed import SpeedKnobs, check_speed, compile_unsupported, precisions_on
from trainlib.sweep import load_config

CPU = torch.device("cpu")


def tiny_images(count: int = 64) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(count) % 4
    images = torch.randn(count, 3, 8, 8, generator=generator) * 0.3 + labels.view(-1, 1, 1, 1).float()
    return torch.utils.data.TensorDataset(images, labels)


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_cpu_and_keeps_fp32_weights(precision: str) -> None:
    data = tiny_images()
    torch.manual_seed(0)
    model = build_model("resnet", (3, 8, 8), 4, channels=[8, 16])
    before = weights_of(model)

    history = train_model(
        model, make_loader(data, 16, True, seed=0), make_loader(data, 64, False), 3, 1e-2, "cpu", precision=precision
    )

    assert all(math.isfinite(loss) for loss in history.train_loss)
    assert history.train_loss[-1] < history.train_loss[0]
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert any(not torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_the_autocast_forward_pass_runs_in_the_chosen_precision() -> None:
    model = nn.Linear(4, 2)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with SpeedKnobs(precision=precision).autocast(CPU):
            assert model(torch.randn(3, 4)).dtype == dtype


def test_only_fp16_scales_its_gradients() -> None:
    assert isinstance(SpeedKnobs(precision="fp16").grad_scaler(CPU), torch.amp.GradScaler)
    assert SpeedKnobs(precision="bf16").grad_scaler(CPU) is None
    assert SpeedKnobs().grad_scaler(CPU) is None


def test_fp16_with_a_scaler_skips_a_step_whose_gradients_overflow() -> None:
    model = nn.Linear(4, 2)
    optimizer = build_optimizer("sgd", model.parameters(), 0.1)
    before = weights_of(model)
    knobs = SpeedKnobs(precision="fp16")
    scaler = knobs.grad_scaler(CPU)
    huge = torch.utils.data.TensorDataset(torch.full((8, 4), 6e4), torch.ones(8, dtype=torch.long))

    train_one_epoch(
        model, make_loader(huge, 8, False), nn.CrossEntropyLoss(), optimizer, "cpu", speed=knobs, scaler=scaler
    )

    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert scaler.get_scale() < 2.0**16, "an overflow halves the loss scale"


def test_channels_last_stores_convolution_weights_nhwc_and_trains() -> None:
    data = tiny_images()
    torch.manual_seed(0)
    model = build_model("resnet", (3, 8, 8), 4, channels=[8, 16])

    history = train_model(
        model, make_loader(data, 16, True, seed=0), make_loader(data, 64, False), 2, 1e-2, "cpu", channels_last=True
    )

    conv = model.stem[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    assert all(math.isfinite(loss) for loss in history.train_loss)


def test_a_compiled_model_trains_and_its_own_weights_hold_the_result() -> None:
    data = tiny_images(32)
    torch.manual_seed(0)
    model = build_model("mlp", (3, 8, 8), 4, hidden_sizes=[16])
    eager = build_model("mlp", (3, 8, 8), 4, hidden_sizes=[16])
    eager.load_state_dict(model.state_dict())

    compiled = train_model(
        model, make_loader(data, 32, False), make_loader(data, 32, False), 2, 1e-2, "cpu", compile=True
    )
    plain = train_model(eager, make_loader(data, 32, False), make_loader(data, 32, False), 2, 1e-2, "cpu")

    assert set(model.state_dict()) == set(eager.state_dict()), "no _orig_mod. prefix: the caller's module is trained"
    assert compiled.train_loss == pytest.approx(plain.train_loss, rel=1e-4)
    assert evaluate_model(model, make_loader(data, 32, False), nn.CrossEntropyLoss(), "cpu") == pytest.approx(
        evaluate_model(eager, make_loader(data, 32, False), nn.CrossEntropyLoss(), "cpu"), rel=1e-4
    )


def test_knobs_that_cannot_apply_are_one_line_naming_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match=r"fp8.*fp32, bf16, fp16"):
        check_speed(SpeedKnobs(precision="fp8"), CPU)
    with pytest.raises(InvalidArgument, match="channels_last applies to models with 2-D convolutions; CNN1D"):
        check_speed(SpeedKnobs(channels_last=True), CPU, build_model("cnn1d", 40, 10))
    check_speed(SpeedKnobs(channels_last=True), CPU, build_model("resnet", (3, 32, 32), 10))
    assert precisions_on(CPU) == ["fp32", "bf16", "fp16"]

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    assert "needs a C++ compiler" in (compile_unsupported(CPU) or "")
    with pytest.raises(InvalidArgument, match=r"compile = true needs a C\+\+ compiler.*use compile = false"):
        check_speed(SpeedKnobs(compile=True), CPU)


def test_compile_without_a_compiler_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "compiled.toml", device='"cpu"\ncompile = true')
    monkeypatch.setenv("TRAINLIB_MLRUNS_DIR", str(tmp_path / "mlruns"))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)

    with pytest.raises(SystemExit) as stopped:
        main(["sweep", str(config)])

    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1
    assert "compile = true needs a C++ compiler" in lines[0] and "compiled.toml" in lines[0]
    assert not (tmp_path / "mlruns").exists()


def test_speed_knobs_come_from_training_or_from_the_draw(tmp_path: Path) -> None:
    fixed = load_config(write_config(tmp_path, "fixed.toml", device='"cpu"\nprecision = "bf16"\ncompile = true'))
    assert fixed.speed_knobs() == SpeedKnobs(precision="bf16", compile=True)
    assert fixed.speed_knobs({"precision": "fp32"}) == SpeedKnobs(precision="fp32", compile=True)

    drawn = load_config(
        write_config(
            tmp_path, "drawn.toml", optimizer='["sgd", "adam"]\nprecision = ["fp32", "bf16"]\ncompile = [false, true]'
        )
    )
    assert sorted((knobs.precision, knobs.compile) for knobs in drawn.speed_choices()) == [
        ("bf16", False),
        ("bf16", True),
        ("fp32", False),
        ("fp32", True),
    ]


def test_the_shapes_dataset_is_cifar_shaped_balanced_and_fixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINLIB_CACHE_DIR", str(tmp_path))
    splits = load_dataset("shapes", seed=0, num_samples=500)
    again = load_dataset("shapes", seed=0, num_samples=500)

    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (320, 80, 100)
    assert torch.bincount(splits.test.tensors[1], minlength=10).tolist() == [10] * 10
    assert torch.equal(splits.test.tensors[0], again.test.tensors[0])
    assert list(tmp_path.glob("shapes-500-*.npz")), "generated once, then read from the cache"


def test_a_sweep_with_bf16_and_compile_runs_here_and_logs_both(tmp_path: Path, stores: dict[str, str]) -> None:
    """The issue's acceptance: precision = "bf16" and compile = true on this CPU, logged on the runs."""
    config = write_config(
        tmp_path,
        "bf16.toml",
        epochs="1",
        device='"cpu"\nprecision = "bf16"\ncompile = true',
        optimizer='["adam"]\nchannels_last = [false]',
    )

    summary = sweep(config, n_trials=1)

    parent, children = runs_of(MlflowClient(stores["tracking_uri"]), "smoke")
    assert parent.data.params["training.precision"] == "bf16"
    assert parent.data.params["training.compile"] == "True"
    assert parent.data.params["training.compile_mode"] == "default"
    assert [child.info.status for child in children] == ["FINISHED"]
    assert children[0].data.params["channels_last"] == "False"
    assert children[0].data.tags["trainlib.device"] == "cpu"
    assert math.isfinite(summary.best_value)
