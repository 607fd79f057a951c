"""Tests for trainlib.models: shapes, the options each model takes, and clear errors for the rest."""

import re

import pytest
import torch
from torch import nn

from trainlib import MODEL_NAMES, InvalidArgument, build_model


@pytest.mark.parametrize(
    ("name", "in_features", "options"),
    [
        ("mlp", 64, {}),
        ("mlp", 64, {"hidden_sizes": [32]}),
        ("mlp", 64, {"hidden_sizes": (48, 24, 12), "dropout": 0.3, "batch_norm": True}),
        ("mlp", 40, {"batch_norm": True}),
        ("cnn1d", 40, {}),
        ("cnn1d", 40, {"channels": [8, 16], "kernel_size": 3, "dropout": 0.2, "batch_norm": False}),
        ("cnn1d", 64, {"channels": [4], "kernel_size": 7}),
    ],
    ids=["mlp", "mlp-one-layer", "mlp-bn-dropout", "mlp-on-40", "cnn1d", "cnn1d-options", "cnn1d-on-64"],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_outputs_one_logit_per_class(name, in_features, options, mode):
    model = build_model(name, in_features, 10, **options)
    getattr(model, mode)()

    outputs = model(torch.randn(5, in_features))

    assert outputs.shape == (5, 10)
    assert torch.isfinite(outputs).all()


def test_mlp_layers_follow_the_options():
    model = build_model("mlp", 64, 3, hidden_sizes=[32, 16], dropout=0.5, batch_norm=True)

    linear = [layer for layer in model.modules() if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == [(64, 32), (32, 16), (16, 3)]
    assert sum(isinstance(layer, nn.BatchNorm1d) for layer in model.modules()) == 2
    assert [layer.p for layer in model.modules() if isinstance(layer, nn.Dropout)] == [0.5, 0.5]
    plain = build_model("mlp", 64, 3, hidden_sizes=[32, 16])
    assert not any(isinstance(layer, (nn.BatchNorm1d, nn.Dropout)) for layer in plain.modules())


def test_cnn1d_accepts_an_explicit_channel_dimension():
    model = build_model("cnn1d", 40, 10).eval()
    inputs = torch.randn(4, 40)

    assert torch.equal(model(inputs), model(inputs.unsqueeze(1)))


# A sample shape and options for each built-in model (every option that adds parameters switched on).
EXAMPLES = {
    "mlp": ((40,), {"dropout": 0.1, "batch_norm": True}),
    "cnn1d": ((40,), {"dropout": 0.1, "batch_norm": True}),
    "resnet": ((3, 16, 16), {"channels": [8, 16], "blocks": 2}),
}


def test_every_built_in_model_has_an_example() -> None:
    assert set(EXAMPLES) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_gets_a_gradient(name):
    shape, options = EXAMPLES[name]
    model = build_model(name, shape, 4, **options)

    nn.functional.cross_entropy(model(torch.randn(6, *shape)), torch.tensor([0, 1, 2, 3, 0, 1])).backward()

    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def test_unknown_model_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match="vit") as raised:
        build_model("vit", 64, 10)

    for choice in MODEL_NAMES:
        assert choice in str(raised.value)


@pytest.mark.parametrize(
    ("name", "options", "bad"),
    [
        ("mlp", {"channels": [8]}, "channels"),
        ("cnn1d", {"hidden_sizes": [8]}, "hidden_sizes"),
        ("mlp", {"width": 3}, "width"),
    ],
)
def test_unknown_model_options_are_rejected_with_the_accepted_ones(name, options, bad):
    with pytest.raises(InvalidArgument) as raised:
        build_model(name, 64, 10, **options)

    message = str(raised.value)
    assert bad in message
    assert "dropout" in message and "batch_norm" in message


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("mlp", {"dropout": -0.1}, "dropout"),
        ("mlp", {"hidden_sizes": []}, "hidden_sizes"),
        ("mlp", {"hidden_sizes": [32, 0]}, "hidden_sizes"),
        ("cnn1d", {"channels": [-4]}, "channels"),
        ("cnn1d", {"kernel_size": 4}, "kernel_size"),
        ("cnn1d", {"kernel_size": 0}, "kernel_size"),
    ],
)
def test_bad_model_option_values_are_rejected(name, options, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        build_model(name, 40, 10, **options)


def test_resnet_halves_the_resolution_per_stage_and_counts_its_blocks() -> None:
    resnet8 = build_model("resnet", (3, 32, 32), 10)
    resnet20 = build_model("resnet", (3, 32, 32), 10, blocks=3)

    assert resnet8(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert resnet8.stages(resnet8.stem(torch.randn(1, 3, 32, 32))).shape == (1, 64, 8, 8)
    assert len(resnet8.stages) == 3 and len(resnet20.stages) == 9
    assert sum(p.numel() for p in resnet20.parameters()) == 272_474  # ResNet-20 for CIFAR-10: 0.27M (He et al.)


@pytest.mark.parametrize(
    ("shape", "options", "words"),
    [
        ((40,), {}, "(channels, height, width)"),
        ((3, 8, 8), {"blocks": 0}, "blocks must be a positive integer"),
        ((3, 8, 8), {"dropout": 0.1}, "does not take dropout; it accepts: channels, blocks"),
    ],
)
def test_resnet_refuses_signals_and_bad_blocks_in_one_line(shape, options, words) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(words)):
        build_model("resnet", shape, 10, **options)
