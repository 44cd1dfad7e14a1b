"""The sequential test of `tracer probe`: a test martingale, valid under optional stopping, and powerful.

The simulated null endpoints answer independently of the customers' codewords
(random labels, a constant label, a deterministic function of the trigger
input, as an independent model would); codewords come from the real HKDF /
SHAKE derivation under fresh random master secrets. The probe's own stopping
rule (stop at the first crossing, or as soon as nobody can cross any more)
is applied after every answer: the false-naming rate must stay within alpha.
A naive probe that re-checks the fixed-size binomial test after every answer
shows what optional stopping does to a test that is not anytime-valid.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tracer.config import TaskConfig
from tracer.fingerprint import codewords, make_probe_set
from tracer.fingerprint.stats import binomial_tails
from tracer.probing.sequential import DEFAULT_GRID, EProcess, mixture_log_e

DIGITS = TaskConfig(num_classes=10, input_shape=(1, 8, 8))


@pytest.mark.parametrize("num_classes", [2, 10])
@pytest.mark.parametrize("t", [1, 7, 30, 64])
def test_mixture_has_mean_one_under_the_null(num_classes: int, t: int) -> None:
    p0 = 1 / num_classes
    ks = np.arange(t + 1)
    e = np.exp(mixture_log_e(ks, np.full(t + 1, t), num_classes))
    mean = sum(math.comb(t, k) * p0**k * (1 - p0) ** (t - k) * e[k] for k in range(t + 1))
    assert mean == pytest.approx(1.0, rel=1e-9)


def test_martingale_step_is_fair() -> None:
    """E[E_{t+1} | E_t] = E_t for every state: a match multiplies by sum w q/p0, a miss by (1-q)/(1-p0)."""
    c, p0 = 10, 0.1
    for k, t in [(0, 0), (3, 5), (10, 12), (2, 40)]:
        now = np.exp(mixture_log_e(np.array([k]), np.array([t]), c))[0]
        nxt = p0 * np.exp(mixture_log_e(np.array([k + 1]), np.array([t + 1]), c))[0] + (1 - p0) * np.exp(mixture_log_e(np.array([k]), np.array([t + 1]), c))[0]
        assert nxt == pytest.approx(now, rel=1e-9)


def test_p_value_threshold_and_naming() -> None:
    e = EProcess(num_classes=10, customers=100, alpha=1e-6)
    assert e.threshold == pytest.approx(1e8)
    rows = np.zeros((12, 100), dtype=bool)
    rows[:, 7] = True  # customer 7 matches every trigger
    verdict, used = e.run(rows)
    assert verdict == "match" and e.named.tolist() == [i == 7 for i in range(100)]
    p = e.p_values()
    assert p[7] <= 1e-6 / 100 and np.all(p[np.arange(100) != 7] == 1.0)  # never matched: E only fell below 1
    assert e.log10_p()[7] == pytest.approx(math.log10(p[7]))
    assert used == e.triggers_needed(1.0) <= 10


def test_futility_stops_before_the_schedule_ends() -> None:
    e = EProcess(num_classes=10, customers=50, alpha=1e-6)
    verdict, used = e.run(np.zeros((64, 50), dtype=bool))  # an endpoint that never matches anyone
    assert verdict == "no_match" and used < 64
    assert not e.can_reach(64 - used).any()
    # one step earlier it was still possible
    e2 = EProcess(num_classes=10, customers=50, alpha=1e-6)
    for _ in range(used - 1):
        e2.update(np.zeros(50, dtype=bool))
    assert e2.can_reach(64 - used + 1).any()


@pytest.mark.parametrize("rate,limit", [(1.0, 10), (0.95, 12), (0.7, 24), (0.5, 45)])
def test_power_on_digits_scale(rate: float, limit: int) -> None:
    """>= 100 customers, alpha 1e-6, 10 classes: trigger answers needed by copies keeping `rate` of their watermark."""
    rng = np.random.default_rng(7)
    used, named = [], 0
    for _ in range(40):
        rows = rng.random((64, 103)) < 0.1
        rows[:, 0] = rng.random(64) < rate
        e = EProcess(10, 103, 1e-6)
        verdict, t = e.run(rows)
        assert e.named[1:].sum() == 0
        named += verdict == "match" and bool(e.named[0])
        used.append(t if verdict == "match" else 10**6)
    assert named >= (40 if rate >= 0.7 else 30)  # a copy keeping half its watermark may need more than one probe set
    assert np.median(used) <= limit


# -- simulated null endpoints ------------------------------------------------------------------------


def _answers(kind: str, inputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.integers(0, 10, len(inputs))
    if kind == "constant":
        return np.full(len(inputs), 3)
    # "model": a fixed deterministic classifier of the input, as an independently trained model would be
    flat = inputs.reshape(len(inputs), -1)
    return (np.floor(flat[:, :32].sum(axis=1) * 7) % 10).astype(np.int64)


@pytest.mark.parametrize("endpoint", ["random", "constant", "model"])
def test_simulated_null_endpoints_keep_the_false_naming_rate_within_alpha(endpoint: str) -> None:
    sims, n_cust, alpha = 300, 10, 0.05
    rng = np.random.default_rng({"random": 1, "constant": 2, "model": 3}[endpoint])
    ids = [f"c{i}" for i in range(n_cust)]
    false_named = naive_named = 0
    tails = {t: binomial_tails(t, 10) for t in range(1, 65)}
    for _ in range(sims):
        master = os.urandom(32)  # a fresh vendor: codewords independent of the endpoint
        ps = make_probe_set(master, "ps1", DIGITS, 64)
        cw = codewords(master, ids, "ps1", 64, 10)  # [N, 64]
        order = rng.permutation(64)  # the probe's shuffled schedule
        answers = _answers(endpoint, ps.inputs, rng)
        matches = (cw[:, order] == answers[order][None, :]).T  # [T, N]
        verdict, _ = EProcess(10, n_cust, alpha).run(matches)
        false_named += verdict == "match"
        # naive: the exact fixed-size binomial test with Bonferroni, re-checked after every answer
        k = np.cumsum(matches, axis=0)
        naive_named += any((tails[t][k[t - 1]] <= alpha / n_cust).any() for t in range(1, 65))
    rate, sd = false_named / sims, math.sqrt(alpha * (1 - alpha) / sims)
    assert rate <= alpha + 3 * sd, f"optional stopping inflated the error: {rate:.3f} > {alpha}"
    # The same simulation does detect inflation when the test is not anytime-valid.
    assert naive_named / sims > alpha + sd, f"naive rate {naive_named / sims:.3f}"


def test_ville_bound_single_customer() -> None:
    """P[sup_t E_t >= 1/a] <= a, checked at a = 0.1 and 0.02 over 4000 simulated null paths of 200 steps."""
    rng = np.random.default_rng(11)
    x = rng.random((4000, 200)) < 0.1
    k = np.cumsum(x, axis=1)
    t = np.arange(1, 201)[None, :].repeat(4000, axis=0)
    sup = mixture_log_e(k, t, 10).max(axis=1)
    for a in (0.1, 0.02):
        rate = float(np.mean(sup >= math.log(1 / a)))
        assert rate <= a + 3 * math.sqrt(a * (1 - a) / 4000)


def test_grid_is_within_the_alternative() -> None:
    assert all(0 < f <= 1 for f in DEFAULT_GRID)
    with pytest.raises(ValueError):
        EProcess(10, 3, alpha=0)
