"""The statistics of identification, exact or conservative by construction.

Null hypothesis H0(c): "the suspect model was not derived from customer c's
copy". Under H0(c) the model's answers are independent of c's secret codeword.

Noise probe sets (one class count C for every probe)
    c's codeword is exactly uniform over the C classes, so each probe agrees
    with probability exactly 1/C, independently: matches ~ Binomial(n, 1/C).

Keys with a label set per key (in-distribution keys)
    Key i carries a label set S_i of k_i >= 2 classes (for instance the base
    model's top-k on the key, or the source classes of a mixture), fixed
    before any codeword exists and independently of every codeword. c's label
    on key i is uniform on S_i, drawn from c's own stream. Take any model not
    derived from c and let a_i be its answer on key i (random or not; any
    class, or no class at all). The answers are a function of the model and
    the key inputs, so they are independent of c's labels, and then

        P[a_i = label_i | a] = |{a_i} ∩ S_i| / k_i <= 1/k_i,

    independently across keys (c's labels are independent across keys). An
    answer outside S_i matches with probability 0, which only helps. So the
    number of matches X is stochastically dominated by the Poisson-binomial
    sum of independent Bernoulli(1/k_i), and its upper tail P[PB >= m] is a
    valid p-value: P_H0[p <= u] <= u for every u. When every k_i = C this is
    the binomial tail above, to the last bit. In a sequential probe the same
    holds given the past (the next key's label is a fresh stream output that
    the endpoint has not seen): see :mod:`tracer.probing.sequential`.

    Sharper, and just as exact (what tracer uses for a natural-mix pool): since
    the answers a are independent of c's labels, condition on them. The keys
    answered inside their label set, n_in of them, match with probability
    exactly 1/k_i each, independently, and the others never match; so the
    matches among in-set answers are exactly Poisson-binomial over those keys
    (Binomial(n_in, 1/2) for the pool), and the trials reported are n_in, the
    same for every customer (S_i does not depend on the customer).

The rank code (:mod:`.rankcode`: a second channel, read from scores)
    For each class y, c's copies are trained to order the wrong classes of
    inputs of class y along a secret permutation pi_c,y, uniform over the
    (C-1)! orders and drawn from c's own stream, independently per class. The
    suspect's mean centred log-scores over the vendor's validation inputs of
    class y give an order of its own; count the pairs of wrong classes that it
    orders as pi_c,y does (a tie counts as discordant). For a model not derived
    from c that order is independent of pi_c,y, so the count is the number of
    inversions of a uniform permutation (after breaking the suspect's ties, which
    can only add concordant pairs): the Mahonian distribution on 0..(C-1)(C-2)/2.
    The classes are independent, so the total over the G classes read has the
    G-fold convolution, and P[total >= observed] (:func:`rank_code_tails`, exact
    integers over ((C-1)!)^G) is a valid p-value.

* Combining the two channels of one customer: min(1, 2 min(p_keys, p_rank))
  (Bonferroni), a valid p-value under any dependence between them; a channel not
  read (no rank code in the copy, no scores) is left out without the factor 2,
  since whether it is read does not depend on c's secrets.
* Fixed-size test (``tracer identify``): the exact upper tail P[X >= m] --
  :func:`binomial_tails` for noise probe sets, :func:`poisson_binomial_tails`
  (exact integers where cheap, else a floating-point path whose documented
  error bound is added upward, so it is never below the true tail) for keys.
* Several customers: Holm's step-down procedure over all issued customers
  controls the family-wise error rate at alpha under any dependence: the
  probability of naming *any* innocent customer is at most alpha.

THE TRAP: no key and no label set may be selected by looking at codeword
values. The argument above needs S_i and the set of keys scored to be
independent of c's labels. Keeping, say, the keys on which a given label
"survived best" makes the kept labels those a model tends to answer: in a
simulation it turned a true 1/3 match rate into 0.42 (the one kept as a test in
tests/test_stats_keys.py, keeping the best quarter of a pool: 0.46, and half of
the innocent customers below p = 0.01). Any filtering of candidate keys must be
label-agnostic (for instance scored on an average over all labels of S_i),
done once, before any customer exists, and the same for every customer.

What may look at a copy: the issuer's gates (clean accuracy, keys learnt, key
separation: :mod:`tracer.separation`) choose which of customer c's tries ships.
Every try carries c's labels on the same keys and S_i, so the choice is a
function of c's copy only; a model not derived from that copy is still
independent of c's labels, and the bound above holds for it unchanged.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["binomial_tail", "binomial_tails", "bonferroni_pair", "holm", "mahonian_counts", "rank_code_tails", "log10_tail", "key_groups", "poisson_binomial_log10_tail",
           "poisson_binomial_log10_tails", "poisson_binomial_tail", "poisson_binomial_tails"]


def binomial_tails(n: int, num_classes: int) -> np.ndarray:
    """Array t with t[m] = P[Binomial(n, 1/C) >= m] for m = 0..n+1 (t[n+1] = 0), exact then rounded.

    Computed with exact integers: P[X = k] = binom(n, k) * (C-1)**(n-k) / C**n.
    Values below the float64 range round to 0.0; use :func:`log10_tail` to print them.
    """
    if n < 0 or num_classes < 2:
        raise ValueError("need n >= 0 and C >= 2")
    c = num_classes
    denom = c**n
    tails = np.zeros(n + 2, dtype=np.float64)
    acc = 0
    for k in range(n, -1, -1):
        acc += math.comb(n, k) * (c - 1) ** (n - k)
        tails[k] = float(Fraction(acc, denom))
    return tails


def binomial_tail(m: int, n: int, num_classes: int) -> float:
    """P[Binomial(n, 1/C) >= m], exact (rounded to the nearest float)."""
    if m <= 0:
        return 1.0
    if m > n:
        return 0.0
    c = num_classes
    acc = sum(math.comb(n, k) * (c - 1) ** (n - k) for k in range(m, n + 1))
    return float(Fraction(acc, c**n))


def log10_tail(m: int, n: int, num_classes: int) -> float:
    """log10 P[Binomial(n, 1/C) >= m], exact even where the float p-value underflows."""
    if m <= 0:
        return 0.0
    if m > n:
        return -math.inf
    c = num_classes
    acc = sum(math.comb(n, k) * (c - 1) ** (n - k) for k in range(m, n + 1))
    return math.log10(acc) - n * math.log10(c)  # math.log10 takes arbitrarily large ints


def holm(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Boolean mask of hypotheses rejected by Holm's step-down procedure at FWER alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    n = p.size
    order = np.argsort(p, kind="stable")
    rejected = np.zeros(n, dtype=bool)
    for rank, idx in enumerate(order):
        if p[idx] <= alpha / (n - rank):
            rejected[idx] = True
        else:
            break
    return rejected


# -- Poisson-binomial: keys whose null match probability 1/k_i varies per key ------------------------------
#
# X = sum_i Bernoulli(1/k_i). The keys take few distinct k, so X is a sum of a few binomials: its
# probability generating function is prod_g ((k_g - 1) + z)^{n_g} / prod_g k_g^{n_g}, with n_g keys of size
# k_g. Exact path: the numerator polynomial in Python integers (groups multiplied by packing each
# polynomial into one integer, "Kronecker substitution"); every tail is then an exact fraction, rounded
# once. Float path (large n and several groups, where the integers get slow): each group's distribution and
# the largest group's tails from exact integers, then the other groups convolved in log space
# (a log-sum-exp per output, so tails far below the float range keep their relative accuracy), and a
# rigorous bound on the rounding error added upward: the result is never below the true tail.

#: The exact path packs polynomials into one integer of about (n + 1) * n * log2(k) bits; above this, float.
EXACT_BITS = 1_500_000

_U = 2.0**-53  # unit roundoff of float64


def key_groups(ks: ArrayLike) -> list[tuple[int, int]]:
    """The keys' label-set sizes as sorted (k, number of keys with that k) pairs; every k an integer >= 2."""
    arr = np.asarray(ks)
    if arr.ndim != 1:
        raise ValueError("ks must be a 1-D array of label-set sizes, one per key")
    if arr.size and not np.all(arr == np.floor(arr)):
        raise ValueError("label-set sizes must be integers")
    if np.any(arr < 2):
        raise ValueError("every key needs a label set of k >= 2 classes")
    values, counts = np.unique(arr.astype(np.int64), return_counts=True)
    return [(int(k), int(c)) for k, c in zip(values, counts)]


def _numerators(n: int, k: int) -> list[int]:
    """Coefficients of ((k - 1) + z)^n: out[j] = comb(n, j) (k - 1)^(n - j), the binomial's numerators."""
    out = [0] * (n + 1)
    comb, power = 1, 1
    for j in range(n, -1, -1):
        out[j] = comb * power
        comb = comb * j // (n - j + 1)  # comb(n, j - 1), exact
        power *= k - 1
    return out


def _int_convolve(a: list[int], b: list[int], bits: int) -> list[int]:
    """Exact product of two polynomials with nonnegative coefficients whose product's coefficients are < 2**bits."""
    width = bits // 8 + 1

    def pack(v: list[int]) -> int:
        return int.from_bytes(b"".join(x.to_bytes(width, "little") for x in v), "little")

    size = len(a) + len(b) - 1
    raw = (pack(a) * pack(b)).to_bytes(width * size, "little")
    return [int.from_bytes(raw[i * width:(i + 1) * width], "little") for i in range(size)]


def _exact_pmf_numerators(groups: list[tuple[int, int]]) -> tuple[list[int], int]:
    """(numerators N[j], denominator D) with P[X = j] = N[j] / D exactly."""
    poly, denom = [1], 1
    for k, n in groups:
        denom *= k**n  # bounds every coefficient of the partial product
        poly = _numerators(n, k) if len(poly) == 1 else _int_convolve(poly, _numerators(n, k), denom.bit_length())
    return poly, denom


def _suffix_sums(values: list[int]) -> list[int]:
    """acc[m] = sum(values[m:]) for m = 0..len(values)."""
    acc = [0] * (len(values) + 1)
    for m in range(len(values) - 1, -1, -1):
        acc[m] = acc[m + 1] + values[m]
    return acc


def _exact_cost_bits(groups: list[tuple[int, int]]) -> int:
    n = sum(c for _, c in groups)
    return 0 if len(groups) <= 1 else (n + 1) * sum(c * k.bit_length() for k, c in groups)


def _use_exact(groups: list[tuple[int, int]], exact: bool | None) -> bool:
    """``exact`` forces a path; by default one k (the binomial, which must equal binomial_tails) is exact."""
    if exact is not None:
        return exact
    return len(groups) <= 1 or _exact_cost_bits(groups) <= EXACT_BITS


def _log_correlate(ext: np.ndarray, w: np.ndarray) -> np.ndarray:
    """out[m] = log sum_i exp(ext[m + i] + w[i]) for m = 0..len(ext) - len(w), scaled per output (no underflow)."""
    win = np.lib.stride_tricks.sliding_window_view(ext, w.size)
    out = np.empty(win.shape[0])
    chunk = max(1, 2**16 // w.size)  # a cache-sized buffer, reused in place
    buf = np.empty((chunk, w.size))
    for s in range(0, win.shape[0], chunk):
        x = buf[: min(chunk, win.shape[0] - s)]
        np.add(win[s:s + chunk], w, out=x)
        top = x.max(axis=1)
        safe = np.where(np.isfinite(top), top, 0.0)  # an all -inf row stays -inf
        np.subtract(x, safe[:, None], out=x)
        np.exp(x, out=x)
        with np.errstate(divide="ignore"):
            out[s:s + chunk] = np.log(x.sum(axis=1)) + safe
    return out


def _log_pmf(n: int, k: int) -> np.ndarray:
    """log P[Binomial(n, 1/k) = j], j = 0..n, from the exact integer numerators."""
    return np.array([math.log(x) for x in _numerators(n, k)]) - n * math.log(k)


def _error_bound(groups: list[tuple[int, int]]) -> float:
    """Upper bound on |computed - true| of every natural-log tail of the float path (see _float_log_tails)."""
    n = sum(c for _, c in groups)
    big = 2.0 * n * math.log(max(k for k, _ in groups)) + 2.0  # every |log| handled is below this
    return 4.0 * len(groups) * _U * (6.0 * big + n + 16.0)


def _float_log_tails(groups: list[tuple[int, int]]) -> np.ndarray:
    """Natural-log tails log P[X >= m], m = 0..n+1, never below the truth (the error bound is added).

    Error bound (u = 2**-53; IEEE arithmetic; exp, log and math.log(int) within 4 ulp). Every
    log-probability handled lies in [-B, 0] with B = 2 n ln(max k) + 2. Inputs: the largest group's
    tails and the other groups' pmfs are logs of exact integer ratios, each off by at most
    about 6u(B + 1). One log-sum-exp convolution adds at most u(6B + n + 10): the additions and the
    shift by the maximum (u B each), exp of a number <= 0 (4u relative), a sum of <= n + 1 positive
    terms ((n + 1)u relative, even summed naively), terms that underflow in exp (each below e^-745 times
    the largest: (n + 1) e^-745 relative) and the final log and shift (u B). The log-sum-exp
    is 1-Lipschitz in its inputs, so errors add along the G - 1 convolutions: in total below
    G u (6B + n + 16). We add four times that (second-order terms, the log10 conversion), so the
    returned value is >= the true log tail. At n = 4096 keys and k <= 3 the margin is about 1e-10:
    a relative inflation of the p-value by 1 + 1e-10.
    """
    n = sum(c for _, c in groups)
    by_size = sorted(groups, key=lambda g: g[1], reverse=True)
    k_a, n_a = by_size[0]  # the largest group: its tails exactly, from integers
    tails_a = _suffix_sums(_numerators(n_a, k_a))
    log_tails_a = np.array([math.log(x) for x in tails_a[:n_a + 1]]) - n_a * math.log(k_a)
    pmf_b = np.zeros(1)  # the other groups' distribution, log space
    for k, c in by_size[1:]:
        step = _log_pmf(c, k)
        pad = np.full(step.size - 1, -np.inf)
        pmf_b = _log_correlate(np.concatenate([pad, pmf_b, pad]), step[::-1])
    n_b = pmf_b.size - 1
    # tail(m) = sum_j P_B(j) T_A(m - j), with T_A(x) = 1 for x <= 0 and 0 for x > n_a
    ext = np.concatenate([np.zeros(n_b), log_tails_a, np.full(n + 1 - n_a, -np.inf)])
    out = _log_correlate(ext, pmf_b[::-1])
    out[1:n + 1] = np.minimum(out[1:n + 1] + _error_bound(groups), 0.0)
    out[0], out[n + 1] = 0.0, -np.inf
    return out


def poisson_binomial_tails(ks: ArrayLike, *, exact: bool | None = None) -> np.ndarray:
    """Array t with t[m] = P[X >= m], m = 0..n+1 (t[n+1] = 0), X = sum of independent Bernoulli(1/ks[i]).

    Exact fractions rounded once where the integers are cheap (always when every k is equal: then
    it equals :func:`binomial_tails` bit for bit), else the float path, never below the true tail.
    ``exact`` forces a path (tests). Tails below the float64 range are 0.0 (only where the true tail is
    below about 5e-324, so no comparison with a level alpha / N changes); use
    :func:`poisson_binomial_log10_tails` to compare or print them.
    """
    groups = key_groups(ks)
    if not groups:
        return np.array([1.0, 0.0])
    if _use_exact(groups, exact):
        nums, denom = _exact_pmf_numerators(groups)
        return np.array([acc / denom for acc in _suffix_sums(nums)], dtype=np.float64)
    with np.errstate(under="ignore"):
        tails = np.exp(_float_log_tails(groups))
    # two ulps up: exp's own rounding, also among subnormals (< 2.2e-308), where the margin on the log
    # does not help because the float's relative precision drops; 0.0 stays 0.0 (true tail < 5e-324)
    up = np.nextafter(np.nextafter(tails, np.inf), np.inf)
    return np.where(tails > 0, np.minimum(up, 1.0), 0.0)


def poisson_binomial_log10_tails(ks: ArrayLike, *, exact: bool | None = None) -> np.ndarray:
    """log10 P[X >= m] for m = 0..n+1 (-inf at n+1), finite where the float tail underflows.

    Same paths as :func:`poisson_binomial_tails`; with every k equal it equals :func:`log10_tail` for each m.
    """
    groups = key_groups(ks)
    if not groups:
        return np.array([0.0, -math.inf])
    if not _use_exact(groups, exact):
        return _float_log_tails(groups) / math.log(10)
    nums, _ = _exact_pmf_numerators(groups)
    log_denom = sum(c * math.log10(k) for k, c in groups)
    acc = _suffix_sums(nums)
    logs = [min(0.0, math.log10(a) - log_denom) for a in acc[1:-1]]  # min: a tail near 1 never rounds above 0
    return np.array([0.0] + logs + [-math.inf], dtype=np.float64)


def _single_tail_numerator(m: int, groups: list[tuple[int, int]]) -> tuple[int, int]:
    """(numerator, denominator) of P[X >= m] exactly: the largest group's tails against the others' pmf."""
    by_size = sorted(groups, key=lambda g: g[1], reverse=True)
    k_a, n_a = by_size[0]
    tails_a = _suffix_sums(_numerators(n_a, k_a))  # tails_a[0] = k_a ** n_a
    others, denom_b = _exact_pmf_numerators(by_size[1:])
    num = sum(b * tails_a[min(max(m - j, 0), n_a + 1)] for j, b in enumerate(others))
    return num, denom_b * k_a**n_a


def poisson_binomial_tail(m: int, ks: ArrayLike) -> float:
    """P[X >= m], X = sum of independent Bernoulli(1/ks[i]): exact integers, rounded once to the nearest float.

    For checks and reports of one value: with three sizes at 4096 keys it takes seconds (the integers of
    the smaller groups' product); score many customers with :func:`poisson_binomial_log10_tails`.
    """
    groups = key_groups(ks)
    n = sum(c for _, c in groups)
    if m <= 0:
        return 1.0
    if m > n:
        return 0.0
    num, denom = _single_tail_numerator(m, groups)
    return num / denom


def poisson_binomial_log10_tail(m: int, ks: ArrayLike) -> float:
    """log10 P[X >= m] from exact integers, finite where the float tail underflows (as :func:`log10_tail`)."""
    groups = key_groups(ks)
    n = sum(c for _, c in groups)
    if m <= 0:
        return 0.0
    if m > n:
        return -math.inf
    num, _ = _single_tail_numerator(m, groups)
    return math.log10(num) - sum(c * math.log10(k) for k, c in groups)


# -- the rank code: sums of independent Mahonian counts ---------------------------------------------------


def mahonian_counts(n: int) -> list[int]:
    """out[k] = number of permutations of n items with exactly k inversions, k = 0..n(n-1)/2 (exact integers).

    Generating function prod_{i=1..n} (1 + z + ... + z^(i-1)); out sums to n!.
    """
    if n < 1:
        raise ValueError("need n >= 1 items")
    poly = [1]
    for i in range(2, n + 1):
        nxt = [0] * (len(poly) + i - 1)
        run = 0
        for k in range(len(nxt)):  # nxt[k] = sum(poly[k - i + 1 .. k]), a sliding window
            run += poly[k] if k < len(poly) else 0
            if k - i >= 0:
                run -= poly[k - i]
            nxt[k] = run
        poly = nxt
    return poly


@lru_cache(maxsize=64)
def rank_code_tails(items: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, log10 t) with t[m] = P[S >= m], m = 0..M+1, S the sum of ``groups`` independent Mahonian(``items``) counts.

    Exact: the numerators are the coefficients of the generating function to the power ``groups``, in
    Python integers, over the denominator (items!)^groups; each tail is rounded once (log10 from the
    integers, so finite where the float underflows). M = groups * items (items - 1) / 2; t[M+1] = 0.
    """
    if groups < 0:
        raise ValueError("need groups >= 0")
    one = mahonian_counts(items)
    poly, denom = [1], 1
    for _ in range(groups):
        denom *= math.factorial(items)
        poly = _int_convolve(poly, one, denom.bit_length())
    acc = _suffix_sums(poly)
    log_denom = math.log10(denom) if denom > 1 else 0.0
    tails = np.array([a / denom for a in acc], dtype=np.float64)
    logs = np.array([min(0.0, math.log10(a) - log_denom) if a else -math.inf for a in acc], dtype=np.float64)
    return tails, logs


def bonferroni_pair(p_a: np.ndarray, log_a: np.ndarray, p_b: np.ndarray, log_b: np.ndarray,
                    read_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per customer, min(1, 2 min(p_a, p_b)) where ``read_b`` (both channels read), else p_a; and its log10."""
    both_log = np.minimum(np.minimum(log_a, log_b) + math.log10(2.0), 0.0)
    both_p = np.minimum(2.0 * np.minimum(p_a, p_b), 1.0)
    return np.where(read_b, both_p, p_a), np.where(read_b, both_log, log_a)
