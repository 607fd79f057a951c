"""Dataset factories as a user writes them: factory(seed=..., **options) -> DatasetSplits or (train, val, test)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from trainlib import DatasetSplits


def _blobs(count: int, features: int, classes: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % classes
    centres = torch.randn(classes, features, generator=torch.Generator().manual_seed(0)) * 3
    inputs = centres[labels] + torch.randn(count, features, generator=generator)
    return TensorDataset(inputs, labels)


def blobs(seed: int, num_samples: int = 300, features: int = 6, classes: int = 3) -> tuple[Dataset, ...]:
    """Gaussian blobs as three TensorDatasets; num_classes is inferred from the labels."""
    return tuple(_blobs(size, features, classes, seed + offset) for offset, size in enumerate((num_samples, 60, 60)))


def blob_splits(seed: int) -> DatasetSplits:
    train, val, test = blobs(seed)
    return DatasetSplits(train, val, test, input_shape=(6,), num_classes=3)


class Squares(Dataset):
    """A map-style dataset that is not tensors: each sample is computed in __getitem__ (the DataLoader path)."""

    classes = ("low", "high")

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        value = (index % 10) / 10
        return torch.tensor([value, value**2], dtype=torch.float32), int(value >= 0.5)


def squares(seed: int) -> tuple[Dataset, ...]:
    return Squares(200), Squares(50), Squares(50)


def returns_a_list(seed: int) -> list:
    return [1, 2, 3]


def raises(seed: int) -> DatasetSplits:
    raise FileNotFoundError("/data/missing.bin")
