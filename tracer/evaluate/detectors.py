"""Out-of-distribution detectors a leaker fits on its own share of the data, and the query filter built on them.

A leaker serving a stolen copy can refuse to answer odd queries honestly: it
fits a detector on the inputs it holds (its attacker share, never the
vendor's data), and answers every query the detector flags with something
other than the copy's answer. If fingerprint keys look unlike real queries,
the filter catches them and the watermark never shows (issue 12). Four
detectors, each the cheapest published form of its family:

* :class:`KNNDetector`: mean distance to the 5 nearest of the leaker's inputs;
* :class:`StatsDetector`: a few input statistics, flagged outside the range the
  leaker's own inputs span (images: share of near-zero pixels, mean, border
  mass; tabular: largest per-feature z-score, mean and standard deviation of
  the input's features);
* :class:`MahalanobisDetector`: Mahalanobis distance of the copy's penultimate
  features to the nearest class mean, with one shared covariance (Lee, Lee, Lee
  and Shin, NeurIPS 2018, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks"), without input
  preprocessing or feature ensembles;
* :class:`AutoencoderDetector`: reconstruction error of a small MLP
  autoencoder trained on the leaker's inputs.

Each has ``fit(x_own, y_own=None)``, ``score(x)`` (float array, higher = more
unusual) and ``flags(x)`` (bool array). The kNN, Mahalanobis and autoencoder
detectors are fitted on three quarters of the share (a deterministic split by
hash, :func:`tracer.data.split_indices`) and flag scores above the 99.5th
percentile of the held-out quarter's scores: about 0.5 % of natural queries
are flagged, a cost the leaker accepts. Every detector scores one input at a
time (no batch statistics), so a server scoring queries one by one flags
exactly what a batch call flags.

:func:`filter_scores` and :func:`filtered_predictor` answer flagged queries
with the copy's runner-up class (its two top scores swapped) or with a
uniformly random class (one of all C, the copy's own included, chosen by
SHA-256 of a seed and the input's bytes, so that asking twice gets the same
answer), and unflagged queries with the copy's answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import TaskConfig
from ..data import split_indices
from ..separation import ClassGaussian, auc, auc_interval, penultimate, separation, separation_interval
from ..training import last_layer

__all__ = ["Detector", "KNNDetector", "StatsDetector", "MahalanobisDetector", "AutoencoderDetector", "DETECTORS", "ANSWERS",
           "make_detector", "auc", "detector_figures", "filter_scores", "filtered_predictor", "HELD_OUT_FRACTION", "PERCENTILE"]

Predictor = Callable[[np.ndarray], np.ndarray]

#: Share of the leaker's inputs held out to set the threshold (the rest fits the detector).
HELD_OUT_FRACTION = 0.25
#: Threshold: this percentile of the held-out inputs' scores.
PERCENTILE = 99.5
_SPLIT_LABEL = "tracer-evaluate/evasion"
#: What a filter answers to a flagged query.
ANSWERS = ("runner-up", "random")


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1)


class Detector:
    """Base: ``fit`` sets ``threshold`` from the held-out part of the leaker's share; flags are scores above it."""

    name = "detector"
    threshold: float = float("inf")

    def fit(self, x_own: np.ndarray, y_own: np.ndarray | None = None) -> Detector:
        fit_idx, held_idx = split_indices(len(x_own), HELD_OUT_FRACTION, label=_SPLIT_LABEL)
        if len(fit_idx) < 2 or len(held_idx) < 1:
            raise ValueError(f"the {self.name} detector needs at least 4 of the leaker's inputs, got {len(x_own)}")
        self._fit(x_own[fit_idx], None if y_own is None else np.asarray(y_own)[fit_idx])
        self.fit_size, self.held_out_size = int(len(fit_idx)), int(len(held_idx))
        self.threshold = float(np.percentile(self.score(x_own[held_idx]), PERCENTILE))
        return self

    def _fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        raise NotImplementedError

    def score(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def flags(self, x: np.ndarray) -> np.ndarray:
        return self.score(x) > self.threshold

    def describe(self) -> dict:
        """The detector's settings, for the attack's row."""
        return {"threshold": round(self.threshold, 6), "fit": getattr(self, "fit_size", 0), "held_out": getattr(self, "held_out_size", 0),
                "percentile": PERCENTILE}


class KNNDetector(Detector):
    """Mean Euclidean distance to the ``k`` nearest of the leaker's inputs (flattened, as given)."""

    name = "knn"

    def __init__(self, k: int = 5, *, chunk: int = 1024) -> None:
        self.k, self.chunk = k, chunk

    def _fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.ref = torch.as_tensor(_flat(x))
        self.k = min(self.k, len(self.ref))

    def score(self, x: np.ndarray) -> np.ndarray:
        q = torch.as_tensor(_flat(x))
        out = [torch.cdist(q[i : i + self.chunk].double(), self.ref.double()).topk(self.k, largest=False).values.mean(1)
               for i in range(0, len(q), self.chunk)]
        return torch.cat(out).numpy() if out else np.zeros(0)

    def describe(self) -> dict:
        return {"k": self.k, **super().describe()}


class StatsDetector(Detector):
    """A few summary statistics per input; flagged when any lies outside the range of the leaker's own inputs.

    The score is the largest excess over that range, in units of the range's
    width (negative inside it, the distance to the nearest bound), so flags are
    exactly ``score > 0`` and the score still ranks inputs for the AUC. The
    range is that of the whole share (no held-out part: nothing to calibrate).
    """

    name = "stats"

    def __init__(self, task: TaskConfig) -> None:
        self.task = task
        self.image = task.domain == "image" and len(task.input_shape) == 3

    def fit(self, x_own: np.ndarray, y_own: np.ndarray | None = None) -> Detector:
        if len(x_own) < 2:
            raise ValueError(f"the stats detector needs at least 2 of the leaker's inputs, got {len(x_own)}")
        flat = _flat(x_own).astype(np.float64)
        self.mu, self.sd = flat.mean(0), flat.std(0) + 1e-12
        s = self.stats(x_own)
        self.lo, self.hi = s.min(0), s.max(0)
        self.width = np.maximum(self.hi - self.lo, 1e-12)
        self.fit_size, self.held_out_size, self.threshold = int(len(x_own)), 0, 0.0
        return self

    def stats(self, x: np.ndarray) -> np.ndarray:
        """[N, 3]: images (near-zero share, mean, border mass), tabular (max |z|, mean, std)."""
        x = np.asarray(x, dtype=np.float64)
        if self.image:
            low, high = self.task.bounds(dtype=np.float64)
            u = (x - low) / np.maximum(high - low, 1e-12)  # [N, C, H, W] in [0, 1]
            ring = np.ones(u.shape[2:], dtype=bool)
            ring[1:-1, 1:-1] = False
            total = u.reshape(len(u), -1).sum(1)
            border = u[:, :, ring].reshape(len(u), -1).sum(1)
            return np.stack([(u <= 0.05).reshape(len(u), -1).mean(1), u.reshape(len(u), -1).mean(1), border / np.maximum(total, 1e-12)], 1)
        flat = x.reshape(len(x), -1)
        z = (flat - self.mu) / self.sd
        return np.stack([np.abs(z).max(1), flat.mean(1), flat.std(1)], 1)

    def score(self, x: np.ndarray) -> np.ndarray:
        s = self.stats(x)
        return np.maximum((s - self.hi) / self.width, (self.lo - s) / self.width).max(1)

    def describe(self) -> dict:
        names = ("near_zero", "mean", "border_mass") if self.image else ("max_abs_z", "mean", "std")
        return {"statistics": ", ".join(names), "rule": "outside the range of the leaker's inputs", "fit": getattr(self, "fit_size", 0)}


class MahalanobisDetector(Detector):
    """Smallest Mahalanobis distance (squared) of the copy's penultimate features to a class mean, one shared covariance.

    Class means come from the leaker's labels (``y_own``; the copy's own answers
    when none are given); :class:`tracer.separation.ClassGaussian` holds the
    arithmetic, which the issuer's key-separation gate shares.
    """

    name = "mahalanobis"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def _fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        f = penultimate(self.model, x)
        if y is None:
            y = last_layer(self.model)(torch.as_tensor(f, dtype=torch.float32)).argmax(1).numpy()
        self.gauss = ClassGaussian(f, y)

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.gauss.distance(penultimate(self.model, x))

    def describe(self) -> dict:
        return {"classes": len(self.gauss.means), "features": int(self.gauss.means.shape[1]), **super().describe()}


class AutoencoderDetector(Detector):
    """Mean squared reconstruction error of an MLP autoencoder trained on the leaker's inputs.

    Inputs are scaled to [0, 1] by the task's domain bounds and flattened; the
    network is d -> h -> b -> h -> d (ReLU), h = d/2 and b = d/8 clamped to
    [16, 128] and [4, 32]; Adam 1e-3, ``steps`` batches of 32 (epoch after
    epoch of a seeded permutation: a fixed amount of training, however small
    the share), from ``seed``. Torch's global RNG is left as it was, and the
    fit runs on one thread (for a network this small, more threads only add
    contention).
    """

    name = "autoencoder"

    def __init__(self, task: TaskConfig, *, seed: int = 0, steps: int = 1000) -> None:
        self.task, self.seed, self.steps = task, seed, steps
        low, high = task.bounds(flat=True, dtype=np.float32)
        self.low, self.span = low, np.maximum(high - low, 1e-12).astype(np.float32)

    def _unit(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((_flat(x) - self.low) / self.span)

    def _fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        d = self.task.features
        h, b = int(np.clip(d // 2, 16, 128)), int(np.clip(d // 8, 4, 32))
        u = self._unit(x)
        rng = np.random.default_rng(self.seed)
        order = np.concatenate([rng.permutation(len(u)) for _ in range(-(-self.steps * 32 // len(u)))])
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            torch.set_num_threads(1)
            try:
                self.net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, b), nn.ReLU(), nn.Linear(b, h), nn.ReLU(), nn.Linear(h, d))
                opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
                for step in range(self.steps):
                    idx = torch.as_tensor(order[step * 32 : (step + 1) * 32])
                    opt.zero_grad()
                    nn.functional.mse_loss(self.net(u[idx]), u[idx]).backward()
                    opt.step()
            finally:
                torch.set_num_threads(threads)
        self.net.eval()

    def score(self, x: np.ndarray) -> np.ndarray:
        u = self._unit(x)
        with torch.no_grad():
            return ((self.net(u) - u) ** 2).mean(1).double().numpy()

    def describe(self) -> dict:
        return {"steps": self.steps, "seed": self.seed, **super().describe()}


#: The detectors by name, in the order of the suite's rows.
DETECTORS = ("knn", "stats", "mahalanobis", "autoencoder")


def make_detector(name: str, *, task: TaskConfig, model: nn.Module | None = None, seed: int = 0) -> Detector:
    """An unfitted detector; ``model`` (the copy, in torch) is needed by the Mahalanobis detector only."""
    if name == "knn":
        return KNNDetector()
    if name == "stats":
        return StatsDetector(task)
    if name == "mahalanobis":
        if model is None:
            raise ValueError("the Mahalanobis detector needs the copy as a torch model")
        return MahalanobisDetector(model)
    if name == "autoencoder":
        return AutoencoderDetector(task, seed=seed)
    raise ValueError(f"unknown detector {name!r} (choose from {', '.join(DETECTORS)})")


def detector_figures(detector: Detector, keys: np.ndarray | None, natural: np.ndarray | None) -> dict[str, Any]:
    """AUC of keys against natural inputs (keys scored as the positives), and the share of each the filter flags.

    ``separation`` is max(AUC, 1 - AUC): a leaker who notices that keys score *lower* than natural inputs
    (mixtures reconstruct better than real digits under an autoencoder, say) flags the low tail instead,
    so an AUC of 0.36 separates as well as one of 0.64. ``auc_interval`` and ``separation_interval`` are
    DeLong's approximate 95 % intervals (:func:`tracer.separation.auc_interval`): with few natural inputs
    (36 in the wine quickstart) the point figure alone overstates what the measurement knows.
    """
    out: dict[str, Any] = {"detector": detector.name, "auc": None, "separation": None, "auc_interval": None, "separation_interval": None,
                           "keys": 0, "keys_flagged": None, "decoys": 0, "decoys_flagged": None}
    if keys is None or natural is None or not len(keys) or not len(natural):
        return out
    k, n = detector.score(keys), detector.score(natural)
    a = auc(k, n)
    low, high = auc_interval(k, n)
    out.update(auc=round(a, 6), separation=round(separation(a), 6), auc_interval=[round(low, 6), round(high, 6)],
               separation_interval=[round(v, 6) for v in separation_interval(low, high)], keys=int(len(keys)),
               keys_flagged=round(float(np.mean(k > detector.threshold)), 6), decoys=int(len(natural)),
               decoys_flagged=round(float(np.mean(n > detector.threshold)), 6))
    return out


def _random_classes(x: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """One class per input from SHA-256 of the seed and the input's float32 bytes: uniform, and the same answer when asked again."""
    flat = np.ascontiguousarray(_flat(x))
    prefix = f"tracer-evasion/{seed}|".encode()
    return np.array([int.from_bytes(hashlib.sha256(prefix + row.tobytes()).digest()[:8], "big") % num_classes for row in flat], dtype=np.int64)


def filter_scores(x: np.ndarray, scores: np.ndarray, flagged: np.ndarray, *, answer: str, seed: int = 0) -> np.ndarray:
    """The copy's scores, changed on flagged rows so that their argmax is the runner-up class or a random class.

    Runner-up: the two top scores swapped. Random: the top score swapped with the
    chosen class's (unchanged when the copy's answer is the one chosen).
    """
    if answer not in ANSWERS:
        raise ValueError(f"unknown filter answer {answer!r} (choose from {', '.join(ANSWERS)})")
    out = np.array(scores, dtype=np.float32, copy=True)
    rows = np.flatnonzero(np.asarray(flagged, dtype=bool))
    if not len(rows):
        return out
    order = np.argsort(-out[rows], axis=1, kind="stable")
    top = order[:, 0]
    other = order[:, 1] if answer == "runner-up" else _random_classes(x[rows], out.shape[1], seed)
    a, b = out[rows, top].copy(), out[rows, other].copy()
    out[rows, top], out[rows, other] = b, a
    return out


def filtered_predictor(predict: Predictor, detector: Detector, *, answer: str, seed: int = 0) -> Predictor:
    """``predict`` behind the filter: flagged queries get the runner-up or a random class, the others the copy's answer."""
    if answer not in ANSWERS:
        raise ValueError(f"unknown filter answer {answer!r} (choose from {', '.join(ANSWERS)})")
    return lambda x: filter_scores(x, predict(x), detector.flags(x), answer=answer, seed=seed)
