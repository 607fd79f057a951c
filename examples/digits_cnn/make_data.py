"""Write scikit-learn's 8x8 digits as images to digits_images.npz: x (1797, 1, 8, 8) float32 in [0, 1], y int64.

No x_test/y_test in the file: trainlib splits the held-out test part off itself (stratified, fixed seed), the same
samples its built-in `dataset = "digits"` is scored on, so the two studies are compared on one test set.

    python examples/digits_cnn/make_data.py            # writes examples/digits_cnn/digits_images.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main(out: Path) -> None:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # (samples, 1 channel, 8, 8)
    np.savez_compressed(out, x=images, y=digits.target.astype(np.int64))
    print(f"wrote {out}: x {images.shape} {images.dtype}, y {digits.target.shape}, {len(set(digits.target))} classes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("digits_images.npz"))
