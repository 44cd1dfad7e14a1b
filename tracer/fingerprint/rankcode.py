"""The rank code: a per-customer order of the wrong classes, carried by natural inputs, read from scores.

Why: the keys of a codeword are inputs a distiller never sends, so a student trained on a copy's
answers to natural queries does not learn them (bench/results/extraction_digits_natural.txt). The
rank code lives on the natural inputs themselves. For each class y, customer c has a secret order
pi_c,y of the C-1 wrong classes (:func:`rank_orders`, an exactly uniform permutation per class from c's
own stream). The copy is fine-tuned so that on inputs of class y its small wrong-class mass (``eps``,
``[embedding] rank_code``) falls off along that order, with weights exp(-DECAY x rank)
(:func:`coded_mass`). The argmax is the base model's, so the clean gate is not at stake; that mass is
exactly the "dark knowledge" a soft-label student copies (bench/results/darkcode_digits.txt).

Reading it needs scores (logits or probabilities: an ONNX file, or an API that returns them):
:func:`class_profiles` averages the suspect's centred log-scores over the vendor's validation inputs
of each class; :func:`concordant_pairs` counts, per customer, the pairs of wrong classes the profile
orders as that customer's code does. The exact null and its p-value are in
:func:`tracer.fingerprint.stats.rank_code_tails`. Nothing here looks at which customer is asked about
before the count: the profiles are a function of the suspect and the vendor's data alone.

Style ``rank-code/v1``: one integer per class, exactly uniform in [0, (C-1)!), from the customer's
stream with label ``codeword/rankcode-v1`` (the codewords' own derivation, so the encrypted codeword
cache holds them too: :func:`tracer.fingerprint.cache.codeword_matrix`), read as the Lehmer code of a
permutation (a bijection, so the order is exactly uniform); DECAY 0.2; 3 to 13 classes ((C-1)! must
fit one 32-bit draw). A copy carries the code when its issuance record has a ``rank_code`` entry;
older copies are never read on it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..keys.derive import hkdf_key, normalize_customer_id
from .cache import codeword_matrix
from .stats import rank_code_tails

__all__ = ["RANK_CODE_STYLE", "DECAY", "MIN_CLASSES", "MAX_CLASSES", "SET_ID", "applicable", "lehmer_ranks", "rank_orders", "rank_matrix",
           "coded_mass", "rank_commitment", "record", "log_scores", "class_profiles", "concordant_pairs", "rank_p_values"]

RANK_CODE_STYLE = "rank-code/v1"
DECAY = 0.2  # the coded mass on the wrong class of rank r is proportional to exp(-DECAY r)
MIN_CLASSES = 3  # two wrong classes at least: one pair per class
MAX_CLASSES = 13  # (C-1)! orders must fit one 32-bit uniform draw
SET_ID = "rankcode-v1"  # derivation label codeword/<SET_ID>, and the name of its codeword cache


def applicable(num_classes: int) -> bool:
    """Whether a task of ``num_classes`` classes can carry a rank code."""
    return MIN_CLASSES <= num_classes <= MAX_CLASSES


def _check(num_classes: int) -> None:
    if not applicable(num_classes):
        raise ValueError(f"a rank code needs {MIN_CLASSES} to {MAX_CLASSES} classes, not {num_classes}")


def lehmer_ranks(codes: np.ndarray, num_classes: int) -> np.ndarray:
    """[N, C, C] int16 ranks from [N, C] Lehmer codes in [0, (C-1)!): R[., y, j] = rank of wrong class j for class y; -1 on the diagonal.

    Code k of class y gives digits d_i = (k // (n-1-i)!) mod (n-i), n = C-1; the wrong class at rank i
    is the d_i-th of those not yet placed (in increasing class order). k <-> order is a bijection.
    """
    _check(num_classes)
    n, codes = num_classes - 1, np.asarray(codes, dtype=np.int64)
    out = np.full((len(codes), num_classes, num_classes), -1, dtype=np.int16)
    rows = np.arange(len(codes))
    for y in range(num_classes):
        wrong = np.array([j for j in range(num_classes) if j != y])
        free = np.ones((len(codes), n), dtype=bool)
        k = codes[:, y]
        for i in range(n):
            digit = (k // math.factorial(n - 1 - i)) % (n - i)
            pick = np.argmax(np.cumsum(free, axis=1) == (digit + 1)[:, None], axis=1)  # the digit-th free slot
            free[rows, pick] = False
            out[rows, y, wrong[pick]] = i
    return out


def rank_matrix(master: bytes, customer_ids: Sequence[str], num_classes: int, *, cache_dir: Path | None = None) -> np.ndarray:
    """[N, C, C] int16: each customer's rank code (:func:`rank_orders`), from the encrypted codeword cache where given."""
    _check(num_classes)
    codes = codeword_matrix(master, [normalize_customer_id(c) for c in customer_ids], SET_ID, num_classes,
                            math.factorial(num_classes - 1), folder=cache_dir)
    return lehmer_ranks(codes, num_classes)


def rank_orders(master: bytes, customer_id: str, num_classes: int) -> np.ndarray:
    """[C, C] int16: R[y, j] = rank of wrong class j on inputs of class y (0: the most likely wrong class); R[y, y] = -1.

    Per class, an exactly uniform order of the C-1 wrong classes from the customer's stream:
    independent across classes and customers.
    """
    return rank_matrix(master, [customer_id], num_classes)[0]


def coded_mass(ranks: np.ndarray) -> np.ndarray:
    """[C, C] float64: W[y] = how the copy spreads its wrong-class mass on inputs of class y (rows sum to 1; W[y, y] = 0)."""
    w = np.where(ranks >= 0, np.exp(-DECAY * ranks.astype(np.float64)), 0.0)
    return w / w.sum(axis=1, keepdims=True)


def rank_commitment(master: bytes, customer_id: str, num_classes: int) -> str:
    """A hiding, binding commitment to the customer's rank code, for the issuance record (as ``trigger_commitment``)."""
    cid = normalize_customer_id(customer_id)
    salt = hkdf_key(master, f"commitment/{cid}")
    h = hashlib.sha256(b"tracer-rank-commitment/v1\0" + salt)
    h.update(rank_orders(master, cid, num_classes).astype(">i2").tobytes())
    return h.hexdigest()


def record(master: bytes, customer_id: str, num_classes: int, eps: float) -> dict:
    """The ``rank_code`` entry of an issuance record."""
    return {"style": RANK_CODE_STYLE, "eps": eps, "decay": DECAY,
            "commitment": rank_commitment(master, customer_id, num_classes)}


def log_scores(out: np.ndarray) -> np.ndarray | None:
    """The suspect's outputs as log-scores up to a per-row constant (float64), or None if they are not class scores.

    Probabilities (rows of non-negative numbers summing to 1) are logged, floored at 1e-300; anything
    else of shape [n, C] is taken as logits. The order of the wrong classes is all that is read, and
    centring removes the per-row constant, so logits and log-probabilities read the same.
    """
    s = np.asarray(out, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < MIN_CLASSES or not np.all(np.isfinite(s)):
        return None
    if s.min() >= 0 and np.allclose(s.sum(axis=1), 1.0, atol=1e-3):
        return np.log(np.maximum(s, 1e-300))
    return s


def class_profiles(scores: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(profiles [C, C], read [C] bool): mean centred log-scores over the inputs of each class, and which classes have inputs."""
    s = scores - scores.mean(axis=1, keepdims=True)
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=num_classes)[:num_classes]
    sums = np.zeros((num_classes, num_classes))
    np.add.at(sums, y, s)
    read = counts > 0
    return sums / np.maximum(counts, 1)[:, None], read


def concordant_pairs(profiles: np.ndarray, read: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Per customer (ranks [N, C, C]), the pairs of wrong classes, over the classes read, that the profiles order as its code.

    Pair (a, b) of wrong classes of class y is concordant when the profile puts the class of lower
    rank strictly higher; ties are discordant (conservative, see the stats module).
    """
    c = profiles.shape[0]
    a, b = np.triu_indices(c, 1)
    total = np.zeros(len(ranks), dtype=np.int64)
    for y in np.flatnonzero(read):
        keep = (a != y) & (b != y)
        pa, pb = a[keep], b[keep]
        sign_profile = np.sign(profiles[y, pa] - profiles[y, pb])  # +1: a above b
        sign_code = np.sign(ranks[:, y, pb].astype(np.int64) - ranks[:, y, pa])  # +1: a ranked before b
        total += ((sign_profile[None, :] * sign_code) > 0).sum(axis=1)
    return total


def rank_p_values(concordant: np.ndarray, *, num_classes: int, classes_read: int) -> tuple[np.ndarray, np.ndarray]:
    """(p, log10 p) per customer: the exact Mahonian tail P[S >= concordant] over ``classes_read`` classes."""
    tails, logs = rank_code_tails(num_classes - 1, classes_read)
    idx = np.minimum(np.asarray(concordant, dtype=np.int64), len(tails) - 1)
    return tails[idx], logs[idx]
