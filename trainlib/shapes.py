"""Shapes: a CIFAR-shaped image dataset (3x32x32, 10 classes) generated offline, for workloads worth a GPU.

Each image is one shape (disc, square, triangle, ring, plus, diamond, horizontal stripes, vertical stripes,
diagonal cross, checkerboard) of random position, size, colour and stripe period on a random background with a
brightness gradient and pixel noise. Nothing is downloaded; the arrays are a pure function of (num_samples, seed).
"""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "ring",
    "plus",
    "diamond",
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_cross",
    "checkerboard",
)
IMAGE_SIZE = 32


def _masks(label: int, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Where the shape of class ``label`` covers the image, for offsets (dx, dy) from each shape's centre."""
    adx, ady = np.abs(dx), np.abs(dy)
    distance = np.hypot(dx, dy)
    inside = np.maximum(adx, ady) < radius
    if label == 0:
        return distance < radius
    if label == 1:
        return inside
    if label == 2:
        return (ady < radius) & (adx < (dy + radius) / 2)
    if label == 3:
        return (distance < radius) & (distance > 0.55 * radius)
    if label == 4:
        return inside & ((adx < radius / 3) | (ady < radius / 3))
    if label == 5:
        return adx + ady < radius
    if label == 6:
        return inside & ((dy % period) < period / 2)
    if label == 7:
        return inside & ((dx % period) < period / 2)
    if label == 8:
        return inside & (np.abs(adx - ady) < radius / 4)
    return inside & ((np.floor(dx / period) + np.floor(dy / period)) % 2 == 0)


def shapes_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``num_samples`` images as uint8 (N, 3, 32, 32) and their int64 labels, balanced over the 10 classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % len(SHAPE_CLASSES)
    rng.shuffle(labels)
    centre_x, centre_y = (rng.uniform(10, IMAGE_SIZE - 10, num_samples)[:, None, None] for _ in range(2))
    radius = rng.uniform(5, 10, num_samples)[:, None, None]
    period = rng.uniform(3, 6, num_samples)[:, None, None]
    rows, columns = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    mask = np.zeros((num_samples, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for label in range(len(SHAPE_CLASSES)):
        chosen = labels == label
        dx, dy = columns[None] - centre_x[chosen], rows[None] - centre_y[chosen]
        mask[chosen] = _masks(label, dx, dy, radius[chosen], period[chosen])
    foreground = rng.uniform(0.5, 1.0, (num_samples, 3, 1, 1))
    background = rng.uniform(0.0, 0.45, (num_samples, 3, 1, 1))
    gradient = rng.uniform(-0.15, 0.15, (num_samples, 1, 1, 1)) * (columns / IMAGE_SIZE - 0.5)
    noise = rng.normal(0.0, 0.08, (num_samples, 3, IMAGE_SIZE, IMAGE_SIZE))
    images = np.where(mask[:, None], foreground, background) + gradient + noise
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8), labels.astype(np.int64)
