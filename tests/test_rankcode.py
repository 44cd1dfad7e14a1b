"""The rank code (rank-code/v1): derivation (golden vectors, exact uniformity), the exact null, the read.

The end-to-end checks (issued copies carry it, identify reads it, it survives soft-label distillation
into another architecture, old records are not read on it) run on the shared issued digits workspace.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pytest

from tracer.fingerprint import rankcode
from tracer.fingerprint.stats import bonferroni_pair, mahonian_counts, rank_code_tails
from tracer.keys.derive import customer_key, uniform_permutation

MASTER = bytes(range(32))


# -- derivation: golden vectors and an independent reference -------------------------------------------------


def _reference_permutation(key: bytes, label: str, n: int) -> list[int]:
    """Fisher-Yates over SHAKE-256(key || 0 || label) words, written out without numpy."""
    stream = hashlib.shake_256(key + b"\0" + label.encode()).digest(4 * n + 4096)
    words = (int.from_bytes(stream[i : i + 4], "big") for i in range(0, len(stream), 4))
    out = list(range(n))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (2**32 // bound) * bound
        w = next(x for x in words if x < limit)
        j = w % bound
        out[i], out[j] = out[j], out[i]
    return out


def test_golden_permutations_and_rank_orders():
    key = customer_key(MASTER, "acme-01")
    assert uniform_permutation(key, "rank-code/v1/class/0", 9).tolist() == [1, 0, 3, 2, 7, 5, 6, 8, 4]
    assert uniform_permutation(b"k" * 32, "x", 20).tolist() == [10, 11, 3, 0, 5, 16, 8, 6, 17, 9, 13, 1, 7, 12, 14, 18, 4, 15, 2, 19]
    ranks = rankcode.rank_orders(MASTER, "acme-01", 10)
    assert ranks[0].tolist() == [-1, 1, 0, 3, 2, 7, 5, 6, 8, 4]
    assert ranks[9].tolist() == [3, 2, 1, 0, 8, 5, 4, 6, 7, -1]
    assert rankcode.rank_orders(MASTER, "acme-01", 3).tolist() == [[-1, 1, 0], [1, -1, 0], [0, 1, -1]]
    assert rankcode.rank_commitment(MASTER, "acme-01", 10) == "b67435cabe6b66846b4ec5dece824445b339f3e8b450f241c58924345af904e8"
    assert rankcode.rank_orders(MASTER, " ACME-01", 10).tolist() == ranks.tolist()  # the canonical customer id


@pytest.mark.parametrize("n", [1, 2, 3, 9, 40])
def test_permutation_matches_the_reference(n):
    for label in ("a", "b", "rank-code/v1/class/3"):
        assert uniform_permutation(b"\x07" * 32, label, n).tolist() == _reference_permutation(b"\x07" * 32, label, n)


def test_permutations_are_uniform():
    """All 3! orders equally often over 6000 labels (chi-square with 5 degrees of freedom, p > 1e-4)."""
    seen = {}
    for i in range(6000):
        perm = tuple(uniform_permutation(b"\x01" * 32, f"u/{i}", 3).tolist())
        seen[perm] = seen.get(perm, 0) + 1
    assert sorted(seen) == sorted(itertools.permutations(range(3)))
    chi2 = sum((v - 1000) ** 2 / 1000 for v in seen.values())
    assert chi2 < 25.7


def test_rank_orders_are_per_customer_and_per_class():
    a, b = rankcode.rank_orders(MASTER, "acme", 10), rankcode.rank_orders(MASTER, "globex", 10)
    assert not np.array_equal(a, b)
    for r in (a, b):
        assert (np.diag(r) == -1).all()
        for y in range(10):
            assert sorted(np.delete(r[y], y).tolist()) == list(range(9))
    assert rankcode.rank_matrix(MASTER, ["acme", "globex"], 10).tolist() == [a.tolist(), b.tolist()]
    with pytest.raises(ValueError):
        rankcode.rank_orders(MASTER, "acme", 2)


def test_coded_mass_falls_off_along_the_order():
    ranks = rankcode.rank_orders(MASTER, "acme", 10)
    w = rankcode.coded_mass(ranks)
    assert np.allclose(w.sum(axis=1), 1.0) and (np.diag(w) == 0).all()
    for y in range(10):
        order = np.argsort(np.where(ranks[y] >= 0, ranks[y], 99))[:9]
        assert (np.diff(w[y, order]) < 0).all()
        assert w[y, order[0]] / w[y, order[1]] == pytest.approx(math.exp(rankcode.DECAY))


# -- the exact null ----------------------------------------------------------------------------------------


def _inversions(p) -> int:
    return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p)))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_mahonian_counts_match_enumeration(n):
    counts = [0] * (n * (n - 1) // 2 + 1)
    for p in itertools.permutations(range(n)):
        counts[_inversions(p)] += 1
    assert mahonian_counts(n) == counts


def test_rank_tails_match_enumeration():
    one = mahonian_counts(4)
    pmf = np.zeros(13)
    for a, b in itertools.product(range(7), repeat=2):
        pmf[a + b] += one[a] * one[b]
    pmf /= 24**2
    tails, logs = rank_code_tails(4, 2)
    want = np.concatenate([pmf[::-1].cumsum()[::-1], [0.0]])
    assert tails == pytest.approx(want, rel=1e-12)
    assert tails[0] == 1.0 and tails[-1] == 0.0
    assert logs[1:-1] == pytest.approx(np.log10(want[1:-1]), rel=1e-12)
    # far tails stay finite in log10 where the float underflows: all 360 pairs on 10 classes of 9 wrong classes
    assert rank_code_tails(9, 10)[1][360] == pytest.approx(-10 * math.log10(math.factorial(9)))


def _brute_concordant(profile: np.ndarray, ranks: np.ndarray, read: np.ndarray) -> int:
    c, total = len(profile), 0
    for y in range(c):
        if not read[y]:
            continue
        wrong = [j for j in range(c) if j != y]
        for a, b in itertools.combinations(wrong, 2):
            hi, lo = (a, b) if ranks[y, a] < ranks[y, b] else (b, a)
            total += profile[y, hi] > profile[y, lo]
    return total


def test_concordant_pairs_match_a_direct_count_and_ties_count_as_discordant():
    g = np.random.default_rng(3)
    ranks = rankcode.rank_matrix(MASTER, [f"c{i}" for i in range(20)], 6)
    profile = np.round(g.standard_normal((6, 6)), 1)  # rounding makes ties
    profile[2, :] = 0.0  # a class whose scores are all equal: no concordant pair
    read = np.array([True, True, True, False, True, True])
    got = rankcode.concordant_pairs(profile, read, ranks)
    assert got.tolist() == [_brute_concordant(profile, r, read) for r in ranks]


def test_simulated_null_is_valid():
    """A fixed suspect (with ties) against uniform customer codes: P[p <= u] <= u (with binomial slack)."""
    g = np.random.default_rng(11)
    scores = np.round(g.standard_normal((200, 10)), 1)
    y = np.repeat(np.arange(10), 20)
    profile, read = rankcode.class_profiles(scores, y, 10)
    ranks = rankcode.rank_matrix(MASTER, [f"null-{i}" for i in range(4000)], 10)
    p, _ = rankcode.rank_p_values(rankcode.concordant_pairs(profile, read, ranks), num_classes=10, classes_read=10)
    for u in (0.5, 0.1, 0.01):
        assert (p <= u).mean() <= u + 3 * math.sqrt(u * (1 - u) / len(p))
    assert p.min() > 1e-5


def test_bonferroni_pair():
    p, lp = bonferroni_pair(np.array([1e-10, 0.3, 0.3]), np.log10([1e-10, 0.3, 0.3]),
                            np.array([0.2, 1e-20, 0.9]), np.log10([0.2, 1e-20, 0.9]), np.array([True, True, False]))
    assert p == pytest.approx([2e-10, 2e-20, 0.3])
    assert lp == pytest.approx(np.log10([2e-10, 2e-20, 0.3]))


# -- reading scores ----------------------------------------------------------------------------------------


def test_log_scores_accepts_logits_and_probabilities_and_refuses_class_indices():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    a, b = rankcode.log_scores(logits), rankcode.log_scores(probs)
    assert np.allclose(a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True))
    assert rankcode.log_scores(np.array([0, 2, 1])) is None
    assert rankcode.log_scores(np.array([[0.0, np.inf, 1.0]])) is None
    assert rankcode.log_scores(np.zeros((3, 2))) is None  # two classes: no pairs to read


def test_class_profiles_average_centred_scores_per_class():
    scores = np.array([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 3.0, 0.0]])
    profile, read = rankcode.class_profiles(scores, np.array([0, 0, 1]), 3)
    assert read.tolist() == [True, True, False]
    assert profile[0] == pytest.approx([1.0, -0.5, -0.5])
    assert profile[1] == pytest.approx([-1.0, 2.0, -1.0])
