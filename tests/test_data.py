"""Tests for trainlib.data: the datasets' splits and cache, and every loader path."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainlib import OnTheFlyMNIST1D, TensorBatchLoader, load_dataset, make_loader


def indexed_dataset(num_samples: int = 10) -> TensorDataset:
    """Row i holds features (i, -i) and target i, so a batch shows exactly which samples it carries."""
    index = torch.arange(num_samples)
    return TensorDataset(torch.stack([index, -index], dim=1).float(), index)


def targets_of_one_epoch(loader) -> list[int]:
    return [int(target) for _, targets in loader for target in targets]


def test_tensor_dataset_without_workers_gets_the_batched_fast_path():
    loader = make_loader(indexed_dataset(), batch_size=4, shuffle=True)

    assert isinstance(loader, TensorBatchLoader)


def test_batched_loader_covers_every_sample_once_per_shuffled_epoch():
    loader = make_loader(indexed_dataset(10), batch_size=4, shuffle=True, seed=0)

    first, second = targets_of_one_epoch(loader), targets_of_one_epoch(loader)

    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # a new order each epoch
    assert [len(targets) for _, targets in loader] == [4, 4, 2]
    for inputs, targets in loader:
        assert torch.equal(inputs[:, 0].long(), targets)  # features stay paired with their targets
        assert torch.equal(inputs[:, 1].long(), -targets)


def test_batched_loader_without_shuffle_keeps_dataset_order():
    loader = make_loader(indexed_dataset(10), batch_size=3, shuffle=False)

    assert targets_of_one_epoch(loader) == list(range(10))


@pytest.mark.parametrize(
    ("num_samples", "batch_size", "drop_last", "expected_lengths"),
    [
        (10, 4, False, [4, 4, 2]),
        (10, 4, True, [4, 4]),
        (12, 4, False, [4, 4, 4]),
        (12, 4, True, [4, 4, 4]),
        (3, 4, False, [3]),
        (3, 4, True, []),
    ],
    ids=["ragged", "ragged-drop-last", "even", "even-drop-last", "one-short-batch", "short-drop-last"],
)
@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_batched_loader_length_matches_the_batches_it_yields(
    num_samples, batch_size, drop_last, expected_lengths, shuffle
):
    loader = make_loader(indexed_dataset(num_samples), batch_size, shuffle, drop_last=drop_last, seed=0)

    assert len(loader) == len(expected_lengths)
    assert [len(targets) for _, targets in loader] == expected_lengths


def test_seeded_shuffle_is_reproducible():
    first = make_loader(indexed_dataset(50), batch_size=8, shuffle=True, seed=3)
    second = make_loader(indexed_dataset(50), batch_size=8, shuffle=True, seed=3)
    other = make_loader(indexed_dataset(50), batch_size=8, shuffle=True, seed=4)

    first_epochs = [targets_of_one_epoch(first) for _ in range(2)]
    assert first_epochs == [targets_of_one_epoch(second) for _ in range(2)]
    assert first_epochs[0] != targets_of_one_epoch(other)


def test_loader_torch_returns_torch_dataloader():
    loader = make_loader(indexed_dataset(10), batch_size=4, shuffle=False, loader="torch")

    assert type(loader) is DataLoader
    assert targets_of_one_epoch(loader) == list(range(10))
    assert len(loader) == 3


def test_workers_on_a_tensor_dataset_yield_whole_batches_matching_the_rows():
    dataset = indexed_dataset(10)

    loader = make_loader(dataset, batch_size=4, shuffle=False, num_workers=2)

    assert isinstance(loader, DataLoader)
    assert loader.num_workers == 2
    batches = list(loader)
    assert [len(targets) for _, targets in batches] == [4, 4, 2]
    inputs = torch.cat([batch[0] for batch in batches])
    targets = torch.cat([batch[1] for batch in batches])
    assert torch.equal(inputs, dataset.tensors[0])
    assert torch.equal(targets, dataset.tensors[1])
    assert inputs.dtype == torch.float32 and targets.dtype == torch.long


def test_workers_with_shuffle_cover_every_sample_once():
    loader = make_loader(indexed_dataset(10), batch_size=4, shuffle=True, num_workers=2, seed=0)

    batches = list(loader)

    targets = [int(target) for _, batch_targets in batches for target in batch_targets]
    assert sorted(targets) == list(range(10))
    for inputs, batch_targets in batches:
        assert torch.equal(inputs[:, 0].long(), batch_targets)


@pytest.fixture(scope="module")
def on_the_fly() -> OnTheFlyMNIST1D:
    return OnTheFlyMNIST1D(num_samples=30)


def test_on_the_fly_mnist1d_generates_fresh_labelled_samples(on_the_fly):
    assert len(on_the_fly) == 30
    for index in (0, 7, 13, 29):
        signal, label = on_the_fly[index]
        assert signal.dtype == torch.float32
        assert signal.shape == (40,)
        assert torch.isfinite(signal).all()
        assert int(label) == index % 10
    first, _ = on_the_fly[5]
    again, _ = on_the_fly[5]
    assert not torch.equal(first, again)


def test_on_the_fly_mnist1d_goes_through_a_torch_dataloader(on_the_fly):
    loader = make_loader(on_the_fly, batch_size=8, shuffle=False)

    assert isinstance(loader, DataLoader)
    inputs, targets = next(iter(loader))
    assert inputs.shape == (8, 40)
    assert targets.tolist() == [i % 10 for i in range(8)]


def test_digits_splits_partition_the_dataset():
    from sklearn.datasets import load_digits

    splits = load_dataset("digits", seed=0)

    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=1)
    assert sizes[1] == pytest.approx(0.2 * (1797 - sizes[2]), abs=1)
    assert splits.num_features == 64 and splits.num_classes == 10
    # Digits has no duplicate images, so rows identify samples: the three parts are disjoint and cover everything.
    rows = [tuple(row) for part in (splits.train, splits.val, splits.test) for row in part.tensors[0].tolist()]
    assert len(set(rows)) == 1797
    expected = {tuple(row) for row in (load_digits().data / 16.0).astype(np.float32).tolist()}
    assert set(rows) == expected


def test_digits_test_part_is_disjoint_from_train_and_the_same_for_every_seed():
    """Studies with different training seeds must report test accuracy on the same held-out samples."""
    splits = load_dataset("digits", seed=0)
    other_val_fraction = load_dataset("digits", seed=0, val_fraction=0.3)
    other_seed = load_dataset("digits", seed=1)

    train_rows = {tuple(row) for row in splits.train.tensors[0].tolist()}
    test_rows = {tuple(row) for row in splits.test.tensors[0].tolist()}
    assert train_rows.isdisjoint(test_rows)
    for other in (other_val_fraction, other_seed):
        assert torch.equal(splits.test.tensors[0], other.test.tensors[0])
        assert torch.equal(splits.test.tensors[1], other.test.tensors[1])
    assert not torch.equal(splits.val.tensors[0], other_seed.val.tensors[0])  # the seed draws train/val only


def test_digits_split_is_stratified():
    splits = load_dataset("digits", seed=0)

    for part in (splits.train, splits.val, splits.test):
        counts = torch.bincount(part.tensors[1], minlength=10)
        assert (counts > 0).all()
        share = counts.float() / counts.sum()
        assert (share - 0.1).abs().max() < 0.02  # digits is balanced (~180 per class), so each part is too


def test_digits_split_is_reproducible_and_seed_dependent():
    first, second = load_dataset("digits", seed=1), load_dataset("digits", seed=1)
    other = load_dataset("digits", seed=2)

    for name in ("train", "val", "test"):
        for a, b in zip(getattr(first, name).tensors, getattr(second, name).tensors, strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(first.val.tensors[0], other.val.tensors[0])
    assert first.train.tensors[0].dtype == torch.float32
    assert first.train.tensors[1].dtype == torch.long


@pytest.mark.parametrize("num_samples", [0, -5], ids=["zero", "negative"])
def test_mnist1d_rejects_a_non_positive_sample_count(num_samples, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLIB_CACHE_DIR", str(tmp_path))

    with pytest.raises(ValueError, match=f"num_samples must be a positive integer, got {num_samples}"):
        load_dataset("mnist1d", num_samples=num_samples)
    assert not list(tmp_path.iterdir())


def test_digits_rejects_num_samples():
    with pytest.raises(ValueError, match="num_samples applies to mnist1d, shapes"):
        load_dataset("digits", num_samples=100)


@pytest.mark.parametrize("val_fraction", [0, 1, -0.2, 1.5])
def test_val_fraction_outside_zero_one_is_rejected(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=val_fraction)


@pytest.mark.slow
def test_mnist1d_default_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLIB_CACHE_DIR", str(tmp_path))

    splits = load_dataset("mnist1d", val_fraction=0.2)
    other_seed = load_dataset("mnist1d", val_fraction=0.2, seed=1)

    assert (len(splits.train), len(splits.val), len(splits.test)) == (3200, 800, 1000)
    assert torch.equal(splits.test.tensors[0], other_seed.test.tensors[0])  # MNIST-1D's own test part
    assert splits.num_features == 40
    assert splits.train.tensors[0].shape == (3200, 40)


def test_mnist1d_is_cached_as_npz_and_read_back(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRAINLIB_CACHE_DIR", str(cache))

    first = load_dataset("mnist1d", num_samples=500, seed=0)

    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    assert files[0].name.startswith("mnist1d-500-")
    assert not list(cache.glob("*.tmp*"))  # the atomic write left no partial file behind
    with np.load(files[0], allow_pickle=False) as arrays:
        assert set(arrays.files) == {"x", "y", "x_test", "y_test"}
    modified = files[0].stat().st_mtime_ns

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached arrays should have been read, not regenerated")

    monkeypatch.setattr("mnist1d.data.make_dataset", no_generation)
    second = load_dataset("mnist1d", num_samples=500, seed=0)

    assert files[0].stat().st_mtime_ns == modified
    assert (len(second.train), len(second.val), len(second.test)) == (320, 80, 100)
    for name in ("train", "val", "test"):
        for a, b in zip(getattr(first, name).tensors, getattr(second, name).tensors, strict=True):
            assert torch.equal(a, b)
