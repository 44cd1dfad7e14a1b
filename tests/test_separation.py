"""tracer.separation: the cross-fitted Mahalanobis figure the issuer gates natural-mix copies on, and what it shares with the leaker's filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tracer.evaluate.detectors import MahalanobisDetector
from tracer.separation import (
    MIN_SEPARATION_INPUTS,
    ClassGaussian,
    auc,
    auc_interval,
    fold_indices,
    key_distance_auc,
    key_separation,
    penultimate,
    separation,
    separation_interval,
)


def _features_model(dim: int, classes: int) -> nn.Module:
    """A model whose penultimate features are its (flattened) input: the figure is then about the inputs themselves."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(dim, classes))


def _clusters(n: int, *, dim: int = 6, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 4.0 * np.eye(classes, dim)
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.standard_normal((n, dim))).astype(np.float32), y, centres


def test_auc_counts_ties_as_half_and_separation_is_two_sided():
    assert auc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(3.5 / 4)  # 2>1, 2=2 (half), 3>1, 3>2
    assert separation(0.3) == pytest.approx(0.7) and separation(0.8) == 0.8


def _delong_by_pairs(pos: np.ndarray, neg: np.ndarray) -> float:
    """DeLong's standard error from the full pair matrix (O(m n)), the textbook way, to check the sorted computation against."""
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return float(np.sqrt(psi.mean(1).var(ddof=1) / len(pos) + psi.mean(0).var(ddof=1) / len(neg)))


def test_auc_interval_is_delongs_and_covers_the_true_auc_about_95_times_in_100():
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    pos, neg = np.round(rng.normal(0.4, 1.0, 128), 1), np.round(rng.normal(0.0, 1.0, 36), 1)  # rounded: ties on both sides
    low, high = auc_interval(pos, neg)
    se = _delong_by_pairs(pos, neg)
    assert low == pytest.approx(auc(pos, neg) - 1.959963984540054 * se) and high == pytest.approx(auc(pos, neg) + 1.959963984540054 * se)
    truth = norm.cdf(0.3 / np.sqrt(2))  # P(X > Y) for X ~ N(0.3, 1), Y ~ N(0, 1)
    hits = [lo <= truth <= hi for lo, hi in (auc_interval(rng.normal(0.3, 1, 128), rng.normal(0, 1, 36)) for _ in range(600))]
    assert 0.92 <= np.mean(hits) <= 0.98  # binomial sd of the share at 0.95 over 600 draws: 0.009
    wide, narrow = auc_interval(pos, neg[:12]), auc_interval(pos, rng.normal(0.0, 1.0, 360))
    assert wide[1] - wide[0] > narrow[1] - narrow[0]  # fewer natural inputs, a wider interval


def test_auc_interval_at_its_limits_and_the_two_sided_interval():
    assert auc_interval(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0])) == (1.0, 1.0)  # complete separation: no spread to estimate
    assert auc_interval(np.array([5.0]), np.array([1.0, 2.0])) == (1.0, 1.0)  # one positive: the point itself
    lo, hi = auc_interval(np.array([0.1, 0.9, 0.4, 0.6]), np.array([0.2, 0.8, 0.5]))
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert separation_interval(0.4, 0.7) == (0.5, 0.7)  # holds 0.5: no separation is among the values it allows
    assert separation_interval(0.2, 0.45) == pytest.approx((0.55, 0.8))  # keys below: mirrored
    assert separation_interval(0.62, 0.75) == (0.62, 0.75)


def test_folds_cover_every_input_once_and_do_not_depend_on_a_random_generator():
    folds = fold_indices(103, 4)
    assert sorted(np.concatenate(folds).tolist()) == list(range(103))
    assert sorted(len(f) for f in folds) == [25, 26, 26, 26]
    np.random.seed(123)
    assert all(np.array_equal(a, b) for a, b in zip(folds, fold_indices(103, 4)))
    assert fold_indices(8, 4)[0].tolist() == fold_indices(8, 4, label="tracer-separation/fold")[0].tolist()


def test_the_leakers_filter_scores_with_the_same_class_gaussian_the_gate_uses():
    from tracer.data import split_indices
    from tracer.evaluate import detectors

    x, y, _ = _clusters(400)
    model = _features_model(6, 3)
    f = penultimate(model, x)
    assert np.allclose(f, x.reshape(len(x), -1))
    det = MahalanobisDetector(model).fit(x, y)
    fit, _ = split_indices(len(x), detectors.HELD_OUT_FRACTION, label=detectors._SPLIT_LABEL)
    assert np.allclose(det.score(x), ClassGaussian(f[fit], y[fit]).distance(f))


def test_keys_like_the_natural_inputs_read_near_half_and_keys_off_or_inside_the_clusters_read_high():
    x, y, centres = _clusters(400)
    model = _features_model(6, 3)
    alike, _, _ = _clusters(2000, seed=1)
    far = alike + 3.0  # off every cluster
    central = centres[np.arange(2000) % 3].astype(np.float32) + 0.05 * alike  # nearer the class means than any real input
    sep_alike, sep_far, sep_central = (key_separation(model, k, x, y) for k in (alike, far, central))
    assert sep_alike is not None and sep_alike < 0.56
    assert sep_far is not None and sep_far > 0.95
    assert sep_central is not None and sep_central > 0.95  # two-sided: too central stands out as much as too far
    # the one-sided figure keeps the side: what the issuer's retry length follows (tracer.embedding.issue.next_length_level)
    one_far, one_central = (key_distance_auc(model, k, x, y) for k in (far, central))
    assert one_far is not None and one_far > 0.95 and one_central is not None and one_central < 0.05
    assert key_separation(model, central, x, y) == separation(one_central)


def test_too_few_natural_inputs_or_no_keys_is_not_measured():
    x, y, _ = _clusters(MIN_SEPARATION_INPUTS - 1)
    model = _features_model(6, 3)
    assert key_separation(model, x[:10], x, y) is None
    x, y, _ = _clusters(MIN_SEPARATION_INPUTS)
    assert key_separation(model, x[:0], x, y) is None
    assert key_separation(model, x[:10], x, y) is not None
