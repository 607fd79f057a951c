"""Tests for trainlib.engine: the training loop's correctness, not just that it runs."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainlib import (
    EpochResult,
    History,
    TrainingDiverged,
    build_model,
    evaluate_model,
    load_dataset,
    make_loader,
    seed_everything,
    train_model,
    train_one_epoch,
)
from trainlib.data import DATASET_NAMES, LOADER_KINDS
from trainlib.device import DEVICE_CHOICES
from trainlib.engine import HISTORY_KEYS
from trainlib.models import MODEL_NAMES
from trainlib.optim import OPTIMIZER_NAMES, build_optimizer


@pytest.fixture(autouse=True)
def single_thread():
    """Run these tiny models on one thread: on a busy shared CPU, intra-op threads only add waiting (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_dataset(num_samples: int = 32, num_features: int = 8, num_classes: int = 3, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, num_features, generator=generator)
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return TensorDataset(inputs, targets)


class ModeRecorder(nn.Module):
    """Identity layer that records, at each forward, the mode and the device of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []
        self.devices: list[torch.device] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        self.devices.append(x.device)
        return x


class RecordingSGD(torch.optim.SGD):
    """SGD that records, at each step, the parameters it is about to update and their gradients."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.seen_params: list[list[torch.Tensor]] = []
        self.seen_grads: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        self.seen_params.append([p.detach().clone() for p in params])
        self.seen_grads.append([p.grad.detach().clone() for p in params])
        return super().step(closure)


class NaNModel(nn.Module):
    """A classifier whose logits are NaN: its loss can only be NaN."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float("nan")


def test_gradients_do_not_accumulate_across_steps():
    torch.manual_seed(0)
    dataset = random_dataset(num_samples=16)
    loader = make_loader(dataset, batch_size=8, shuffle=False)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    criterion = nn.CrossEntropyLoss()
    optimizer = RecordingSGD(model.parameters(), lr=0.5)

    train_one_epoch(model, loader, criterion, optimizer, "cpu")

    assert len(optimizer.seen_grads) == 2
    # Gradient of the second batch alone, at the parameters the second step saw.
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for param, before_step in zip(fresh.parameters(), optimizer.seen_params[1], strict=True):
            param.copy_(before_step)
    inputs, targets = dataset.tensors[0][8:], dataset.tensors[1][8:]
    criterion(fresh(inputs), targets).backward()
    for seen, param in zip(optimizer.seen_grads[1], fresh.parameters(), strict=True):
        torch.testing.assert_close(seen, param.grad)
    # And the two steps' gradients differ, so an accumulated sum would have been caught above.
    assert not torch.allclose(optimizer.seen_grads[0][0], optimizer.seen_grads[1][0])


def test_train_one_epoch_runs_the_model_in_train_mode():
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, nn.Linear(8, 3), nn.Dropout(0.5))
    model.eval()  # train_one_epoch must switch it back
    loader = make_loader(random_dataset(), batch_size=8, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, "cpu")

    assert recorder.modes == [True] * 4


def test_evaluate_model_runs_in_eval_mode_and_is_deterministic_with_dropout():
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    loader = make_loader(random_dataset(), batch_size=8, shuffle=False)
    criterion = nn.CrossEntropyLoss()

    model.train()
    first = evaluate_model(model, loader, criterion, "cpu")
    model.train()
    second = evaluate_model(model, loader, criterion, "cpu")

    assert recorder.modes == [False] * 8
    assert first == second
    # Dropout really is active in train mode, so the equality above is evidence of eval mode.
    model.train()
    inputs = random_dataset().tensors[0]
    assert not torch.equal(model(inputs), model(inputs))


def test_evaluate_model_leaves_batch_norm_running_statistics_untouched():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    loader = make_loader(random_dataset(), batch_size=8, shuffle=False)
    criterion = nn.CrossEntropyLoss()
    train_one_epoch(model, loader, criterion, torch.optim.SGD(model.parameters(), lr=0.1), "cpu")
    batch_norm = model[1]
    before = {name: value.clone() for name, value in batch_norm.named_buffers()}
    assert batch_norm.num_batches_tracked.item() == 4  # training did update them

    model.train()
    evaluate_model(model, loader, criterion, "cpu")

    for name, value in batch_norm.named_buffers():
        assert torch.equal(value, before[name]), name


def test_evaluate_model_builds_no_autograd_graph():
    model = nn.Sequential(nn.Linear(8, 3))
    seen = []

    def hook(module, inputs, output):
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled(), output.requires_grad))

    model.register_forward_hook(hook)
    loader = make_loader(random_dataset(), batch_size=16, shuffle=False)

    evaluate_model(model, loader, nn.CrossEntropyLoss(), "cpu")

    assert seen == [(False, True, False)] * 2
    assert all(param.grad is None for param in model.parameters())


def available_devices() -> list:
    devices = ["cpu", torch.device("cpu")]
    if torch.cuda.is_available():
        devices += ["cuda", torch.device("cuda:0")]
    return devices


@pytest.mark.parametrize("device", available_devices(), ids=repr)
def test_model_and_batches_on_the_requested_device(device):
    expected = torch.device(device)
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, nn.Linear(8, 3))
    loader = make_loader(random_dataset(), batch_size=8, shuffle=True)

    train_model(model, loader, loader, num_epochs=1, lr=0.1, device=device, optimizer="sgd")

    assert len(recorder.devices) == 8  # 4 training and 4 evaluation batches
    assert all(seen.type == expected.type for seen in recorder.devices)
    assert all(param.device.type == expected.type for param in model.parameters())


def test_mean_loss_is_per_sample_with_a_ragged_last_batch():
    torch.manual_seed(0)
    dataset = random_dataset(num_samples=10, num_features=6, num_classes=4)
    inputs, targets = dataset.tensors
    model = nn.Linear(6, 4)
    with torch.no_grad():
        expected = (nn.CrossEntropyLoss(reduction="sum")(model(inputs), targets) / len(targets)).item()
        # Batches of 4, 4 and 2: the mean of batch means differs from the per-sample mean.
        batch_means = [nn.CrossEntropyLoss()(model(inputs[i : i + 4]), targets[i : i + 4]).item() for i in (0, 4, 8)]
    assert sum(batch_means) / 3 != pytest.approx(expected, rel=1e-4)
    loader = make_loader(dataset, batch_size=4, shuffle=False)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-30)  # too small to change any weight

    train_loss = train_one_epoch(model, loader, criterion, optimizer, "cpu")
    val_loss, val_accuracy = evaluate_model(model, loader, criterion, "cpu")

    assert train_loss == pytest.approx(expected, rel=1e-5)
    assert val_loss == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        expected_accuracy = (model(inputs).argmax(dim=1) == targets).float().mean().item()
    assert val_accuracy == pytest.approx(expected_accuracy)


def digits_run(num_epochs: int, lr: float, seed: int, callbacks=(), **model_options) -> History:
    seed_everything(seed)
    splits = load_dataset("digits", seed=seed)
    model = build_model("mlp", splits.num_features, splits.num_classes, **model_options)
    train_loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=seed)
    val_loader = make_loader(splits.val, batch_size=256, shuffle=False)
    return train_model(model, train_loader, val_loader, num_epochs, lr, "cpu", "adam", callbacks)


@pytest.mark.slow
def test_mlp_on_digits_reaches_95_percent_validation_accuracy_within_20_epochs():
    history = digits_run(num_epochs=20, lr=1e-2, seed=0, callbacks=[lambda result: result.val_accuracy >= 0.95])

    assert history.val_accuracy[-1] >= 0.95
    assert history.stopped_early  # stopped by the callback as soon as it got there, well before epoch 20
    assert 1 < len(history) < 20
    assert set(history.keys()) == {"train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"}
    for key in HISTORY_KEYS:
        assert len(history[key]) == len(history), key
        assert all(math.isfinite(value) for value in history[key]), key
    assert all(value > 0 for value in history["samples_per_second"])
    assert all(value > 0 for value in history["epoch_seconds"])
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_two_seeded_runs_give_identical_histories():
    first = digits_run(num_epochs=3, lr=1e-2, seed=7, dropout=0.2)
    second = digits_run(num_epochs=3, lr=1e-2, seed=7, dropout=0.2)

    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert first[key] == second[key], key
    different = digits_run(num_epochs=3, lr=1e-2, seed=8, dropout=0.2)
    assert different["train_loss"] != first["train_loss"]


def small_training(num_epochs: int, callbacks) -> tuple[History, nn.Module]:
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    loader = make_loader(random_dataset(), batch_size=8, shuffle=False)
    return train_model(model, loader, loader, num_epochs, 0.1, "cpu", "sgd", callbacks), model


def test_callbacks_receive_an_epoch_result_each_epoch():
    received: list[EpochResult] = []

    history, _ = small_training(3, [received.append])

    assert [result.epoch for result in received] == [1, 2, 3]
    assert all(isinstance(result, EpochResult) for result in received)
    assert [result.train_loss for result in received] == history["train_loss"]
    assert [result.val_accuracy for result in received] == history["val_accuracy"]
    assert not history.stopped_early


def test_a_callback_returning_true_stops_training_and_every_callback_sees_that_epoch():
    stopper_saw: list[int] = []
    logger_saw: list[int] = []

    def stop_at_second_epoch(result: EpochResult) -> bool:
        stopper_saw.append(result.epoch)
        return result.epoch == 2

    history, _ = small_training(10, [stop_at_second_epoch, lambda result: logger_saw.append(result.epoch)])

    assert len(history) == 2 < 10
    assert history.stopped_early
    assert stopper_saw == logger_saw == [1, 2]


def test_exceptions_raised_by_a_callback_propagate():
    class Pruned(Exception):
        pass

    def prune_at_second_epoch(result: EpochResult) -> None:
        if result.epoch == 2:
            raise Pruned(result.epoch)

    with pytest.raises(Pruned) as raised:
        small_training(10, [prune_at_second_epoch])
    assert raised.value.args == (2,)


def test_training_diverged_raised_on_nan_loss():
    loader = make_loader(random_dataset(), batch_size=8, shuffle=False)

    seen: list[int] = []

    with pytest.raises(TrainingDiverged) as raised:
        train_model(
            NaNModel(8, 3),
            loader,
            loader,
            num_epochs=5,
            lr=0.1,
            device="cpu",
            optimizer="sgd",
            callbacks=[lambda result: seen.append(result.epoch)],
        )

    assert raised.value.epoch == 1
    assert math.isnan(raised.value.loss)
    assert "epoch 1" in str(raised.value)
    assert seen == []  # no callback (tracking, pruning, best-epoch weights) ever sees a diverged epoch


def test_training_diverged_raised_when_the_learning_rate_explodes():
    seed_everything(0)
    splits = load_dataset("digits", seed=0)
    model = build_model("mlp", splits.num_features, splits.num_classes)
    loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=0)

    with pytest.raises(TrainingDiverged) as raised:
        train_model(model, loader, loader, num_epochs=5, lr=1e10, device="cpu", optimizer="sgd")
    assert not math.isfinite(raised.value.loss)


def test_train_model_accepts_a_ready_optimizer():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    optimizer = RecordingSGD(model.parameters(), lr=0.1)
    loader = make_loader(random_dataset(), batch_size=8, shuffle=False)

    history = train_model(model, loader, loader, 2, 0.1, "cpu", optimizer)

    assert len(history) == 2
    assert len(optimizer.seen_grads) == 8


def test_a_cosine_schedule_steps_once_an_epoch_and_ends_at_zero():
    model = nn.Linear(8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(random_dataset(), batch_size=8, shuffle=False)
    rates = []

    train_model(
        model,
        loader,
        loader,
        4,
        0.1,
        "cpu",
        optimizer,
        lr_schedule="cosine",
        callbacks=[lambda result: rates.append(optimizer.param_groups[0]["lr"])],
    )

    assert rates == pytest.approx([0.1 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in (1, 2, 3, 4)])


def test_a_one_cycle_schedule_steps_every_batch_peaks_at_lr_and_ends_near_zero():
    model = nn.Linear(8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(random_dataset(), batch_size=8, shuffle=False)
    rates: list[float] = []

    class RecordingLoader:
        """The loader, recording the learning rate before each batch."""

        def __len__(self) -> int:
            return len(loader)

        def __iter__(self):
            for batch in loader:
                rates.append(optimizer.param_groups[0]["lr"])
                yield batch

    train_model(model, RecordingLoader(), loader, 4, 0.1, "cpu", optimizer, lr_schedule="one_cycle")

    assert len(rates) == 4 * len(loader)  # one rate per batch: stepped every batch, not every epoch
    peak = max(range(len(rates)), key=rates.__getitem__)
    assert rates[peak] == pytest.approx(0.1, rel=0.05)
    assert 0.2 * len(rates) <= peak <= 0.4 * len(rates)  # warm-up over the first 30% of steps
    assert rates[0] < 0.1 / 10 and rates[-1] < 0.1 / 100


def test_history_reads_like_a_dict_of_lists():
    history = History()
    for epoch, accuracy in ((1, 0.5), (2, 0.75), (3, 0.6)):
        history.append(EpochResult(epoch, 1.0 / epoch, 0.9 / epoch, accuracy, 0.1, 1000.0))

    assert history["val_accuracy"] == [0.5, 0.75, 0.6]
    assert history.best_val_accuracy == 0.75
    assert len(history) == 3
    assert history.to_dict()["train_loss"] == [1.0, 0.5, 1.0 / 3]
    assert tuple(history.to_dict()) == HISTORY_KEYS
    with pytest.raises(KeyError, match="val_accuracy"):
        history["accuracy"]


def train_briefly(**overrides) -> History:
    arguments = {"num_epochs": 1, "lr": 0.1, "device": "cpu", "optimizer": "sgd"} | overrides
    loader = make_loader(random_dataset(), batch_size=8, shuffle=False)
    return train_model(nn.Linear(8, 3), loader, loader, **arguments)


def loader_with(**overrides):
    arguments = {"batch_size": 8, "shuffle": False} | overrides
    return make_loader(random_dataset(), **arguments)


BAD_INPUTS = [
    ("lr-zero", lambda: train_briefly(lr=0), ["0", "positive"]),
    ("lr-negative", lambda: train_briefly(lr=-0.01), ["-0.01", "positive"]),
    ("lr-optimizer", lambda: build_optimizer("adam", nn.Linear(2, 2).parameters(), -1.0), ["-1.0", "positive"]),
    ("epochs-zero", lambda: train_briefly(num_epochs=0), ["num_epochs", "0", "positive"]),
    ("epochs-negative", lambda: train_briefly(num_epochs=-3), ["num_epochs", "-3", "positive"]),
    ("batch-size-zero", lambda: loader_with(batch_size=0), ["batch_size", "0", "positive"]),
    ("batch-size-negative", lambda: loader_with(batch_size=-8), ["batch_size", "-8", "positive"]),
    ("num-workers-negative", lambda: loader_with(num_workers=-1), ["num_workers", "-1", "non-negative"]),
    ("optimizer", lambda: train_briefly(optimizer="adagrad"), ["'adagrad'", *OPTIMIZER_NAMES]),
    ("model", lambda: build_model("resnet", 8, 3), ["'resnet'", *MODEL_NAMES]),
    ("dataset", lambda: load_dataset("cifar10"), ["'cifar10'", *DATASET_NAMES]),
    ("device", lambda: train_briefly(device="tpu"), ["'tpu'", *DEVICE_CHOICES]),
    ("loader", lambda: loader_with(loader="fast"), ["'fast'", *LOADER_KINDS]),
]


@pytest.mark.parametrize(("call", "fragments"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_raises_a_value_error_naming_the_value_and_the_choices(call, fragments):
    with pytest.raises(ValueError) as raised:
        call()

    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message  # one clear line
