"""The digits example: scikit-learn's bundled 8x8 handwritten digits, a small CNN.

Contract: input float32 [N, 1, 8, 8] with pixel value / 16 (so in [0, 1]); output 10 logits.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..data import vendor_attacker_split


def _cnn(width: int) -> nn.Module:
    """Two 3x3 convolutions (``width``, 2 x ``width`` channels), a 2x2 max-pool, a hidden layer of 4 x ``width`` units."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 4 * 4, 4 * width), nn.ReLU(),
        nn.Linear(4 * width, 10),
    )


def make_model() -> nn.Module:
    """The example's CNN (38k parameters)."""
    return _cnn(16)


def make_model_wide() -> nn.Module:
    """The same CNN with twice the channels and units (151k parameters, 4x): room for 2048 natural-mix
    keys and the rank code in one copy within the gates, which the 38k-parameter CNN does not have
    (bench/results/natural_rankcode_digits_wide.txt)."""
    return _cnn(32)


def make_model_alt() -> nn.Module:
    """A different architecture (an MLP) for independent-model and distillation studies."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def load_data() -> dict[str, np.ndarray]:
    """20 % validation; of the rest, 2/3 for the vendor and a disjoint 1/3 for an attacker."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    return vendor_attacker_split(x, y, validation=0.2, label="digits")


BASE_TRAINING = {"epochs": 60, "lr": 1e-3, "batch_size": 32}
