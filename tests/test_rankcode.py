"""The rank code (rank-code/v1): derivation (golden vectors, exact uniformity), the exact null, the read.

The end-to-end checks (issued copies carry it, identify reads it, it survives soft-label distillation
into another architecture, old records are not read on it) run on the shared issued digits workspace.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tracer.fingerprint import rankcode
from tracer.fingerprint.probes import codeword, codewords
from tracer.fingerprint.stats import bonferroni_pair, mahonian_counts, rank_code_tails

MASTER = bytes(range(32))


# -- derivation: golden vectors and an independent reference -------------------------------------------------


def _reference_decode(k: int, n: int) -> list[int]:
    """The Lehmer code k of an order of n items (factorial number system), written out without numpy."""
    free, out = list(range(n)), []
    for i in range(n):
        f = math.factorial(n - 1 - i)
        out.append(free.pop(k // f))
        k %= f
    return out  # out[r] = the item at rank r


def test_golden_rank_orders():
    ranks = rankcode.rank_orders(MASTER, "acme-01", 10)
    assert ranks[0].tolist() == [-1, 8, 5, 1, 0, 3, 7, 4, 6, 2]
    assert ranks[9].tolist() == [8, 2, 6, 4, 3, 1, 5, 0, 7, -1]
    assert rankcode.rank_orders(MASTER, "acme-01", 3).tolist() == [[-1, 1, 0], [1, -1, 0], [1, 0, -1]]
    assert rankcode.rank_commitment(MASTER, "acme-01", 10) == "ceb47aad0fb14836ff546680b4a258cc3ef1a1b6af214ca107001af6e3399086"
    assert rankcode.rank_orders(MASTER, " ACME-01", 10).tolist() == ranks.tolist()  # the canonical customer id


def test_rank_orders_are_the_codeword_streams_lehmer_codes():
    """Derived exactly as a codeword over (C-1)! values (golden vectors in test_derive), then decoded as a Lehmer code."""
    codes = codeword(MASTER, "acme-01", rankcode.SET_ID, 10, math.factorial(9))
    assert codes.tolist() == [135683, 189755, 111527, 209599, 207027, 274950, 313225, 89613, 149595, 308583]
    assert codewords(MASTER, ["acme-01"], rankcode.SET_ID, 10, math.factorial(9)).tolist() == [codes.tolist()]  # not cut to int16
    ranks = rankcode.rank_orders(MASTER, "acme-01", 10)
    for y in range(10):
        wrong = [j for j in range(10) if j != y]
        by_rank = _reference_decode(int(codes[y]), 9)
        assert [int(ranks[y, wrong[w]]) for w in by_rank] == list(range(9))


def test_lehmer_decoding_is_a_bijection():
    """Every one of the 4! codes of a 5-class task gives a different order: uniform codes give uniform orders."""
    codes = np.arange(24)[:, None].repeat(5, axis=1)
    ranks = rankcode.lehmer_ranks(codes, 5)
    for y in range(5):
        orders = {tuple(np.delete(r[y], y).tolist()) for r in ranks}
        assert orders == set(itertools.permutations(range(4)))


def test_rank_matrix_uses_the_encrypted_cache(tmp_path):
    ids = [f"c{i}" for i in range(50)]
    first = rankcode.rank_matrix(MASTER, ids, 10, cache_dir=tmp_path)
    assert any(tmp_path.iterdir())  # written...
    assert np.array_equal(rankcode.rank_matrix(MASTER, ids[::-1], 10, cache_dir=tmp_path), first[::-1])  # ...and read back
    assert np.array_equal(first, rankcode.rank_matrix(MASTER, ids, 10))


def test_rank_orders_are_per_customer_and_per_class():
    a, b = rankcode.rank_orders(MASTER, "acme", 10), rankcode.rank_orders(MASTER, "globex", 10)
    assert not np.array_equal(a, b)
    for r in (a, b):
        assert (np.diag(r) == -1).all()
        for y in range(10):
            assert sorted(np.delete(r[y], y).tolist()) == list(range(9))
    assert rankcode.rank_matrix(MASTER, ["acme", "globex"], 10).tolist() == [a.tolist(), b.tolist()]
    for bad in (2, 14):
        with pytest.raises(ValueError):
            rankcode.rank_orders(MASTER, "acme", bad)


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


def test_the_read_set_is_cached_encrypted_and_reloaded_when_damaged(tmp_path):
    from tracer.identify.rank_channel import read_set

    x = np.arange(24, dtype=np.float32).reshape(3, 2, 4) / 7
    y = np.array([2, 0, 1])
    calls = []

    def load():
        calls.append(1)
        return x, y

    for _ in range(2):
        gx, gy = read_set(MASTER, tmp_path, load)
        assert np.array_equal(gx, x) and gx.dtype == x.dtype and gy.tolist() == [2, 0, 1]
    assert len(calls) == 1  # the second read came from the cache
    path = tmp_path / "rank-read-set.bin"
    blob = path.read_bytes()
    assert x.tobytes() not in blob and path.stat().st_mode & 0o777 == 0o600  # the vendor's data, encrypted
    assert read_set(bytes(32), tmp_path, load)[1].tolist() == [2, 0, 1] and len(calls) == 2  # another master: not read
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    assert np.array_equal(read_set(MASTER, tmp_path, load)[0], x) and len(calls) == 3  # damaged: loaded again
    assert np.array_equal(read_set(MASTER, None, load)[0], x) and len(calls) == 4  # no cache folder
