"""How far fingerprint keys stand out from natural inputs: the measures a leaker's filter and the issuer's gate share.

A leaker serving a stolen copy can fit an out-of-distribution detector on its
own data and answer flagged queries wrongly (issue 12). Three of the four
detectors ``tracer evaluate`` fits (:mod:`tracer.evaluate.detectors`) look at
inputs only, so how they see the keys is fixed by the key style. The fourth,
a Mahalanobis distance on the copy's penultimate features (Lee et al., NeurIPS
2018), depends on the copy: how the fine-tune placed the keys among the
class clusters. On digits with natural-mix/v3 keys it ranged from 0.52 to
0.67 (two-sided AUC) across five copies, and longer retries drew the keys
*inside* the clusters (one-sided AUC 0.35 after a 5000-step try, from 0.57
after 2000; bench/results/key_separation_gate.txt).

So the issuer measures it too, on what it holds, before a copy ships
(:func:`key_separation`, ``[gates] max_key_separation``): the same class-
Gaussian score (:class:`ClassGaussian`), fitted on three quarters of the
vendor's validation inputs and scoring the last quarter and the keys, four
times over (folds by hash, not by a random generator), the AUC of keys against
held-out inputs averaged over the folds. Validation inputs rather than training
inputs: the copy was fitted on the training inputs, whose features sit tighter
than anything unseen, and a fit on them read 0.02-0.11 below the leaker's figure
(fitted on its own share; a scratch study of 40 candidates, not kept in bench/),
where over 274 candidates in bench/results/key_separation_gate.txt and
key_separation_retry_growth.txt the leaker's two-sided figure was the cross-fit's
-0.021 to +0.033 (mean +0.005).

Picking among one customer's tries by this figure leaves the null untouched: the
keys and their label sets S_i are fixed before any codeword, and every try of a
customer carries that customer's labels; a model not derived from the customer
still matches each key with probability at most 1/|S_i| (:mod:`tracer.fingerprint.stats`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import hash_order
from .training import last_layer

__all__ = ["auc", "auc_interval", "separation", "separation_interval", "penultimate", "ClassGaussian", "fold_indices", "key_separation", "key_distance_auc", "SEPARATION_FOLDS", "MIN_SEPARATION_INPUTS"]

#: Folds of the validation inputs in :func:`key_separation`: each fit sees three quarters, as the leaker's filter does its share.
SEPARATION_FOLDS = 4
#: Fewer validation inputs than this and :func:`key_separation` does not measure: a held-out quarter of 25 inputs
#: puts the AUC's standard error near 0.06, as wide as the margin the gate keeps.
MIN_SEPARATION_INPUTS = 100
_FOLD_LABEL = "tracer-separation/fold"


def _beaten(scores: np.ndarray, sorted_others: np.ndarray) -> np.ndarray:
    """For each score, how many of ``sorted_others`` lie below it, ties counted half (float64: exact halves)."""
    below = np.searchsorted(sorted_others, scores, side="left")
    return below + 0.5 * (np.searchsorted(sorted_others, scores, side="right") - below)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + half the ties (the Mann-Whitney AUC), exact."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.sort(np.asarray(negative, dtype=np.float64).ravel())
    if not len(pos) or not len(neg):
        return float("nan")
    return float(_beaten(pos, neg).sum() / (len(pos) * len(neg)))


def auc_interval(positive: np.ndarray, negative: np.ndarray, *, z: float = 1.959963984540054) -> tuple[float, float]:
    """DeLong's approximate 95 % interval of :func:`auc` (``z`` standard errors each side, clipped to [0, 1]).

    Why: a leaker's filter is judged on finite samples; the wine quickstart has 36 validation inputs, and an
    AUC on 36 natural inputs moves by about 0.05 from one draw of them to the next, which its point value hides.
    The variance is DeLong, DeLong and Clarke-Pearson's (Biometrics 1988): each positive's share of negatives it
    outscores and each negative's share of positives that outscore it (ties half), whose sample variances over
    their counts add. It treats positives and negatives as independent draws; it is a normal approximation, not
    an exact bound. Fewer than two of either side give the point itself at both ends.
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    point = auc(pos, neg)
    if len(pos) < 2 or len(neg) < 2:
        return point, point
    v10 = _beaten(pos, np.sort(neg)) / len(neg)  # each positive's share of the negatives it outscores
    v01 = (len(pos) - _beaten(neg, np.sort(pos))) / len(pos)  # each negative's share of the positives that outscore it
    se = float(np.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)))
    return max(point - z * se, 0.0), min(point + z * se, 1.0)


def separation_interval(low: float, high: float) -> tuple[float, float]:
    """The interval of :func:`separation` that an AUC interval ``[low, high]`` implies: 0.5 at its low end when it holds 0.5."""
    ends = (separation(low), separation(high))
    return (0.5 if low <= 0.5 <= high else min(ends)), max(ends)


def separation(a: float) -> float:
    """max(AUC, 1 - AUC): a filter that sees keys score *lower* than natural inputs flags the low tail instead."""
    return max(a, 1.0 - a)


def penultimate(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """The input of the model's last layer (:func:`tracer.training.last_layer`), flattened, via a forward hook (float64).

    Computed on the model's own device (an issuer's candidate may sit on a GPU; it is not moved), in eval mode.
    """
    model.eval()
    dev = next(model.parameters()).device
    feats: list[torch.Tensor] = []
    hook = last_layer(model).register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().reshape(len(inp[0]), -1).cpu()))
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(torch.as_tensor(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(dev))
    finally:
        hook.remove()
    return torch.cat(feats).double().numpy() if feats else np.zeros((0, 0))


class ClassGaussian:
    """Class means and one shared covariance of feature vectors; :meth:`distance` is the squared Mahalanobis
    distance to the nearest class mean.

    The covariance gets a small ridge (1e-6 of its mean variance) and a pseudo-inverse, so that few
    inputs in many feature dimensions still invert.
    """

    RIDGE = 1e-6

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        f, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
        classes = np.unique(y)
        self.means = np.stack([f[y == c].mean(0) for c in classes])
        centred = f - self.means[np.searchsorted(classes, y)]
        cov = centred.T @ centred / len(f)
        ridge = self.RIDGE * max(float(np.trace(cov)) / len(cov), 1e-12)
        self.precision = np.linalg.pinv(cov + ridge * np.eye(len(cov)), hermitian=True)

    def distance(self, features: np.ndarray) -> np.ndarray:
        d = np.asarray(features, dtype=np.float64)[:, None, :] - self.means[None]  # [N, K, D]
        return np.einsum("nkd,de,nke->nk", d, self.precision, d).min(1)


def fold_indices(n: int, folds: int, *, label: str = _FOLD_LABEL) -> list[np.ndarray]:
    """``folds`` disjoint index arrays covering range(n), by SHA-256 of each index (sizes differ by at most one)."""
    order = hash_order(n, label=label)
    return [np.array(sorted(order[k::folds]), dtype=np.int64) for k in range(folds)]


def key_separation(model: nn.Module, keys: np.ndarray, x: np.ndarray, y: np.ndarray, *, folds: int = SEPARATION_FOLDS) -> float | None:
    """Two-sided AUC of ``keys`` against the natural inputs ``x`` (labels ``y``) under a Mahalanobis filter on ``model``'s features.

    :func:`key_distance_auc`, made two-sided; None when that is.
    """
    one_sided = key_distance_auc(model, keys, x, y, folds=folds)
    return None if one_sided is None else separation(one_sided)


def key_distance_auc(model: nn.Module, keys: np.ndarray, x: np.ndarray, y: np.ndarray, *, folds: int = SEPARATION_FOLDS) -> float | None:
    """One-sided AUC: the chance that a key lies *farther* from its nearest class than a natural input does, in ``model``'s features.

    Above 0.5 the keys stand out beyond the class clusters; below, they sit closer to the class centres than
    real inputs (what long fine-tunes do, module docstring). Cross-fitted: each fold's filter is fitted on
    the other folds and scores that fold and the keys; the AUCs are averaged. None when there are fewer than
    :data:`MIN_SEPARATION_INPUTS` natural inputs or no keys: too few to tell.
    """
    if len(x) < MIN_SEPARATION_INPUTS or not len(keys):
        return None
    fk, fx = penultimate(model, keys), penultimate(model, x)
    y = np.asarray(y)
    aucs = []
    for held in fold_indices(len(x), folds):
        fit = np.setdiff1d(np.arange(len(x)), held)
        gauss = ClassGaussian(fx[fit], y[fit])
        aucs.append(auc(gauss.distance(fk), gauss.distance(fx[held])))
    return float(np.mean(aucs))
