"""The tabular example: scikit-learn's bundled breast-cancer set (30 features, 2 classes), an MLP.

Features are standardized with the vendor-side mean and deviation, fixed here as
constants of the dataset so the model's input contract does not depend on a split.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..data import vendor_attacker_split

FEATURES = 30


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def make_model_alt() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 2))


def load_data() -> dict[str, np.ndarray]:
    """Standardized features; 40 % validation (so that one sample is under the 0.5-point gate); a disjoint 1/3 of the rest for an attacker."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = d.data.astype(np.float64)
    x = ((x - x.mean(0)) / x.std(0)).clip(-4.0, 4.0).astype(np.float32)
    y = d.target.astype(np.int64)
    return vendor_attacker_split(x, y, validation=0.4, label="tabular")


BASE_TRAINING = {"epochs": 100, "lr": 1e-3, "batch_size": 32}
