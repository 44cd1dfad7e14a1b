"""In-distribution fingerprint keys (styles ``natural-mix/v1``, ``/v2`` and ``/v3``): a large pool built from the vendor's own inputs.

Why: noise keys (:mod:`.probes`, style ``uniform-grid/v1``) lie far from any
real input, so an API that filters unusual queries answers them wrongly, and
two probe sets run out after two probed endpoints. A key here is a keyed
mixture of two of the vendor's training inputs of different classes that
look alike:

* ``a`` is a keyed vendor input; ``b`` is a keyed pick among the
  ``NEAR`` inputs nearest to ``a`` (exact integer distances on a 16-bit
  grid) among ``CANDIDATES`` keyed inputs of other classes, so the mixture
  stays near the data (a leaker's nearest-neighbour distance does not single
  it out, as it does mixtures of any two inputs);
* the mixture ``(1 - w) a + w b``, ``w`` keyed in ``[MIX_LOW, MIX_HIGH]``;
* images: its pixels then take the quantile mixture of ``a``'s and ``b``'s
  pixel histograms, in the mixture's rank order (ties by a keyed order),
  snapped to the values the vendor's inputs take (digits: the 17 levels of
  pixel/16), so its pixel statistics are those of real inputs and it has no
  value a real input could not have;
* tabular rows: ``natural-mix/v1`` keeps the plain mixture. ``natural-mix/v2``
  (and v3, what `tracer init` writes) takes a keyed coordinate crossover instead:
  feature j is ``b``'s with probability ``w`` (one keyed 32-bit word per
  feature, ``u_j / 2**32 < w``), else ``a``'s. A plain mixture sits between
  its sources, nearer the data's centre, so a leaker's kNN distance and
  autoencoder error score it *lower* than real queries (wine quickstart:
  two-sided AUC 0.68 and 0.77); the crossover keeps every value one a real
  input has and the spread around the mixture, and scores two-sided
  0.56-0.61 on the four detectors (mean of 5 master keys; worst 0.64), where
  the vendor's own rows score 0.58-0.59 (worst 0.61) against the same 36
  validation rows (bench/results/keystyle_wine.txt). Images are built
  alike in v1 and v2;
* images, ``natural-mix/v3``: a mixture shrinks its sources' deviations from the
  vendor's mean input by ``s = sqrt((1 - w)**2 + w**2)`` (independent
  deviations add in quadrature), and rank matching keeps the pixel histogram
  but not that spread, so v1/v2 image keys sit nearer the data's centre and its
  principal subspace than real inputs: a leaker's autoencoder scores them
  *lower* (digits: AUC 0.36-0.39, two-sided up to 0.64). v3 ranks the pixels
  in the order of ``mean + (m - mean) / s**SPREAD`` instead of the mixture
  ``m`` itself, and takes ``w`` in ``[IMAGE_MIX_LOW, IMAGE_MIX_HIGH]`` =
  [0.25, 0.45] (a lower weight keeps the key nearer its first source, which
  offsets the distance to real inputs the restored spread adds). Over four
  master keys on digits (512 keys each) the four detectors separate v3 keys
  from natural inputs with two-sided AUC at most 0.589 (kNN 0.557-0.589,
  stats 0.518-0.557, Mahalanobis on the base 0.549-0.585, autoencoder
  two-sided 0.550-0.573), against v2's autoencoder 0.614-0.636
  (bench/results/keystyle_digits_v3.txt). The weight range is a measured
  compromise: v2's [0.3, 0.5] with the spread puts kNN at 0.615; [0.2, 0.4]
  keeps it at 0.567 but its copies took 3-4 tries and lost fine-tuning at
  learning rate 1e-2 in 3 of 6 results (natural_v3w020_vs_v2_copies.txt),
  where [0.25, 0.45] kept every valid attack (image_key_factors_025.txt).
  Tabular rows are built as v2 builds them.

Measured on digits (bench/results/keys_research.txt, construction "C8"): a
leaker's detectors separate these keys from natural inputs with AUC 0.58
(kNN), 0.55 (Mahalanobis on the base's features), 0.42 (pixel statistics),
0.40 (autoencoder); mixtures of any two inputs: 0.68, 0.52, 0.87, 0.44.

The label set of key i is fixed with it, before any customer exists and
without looking at any codeword: ``S_i = (class of a, class of b)`` (k = 2).
Customer c's label on key i is ``S_i[j]`` with ``j`` exactly uniform in
``{0, 1}`` from c's own HKDF stream (label ``codeword/<pool id>``; each style
has its own pool id, :data:`POOL_IDS`, so its own streams), so a model
not derived from c agrees with it with probability at most 1/2 on every key,
independently (see :mod:`.stats`). Nothing selects, filters or reorders keys by
codeword values: the construction reads only the master secret's streams and
the vendor's inputs and labels.

Determinism: the choice of ``a``, ``b`` and ``w`` comes from SHAKE-256 streams
(:func:`~tracer.keys.derive.uniform_ints`); the mixture is float64 arithmetic
(correctly rounded, so identical on every IEEE machine) followed by a
nearest-value snap with ties to the lower value. The pool therefore depends
only on the master secret and the dataset, and golden vectors in
``tests/test_pool.py`` pin it. It is nevertheless stored, encrypted with
AES-256-GCM under ``HKDF(master, "key-pool/<id>/storage")``, in
``keys/<id>.keypool``: a vendor whose dataset later changes must not lose
the keys of copies already issued, and every issuance records the pool's
digest, so the stored pool can be checked against the ledger.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._files import atomic_write_bytes
from .._json import loads_strict
from ..config import TaskConfig
from ..errors import KeyFileError
from ..keys.derive import hkdf_key, shake_stream, uniform_ints
from .probes import ProbeSet

__all__ = ["KEY_STYLE", "POOL_ID", "POOL_IDS", "KeyPool", "build_pool", "save_pool", "load_pool", "pool_path", "pool_style",
           "style_pool_id", "MIX_LOW", "MIX_HIGH", "IMAGE_MIX_LOW", "IMAGE_MIX_HIGH", "SPREAD"]

KEY_STYLE = "natural-mix/v1"  # the first natural style and (below) its pool id: the names copies issued with it carry
POOL_ID = "pool1"
#: Every natural key style and the id of its pool (``keys/<id>.keypool``, and the label of its HKDF streams).
POOL_IDS: dict[str, str] = {KEY_STYLE: POOL_ID, "natural-mix/v2": "pool2", "natural-mix/v3": "pool3"}
MIX_LOW, MIX_HIGH = 0.3, 0.5
#: natural-mix/v3 image keys: the range of the second source's weight, and how much of the spread mixing loses is restored.
IMAGE_MIX_LOW, IMAGE_MIX_HIGH, SPREAD = 0.25, 0.45, 0.75  # SPREAD: computed with square roots only (_spread_order)
_SPREAD_STYLES = frozenset({"natural-mix/v3"})  # the styles whose image keys restore the spread
CANDIDATES, NEAR = 256, 8  # the second source: one of the 8 nearest of 256 keyed other-class inputs
_MAGIC = b"TRKP1"
_FORMAT = "tracer-key-pool/1"
_MAX_SNAP_VALUES = 256  # inputs with at most this many distinct values are snapped to them


@dataclass(frozen=True)
class KeyPool(ProbeSet):
    """The keys (``inputs``), their label sets ``S_i`` and how each was made (``sources``, ``weights``)."""

    label_sets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # [K, k] classes
    sources: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # [K, 2] rows of x_train
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [K] mixing weight of the second source
    dataset_fingerprint: str = ""
    style: str = KEY_STYLE

    @property
    def label_set_size(self) -> int:
        return int(self.label_sets.shape[1])

    def bound(self, num_classes: int) -> int:
        """Each customer draws an index in ``[0, k)`` per key, not a class."""
        return self.label_set_size

    def labels(self, index: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Classes for codeword indices ``index`` ([..., K] or, with ``keys``, [..., len(keys)])."""
        sets = self.label_sets if keys is None else self.label_sets[np.asarray(keys, dtype=np.int64)]
        idx = np.asarray(index, dtype=np.int64)
        return np.take_along_axis(np.broadcast_to(sets, (*idx.shape[:-1], *sets.shape)), idx[..., None], axis=-1)[..., 0]

    def scored(self, answers: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Which answers count as trials: those inside the key's label set.

        Under H0 the suspect's answers do not depend on the customer's labels, so given the
        answers, an answer inside S_i matches with probability exactly 1/k and one outside
        never does: the matches among in-set answers are exactly Binomial(n_in, 1/k), a
        sharper test than counting out-of-set answers as misses (bench/results/keys_research.txt).
        """
        sets = self.label_sets if keys is None else self.label_sets[np.asarray(keys, dtype=np.int64)]
        return (np.asarray(answers, dtype=np.int64)[:, None] == sets).any(axis=1)

    def digest(self) -> str:
        """Public fingerprint of the keys and their label sets (reveals nothing about any codeword)."""
        h = hashlib.sha256(f"tracer-key-pool/v1|{self.id}|{self.style}|{self.inputs.dtype.str}|{self.inputs.shape}".encode())
        h.update(np.ascontiguousarray(self.inputs).tobytes())
        h.update(np.ascontiguousarray(self.label_sets, dtype=">i4").tobytes())
        return h.hexdigest()

    def record(self) -> dict:
        """What an issuance records of the pool (its ``probe_sets`` entry)."""
        return {"id": self.id, "size": self.size, "digest": self.digest(), "style": self.style, "bound": self.label_set_size,
                "dataset_fingerprint": self.dataset_fingerprint}


def _uniform_below(key: bytes, label: str, bounds: np.ndarray) -> np.ndarray:
    """One integer exactly uniform in ``[0, bounds[i])`` per element, by rejection from one 32-bit word stream."""
    out = np.empty(len(bounds), dtype=np.int64)
    nbytes = 4 * len(bounds) + 64
    while True:
        words = np.frombuffer(shake_stream(key, label, nbytes), dtype=">u4").astype(np.int64)
        pos = 0
        ok = True
        for i, b in enumerate(bounds):
            limit = (2**32 // int(b)) * int(b)
            while pos < len(words) and words[pos] >= limit:
                pos += 1
            if pos >= len(words):
                ok = False
                break
            out[i] = words[pos] % int(b)
            pos += 1
        if ok:
            return out
        nbytes *= 2  # prefix-stable: the values already accepted do not change


def pool_style(pool_id: str) -> str:
    """The key style a pool id stands for (:data:`POOL_IDS`); ids outside it (made by hand) build as v1."""
    return next((style for style, pid in POOL_IDS.items() if pid == pool_id), KEY_STYLE)


def style_pool_id(style: str) -> str | None:
    """The pool a natural key style's copies carry (:data:`POOL_IDS`); None for noise probe sets."""
    return POOL_IDS.get(style)


def _snap_values(x_train: np.ndarray) -> np.ndarray | None:
    """The distinct values of the vendor's inputs when there are few (a pixel grid), else None."""
    values = np.unique(np.asarray(x_train, dtype=np.float64))
    return values if len(values) <= _MAX_SNAP_VALUES else None


def _snap(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each entry of ``x`` replaced by the nearest of ``values`` (sorted), ties to the lower one."""
    hi = np.clip(np.searchsorted(values, x, side="left"), 1, len(values) - 1)
    lo = hi - 1
    take_hi = (values[hi] - x) < (x - values[lo])
    return np.where(take_hi, values[hi], values[lo])


def _grid_frame(task: TaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """The 16-bit grid's origin and span per feature: the task's bounds (a zero span taken as 1)."""
    low, high = task.bounds(flat=True)
    return low, np.where(high > low, high - low, 1.0)


def _grid_ints(x: np.ndarray, task: TaskConfig) -> np.ndarray:
    """Inputs as int64 steps of a 16-bit grid over the task's bounds: exact, machine-independent distances."""
    low, span = _grid_frame(task)
    return np.rint((np.asarray(x, dtype=np.float64).reshape(len(x), -1) - low) / span * 65535.0).astype(np.int64)


def _near_partners(key: bytes, first: np.ndarray, y: np.ndarray, grid: np.ndarray, *, near: int = NEAR) -> np.ndarray:
    """For each key's first source, a keyed pick among its ``near`` (NEAR) nearest of CANDIDATES keyed other-class inputs."""
    others = {int(c): np.flatnonzero(y != c) for c in np.unique(y)}
    bounds = np.repeat(np.array([len(others[int(y[a])]) for a in first], dtype=np.int64), CANDIDATES)
    cand_pos = _uniform_below(key, "source/b-candidates", bounds).reshape(len(first), CANDIDATES)
    pick = uniform_ints(key, "source/b-pick", len(first), near)
    second = np.empty(len(first), dtype=np.int64)
    for i, a in enumerate(first):
        cands = others[int(y[a])][cand_pos[i]]
        diff = grid[cands] - grid[a]
        dist = np.einsum("ij,ij->i", diff, diff)  # int64: exact
        order = np.lexsort((np.arange(CANDIDATES), dist))  # nearest first, ties by candidate position
        second[i] = cands[order[pick[i]]]
    return second


def _rank_matched(mixed: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray, tie: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """Each row of ``mixed`` given the quantile mixture of ``a``'s and ``b``'s value histograms, in its own rank order."""
    target = (1.0 - w)[:, None] * np.sort(a, axis=1) + w[:, None] * np.sort(b, axis=1)
    if values is not None:
        target = _snap(target, values)
    out = np.empty_like(mixed)
    for i in range(len(mixed)):
        out[i, np.lexsort((tie[i], mixed[i]))] = target[i]
    return out


def _crossover(key: bytes, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """natural-mix/v2 tabular keys: feature j of row i is ``b[i, j]`` when its keyed word ``u / 2**32 < w[i]``, else ``a[i, j]``."""
    u = uniform_ints(key, "crossover", a.size, 2**32).reshape(a.shape).astype(np.float64) / 2.0**32  # exact in float64
    return np.where(u < w[:, None], b, a)


def _grid_mean(grid: np.ndarray, task: TaskConfig) -> np.ndarray:
    """The vendor's mean input from its :func:`_grid_ints`: exact int64 sums (a float sum's result depends on its order)."""
    low, span = _grid_frame(task)
    return low + span * (grid.sum(axis=0).astype(np.float64) / float(len(grid)) / 65535.0)


def _spread_order(mixed: np.ndarray, w: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """natural-mix/v3 rank order: the mixture's deviation from ``centre`` scaled by ``s**-SPREAD``, ``s = sqrt((1-w)**2 + w**2)``.

    Only correctly rounded IEEE operations (``s**0.75`` as ``sqrt(s) * sqrt(sqrt(s))``: ``pow`` is not correctly
    rounded in every libm), so the order, and the keys, are the same on every machine.
    """
    s = np.sqrt((1.0 - w) ** 2 + w**2)
    root = np.sqrt(s)
    return centre[None, :] + (mixed - centre[None, :]) / (root * np.sqrt(root))[:, None]


def build_pool(master: bytes, task: TaskConfig, x_train: np.ndarray, y_train: np.ndarray, *, size: int,
               dataset_fingerprint: str, pool_id: str = POOL_ID) -> KeyPool:
    """The pool: ``size`` keys from two alike vendor inputs of different classes each (see the module docstring).

    The style is the pool id's (:func:`pool_style`): ``pool1`` natural-mix/v1, ``pool2`` /v2, ``pool3`` /v3.
    """
    style = pool_style(pool_id)
    y = np.asarray(y_train, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise KeyFileError("the key pool needs training inputs of at least two classes")
    key = hkdf_key(master, f"key-pool/{pool_id}")
    first = uniform_ints(key, "source/a", size, len(y))
    grid = _grid_ints(x_train, task)
    second = _near_partners(key, first, y, grid)
    spread = task.domain == "image" and style in _SPREAD_STYLES
    low_w, high_w = (IMAGE_MIX_LOW, IMAGE_MIX_HIGH) if spread else (MIX_LOW, MIX_HIGH)
    w = low_w + (high_w - low_w) * (uniform_ints(key, "weight", size, 65536).astype(np.float64) / 65535.0)
    flat = np.asarray(x_train, dtype=np.float64).reshape(len(y), -1)
    mixed = (1.0 - w)[:, None] * flat[first] + w[:, None] * flat[second]
    values = _snap_values(x_train)
    if task.domain == "image":
        tie = uniform_ints(key, "rank-ties", size * flat.shape[1], 2**32).reshape(size, -1)
        order = _spread_order(mixed, w, _grid_mean(grid, task)) if spread else mixed
        mixed = _rank_matched(order, flat[first], flat[second], w, tie, values)
    elif style != KEY_STYLE:
        mixed = _crossover(key, flat[first], flat[second], w)  # every value is one of its sources': nothing to snap
    elif values is not None:
        mixed = _snap(mixed, values)
    low, high = task.bounds(flat=True)
    inputs = np.clip(mixed, low, high).reshape((size, *task.input_shape)).astype(task.input_dtype)
    return KeyPool(pool_id, inputs, label_sets=np.stack([y[first], y[second]], axis=1), sources=np.stack([first, second], axis=1),
                   weights=w, dataset_fingerprint=dataset_fingerprint, style=style)


# -- storage ---------------------------------------------------------------------------------------


def pool_path(keys_dir: Path, pool_id: str = POOL_ID) -> Path:
    return Path(keys_dir) / f"{pool_id}.keypool"


def _header(pool_id: str, master: bytes) -> bytes:
    key_id = hashlib.sha256(hkdf_key(master, f"key-pool/{pool_id}/storage")).hexdigest()[:16]
    return json.dumps({"format": _FORMAT, "id": pool_id, "key_id": key_id}, sort_keys=True).encode()


def save_pool(path: Path, master: bytes, pool: KeyPool) -> None:
    """Write the pool encrypted (AES-256-GCM, mode 0600), atomically."""
    meta = {"id": pool.id, "style": pool.style, "shape": list(pool.inputs.shape), "dtype": pool.inputs.dtype.str,
            "k": pool.label_set_size, "dataset_fingerprint": pool.dataset_fingerprint, "digest": pool.digest()}
    raw_meta = json.dumps(meta, sort_keys=True).encode()
    body = b"".join([struct.pack(">I", len(raw_meta)), raw_meta, np.ascontiguousarray(pool.inputs).tobytes(),
                     np.ascontiguousarray(pool.label_sets, dtype=">i4").tobytes(), np.ascontiguousarray(pool.sources, dtype=">i8").tobytes(),
                     np.ascontiguousarray(pool.weights, dtype=">f8").tobytes()])
    nonce = os.urandom(12)
    key = hkdf_key(master, f"key-pool/{pool.id}/storage")
    atomic_write_bytes(path, _MAGIC + nonce + AESGCM(key).encrypt(nonce, body, _header(pool.id, master)), mode=0o600)


def load_pool(path: Path, master: bytes, pool_id: str = POOL_ID) -> KeyPool:
    """Decrypt a stored pool; :class:`KeyFileError` when it is damaged, forged or from another master secret."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key pool {path} is missing") from None
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 28:
        raise KeyFileError(f"{path} is not a tracer key pool")
    nonce, ct = blob[len(_MAGIC) : len(_MAGIC) + 12], blob[len(_MAGIC) + 12 :]
    try:
        body = AESGCM(hkdf_key(master, f"key-pool/{pool_id}/storage")).decrypt(nonce, ct, _header(pool_id, master))
    except InvalidTag:
        raise KeyFileError(f"key pool {path} does not decrypt with this master secret (damaged, or from another workspace)",
                           hint="restore keys/ from your backup") from None
    (n,) = struct.unpack(">I", body[:4])
    meta = loads_strict(body[4 : 4 + n])
    shape, dtype, k = tuple(int(s) for s in meta["shape"]), np.dtype(meta["dtype"]), int(meta["k"])
    size = shape[0]
    offsets = np.cumsum([4 + n, int(np.prod(shape)) * dtype.itemsize, size * k * 4, size * 2 * 8, size * 8])
    if offsets[-1] != len(body):
        raise KeyFileError(f"key pool {path} has the wrong length (damaged)")
    parts = [body[a:b] for a, b in itertools.pairwise(offsets)]
    pool = KeyPool(str(meta["id"]), np.frombuffer(parts[0], dtype=dtype).reshape(shape).copy(),
                   label_sets=np.frombuffer(parts[1], dtype=">i4").astype(np.int64).reshape(size, k),
                   sources=np.frombuffer(parts[2], dtype=">i8").astype(np.int64).reshape(size, 2),
                   weights=np.frombuffer(parts[3], dtype=">f8").astype(np.float64), dataset_fingerprint=str(meta["dataset_fingerprint"]),
                   style=str(meta["style"]))
    if pool.digest() != meta["digest"]:
        raise KeyFileError(f"key pool {path} does not match its own digest (damaged)")
    return pool
