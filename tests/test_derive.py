"""Derivation of per-customer secrets: golden vectors, exact uniformity, customer-id rules.

The golden vectors below were computed once and are hard-coded on purpose:
evidence must be re-derivable years later on another machine, so any change to
these bytes is a breaking change of the derivation (bump DERIVATION_VERSION).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools

import numpy as np
import pytest

from tracer.config import TaskConfig
from tracer.errors import CustomerError
from tracer.fingerprint.probes import codeword, codewords, make_probe_set, trigger_commitment
from tracer.keys.derive import (
    DERIVATION_VERSION,
    customer_key,
    hkdf_key,
    normalize_customer_id,
    probe_set_key,
    shake_stream,
    uniform_ints,
    validate_display_name,
)

MASTER = bytes(range(32))
IMAGE_TASK = TaskConfig(num_classes=10, input_shape=(1, 4, 4))
TABULAR_TASK = TaskConfig(
    num_classes=2, input_shape=(5,), domain="tabular", input_dtype="float64",
    low=(-1.0, 0.0, 0.0, 0.0, 10.0), high=(1.0, 1.0, 1.0, 1.0, 20.0),
)


# -- golden vectors --------------------------------------------------------------------------------


def test_golden_hkdf_keys():
    assert DERIVATION_VERSION == "v1"
    assert hkdf_key(MASTER, "customer/acme-01").hex() == "83bbeb1971b454d3f8e27fb27e8a70046120c13d5982a3fa8fc8dc24c9c869df"
    assert customer_key(MASTER, "acme-01").hex() == "83bbeb1971b454d3f8e27fb27e8a70046120c13d5982a3fa8fc8dc24c9c869df"
    assert probe_set_key(MASTER, "ps1").hex() == "d245de855eb0e0b1b6ae566545b158aa67a30c43052af29a4ba579f6ff8dfbc6"


def _reference_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 written out with hmac, independent of the `cryptography` package."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in itertools.count(1):
        if len(okm) >= length:
            return okm[:length]
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block


def test_hkdf_matches_rfc5869_reference():
    for purpose in ("customer/acme-01", "probe-set/ps1", "commitment/x"):
        want = _reference_hkdf_sha256(MASTER, b"tracer/v1", f"tracer/v1/{purpose}".encode())
        assert hkdf_key(MASTER, purpose) == want


def test_golden_shake_stream_and_uniform_ints():
    assert shake_stream(probe_set_key(MASTER, "ps1"), "x", 16).hex() == "b24d7c0a03b52881f623584b3c07abe6"
    key = customer_key(MASTER, "acme-01")
    assert uniform_ints(key, "golden", 12, 10).tolist() == [1, 6, 5, 0, 6, 2, 0, 3, 7, 1, 3, 3]
    assert uniform_ints(key, "golden", 8, 3).tolist() == [1, 2, 2, 1, 0, 2, 2, 2]
    assert uniform_ints(key, "golden", 4, 2**32).tolist() == [3641524651, 1725800756, 427365935, 741041890]
    # documented construction: SHAKE-256(key || 0x00 || label), 32-bit big-endian words
    assert shake_stream(key, "golden", 8) == hashlib.shake_256(key + b"\0golden").digest(8)
    assert uniform_ints(key, "golden", 2, 2**32).tolist() == [
        int.from_bytes(shake_stream(key, "golden", 8)[i:i + 4], "big") for i in (0, 4)
    ]


def test_golden_codewords():
    assert codeword(MASTER, "acme-01", "ps1", 16, 10).tolist() == [8, 9, 3, 9, 5, 4, 7, 5, 4, 5, 4, 9, 5, 2, 6, 7]
    assert codeword(MASTER, "globex", "ps1", 16, 10).tolist() == [0, 5, 2, 2, 0, 6, 5, 0, 7, 3, 8, 0, 2, 8, 7, 7]
    assert codeword(MASTER, "  ACME-01 ", "ps1", 16, 10).tolist() == codeword(MASTER, "acme-01", "ps1", 16, 10).tolist()
    matrix = codewords(MASTER, ["acme-01", "globex"], "ps1", 16, 10)
    assert matrix.dtype == np.int16
    assert matrix.tolist() == [codeword(MASTER, c, "ps1", 16, 10).tolist() for c in ("acme-01", "globex")]


def test_golden_probe_set_image():
    ps = make_probe_set(MASTER, "ps1", IMAGE_TASK, 3)
    assert ps.id == "ps1" and ps.size == 3
    assert ps.inputs.dtype == np.float32 and ps.inputs.shape == (3, 1, 4, 4)
    flat = ps.inputs.reshape(-1)
    assert (flat[:8] * 255).round().astype(int).tolist() == [164, 128, 24, 29, 225, 15, 107, 170]
    assert flat[:2].tolist() == [0.6431372761726379, 0.501960813999176]
    # every value lies exactly on the 8-bit grid, so PNG round-trips keep probes intact
    levels = flat.astype(np.float64) * 255
    assert np.all(np.abs(levels - levels.round()) < 1e-4) and flat.min() >= 0 and flat.max() <= 1
    assert ps.digest() == "dfb8dada9b800ad831ad657b7e39343faea99867dce7a8b7fd64f222fa1f2c65"


def test_golden_probe_set_tabular():
    ps = make_probe_set(MASTER, "ps2", TABULAR_TASK, 4)
    assert ps.inputs.dtype == np.float64 and ps.inputs.shape == (4, 5)
    assert ps.inputs[0].tolist() == [0.5910582131685358, 0.4772106507972839, 0.42746623941405354, 0.831921873807889, 18.656900892652782]
    assert ps.digest() == "7f2a5d6c4babf02155fb151b515c1f97c0a5eee63222ef57e44bcffd3134f954"
    low, high = np.array(TABULAR_TASK.low), np.array(TABULAR_TASK.high)
    assert np.all(ps.inputs >= low) and np.all(ps.inputs <= high)


def test_golden_trigger_commitment():
    ps1 = make_probe_set(MASTER, "ps1", IMAGE_TASK, 3)
    ps2 = make_probe_set(MASTER, "ps2", IMAGE_TASK, 3)
    assert trigger_commitment(MASTER, "acme-01", [ps1], 10) == "65d07992187838553f1d726f05bf9fb6123d0b3f3058ea7c7e91e2947f743a37"
    assert trigger_commitment(MASTER, "ACME-01", [ps1, ps2], 10) == "def9bbbe333f2c8204d5fcbb578f6854e7e23245608a9fba41569b4e44d0c99f"
    # binding: another customer, another master, or another probe set gives another commitment
    assert trigger_commitment(MASTER, "globex", [ps1], 10) != trigger_commitment(MASTER, "acme-01", [ps1], 10)
    assert trigger_commitment(bytes(32), "acme-01", [ps1], 10) != trigger_commitment(MASTER, "acme-01", [ps1], 10)


def test_derivation_depends_on_everything():
    other_master = bytes(range(1, 33))
    assert customer_key(other_master, "acme-01") != customer_key(MASTER, "acme-01")
    assert probe_set_key(MASTER, "ps1") != probe_set_key(MASTER, "ps2")
    assert hkdf_key(MASTER, "customer/acme-01") != hkdf_key(MASTER, "probe-set/acme-01")
    assert not np.array_equal(make_probe_set(MASTER, "ps1", IMAGE_TASK, 3).inputs, make_probe_set(MASTER, "ps2", IMAGE_TASK, 3).inputs)
    with pytest.raises(ValueError):
        hkdf_key(MASTER[:31], "customer/acme-01")


# -- uniformity ------------------------------------------------------------------------------------


def _chi_square(values: np.ndarray, bound: int) -> float:
    counts = np.bincount(values, minlength=bound).astype(np.float64)
    expected = values.size / bound
    return float(((counts - expected) ** 2 / expected).sum())


def test_uniform_ints_range_and_dtype():
    key = customer_key(MASTER, "acme-01")
    for bound in (1, 2, 3, 7, 10, 256, 1000, 2**31 + 1, 2**32):
        v = uniform_ints(key, f"range/{bound}", 5000, bound)
        assert v.dtype == np.int64 and v.shape == (5000,)
        assert v.min() >= 0 and v.max() < bound
    assert uniform_ints(key, "one", 10, 1).tolist() == [0] * 10
    assert uniform_ints(key, "zero", 0, 10).size == 0
    for bad in (0, -1, 2**32 + 1):
        with pytest.raises(ValueError):
            uniform_ints(key, "bad", 10, bad)


def test_uniform_ints_chi_square_100k():
    key = customer_key(MASTER, "acme-01")
    for bound in (2, 10, 97):
        v = uniform_ints(key, f"chi/{bound}", 100_000, bound)
        df = bound - 1
        # loose: mean df, sd sqrt(2 df); 6 sd is astronomically unlikely for a fair generator
        assert _chi_square(v, bound) < df + 6 * np.sqrt(2 * df), bound
        assert abs(v.mean() - (bound - 1) / 2) < 0.02 * bound


def test_bound_3_big_sample_no_bias():
    v = uniform_ints(customer_key(MASTER, "globex"), "bias/3", 300_000, 3)
    counts = np.bincount(v, minlength=3)
    assert _chi_square(v, 3) < 2 + 6 * 2
    assert np.all(np.abs(counts / v.size - 1 / 3) < 0.005), counts


def test_rejection_sampling_removes_modulo_bias():
    """With bound = 3 * 2**30, plain ``word % bound`` would put half the mass below 2**30; exact gives a third."""
    bound = 3 * 2**30
    v = uniform_ints(customer_key(MASTER, "acme-01"), "bias/big", 100_000, bound)
    low_fraction = float((v < 2**30).mean())
    assert abs(low_fraction - 1 / 3) < 0.01, low_fraction  # biased modulo would give ~0.5
    # and every value is an accepted raw word itself (limit == bound here, so no reduction happens)
    words = np.frombuffer(shake_stream(customer_key(MASTER, "acme-01"), "bias/big", 4 * 200_000), dtype=">u4").astype(np.int64)
    assert np.array_equal(v, words[words < bound][: v.size])


def test_uniform_ints_prefix_stable_even_when_stream_grows():
    key = customer_key(MASTER, "acme-01")
    bound = 2**31 + 1  # about half of all words are rejected, so the stream has to grow
    long = uniform_ints(key, "prefix", 2000, bound)
    assert np.array_equal(uniform_ints(key, "prefix", 10, bound), long[:10])
    assert np.array_equal(uniform_ints(key, "prefix", 1500, bound), long[:1500])
    assert np.array_equal(uniform_ints(key, "cw", 5, 10), uniform_ints(key, "cw", 500, 10)[:5])


# -- customer ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,canonical",
    [
        ("acme-01", "acme-01"),
        (" ACME-01 ", "acme-01"),
        ("Acme.Corp_EU+test@x", "acme.corp_eu+test@x"),
        ("\uff21\uff23\uff2d\uff25", "acme"),  # fullwidth letters, NFKC
        ("\ufb01rm", "firm"),  # "fi" ligature, NFKC
        ("a\u00a0", "a"),  # no-break space, NFKC then strip
        ("0", "0"),
        ("a" * 64, "a" * 64),
    ],
)
def test_customer_id_normalization(raw, canonical):
    assert normalize_customer_id(raw) == canonical
    assert customer_key(MASTER, raw) == customer_key(MASTER, canonical)


@pytest.mark.parametrize(
    "raw,why",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a\x00b", "control"),
        ("a\tb", "control"),
        ("acme\n", "control"),
        ("a\u200bb", "control"),  # zero-width space (format character)
        ("a\u202eb", "control"),  # right-to-left override
        ("a" * 65, "longer than 64"),
        ("acme corp", "characters outside"),
        ("acme/01", "characters outside"),
        ("-acme", "characters outside"),
        (".acme", "characters outside"),
        ("café", "characters outside"),
        ("acme;drop", "characters outside"),
    ],
)
def test_customer_id_rejections(raw, why):
    with pytest.raises(CustomerError, match=why):
        normalize_customer_id(raw)
    with pytest.raises(CustomerError):
        customer_key(MASTER, raw)


def test_customer_id_must_be_a_string():
    with pytest.raises(CustomerError):
        normalize_customer_id(42)  # type: ignore[arg-type]


def test_display_name():
    assert validate_display_name(None, "acme") == "acme"
    assert validate_display_name("   ", "acme") == "acme"
    assert validate_display_name("  ACME Corp. (EU) — Ltd ", "acme") == "ACME Corp. (EU) — Ltd"
    with pytest.raises(CustomerError, match="control"):
        validate_display_name("ACME\nCorp", "acme")
    with pytest.raises(CustomerError, match="longer"):
        validate_display_name("x" * 201, "acme")


# -- independence between customers ----------------------------------------------------------------


def test_different_customers_get_unrelated_codewords():
    ids = [f"customer-{i:03d}" for i in range(200)]
    p, c = 64, 10
    cw = codewords(MASTER, ids, "ps1", p, c).astype(np.int64)
    assert len({row.tobytes() for row in cw}) == len(ids)
    agree = (cw[:, None, :] == cw[None, :, :]).sum(axis=2)[np.triu_indices(len(ids), k=1)]
    # unrelated uniform codewords agree on ~P/C probes; a shared structure would push this up
    assert abs(agree.mean() / p - 1 / c) < 0.01, agree.mean()
    assert agree.max() <= 24, agree.max()  # Binomial(64, 0.1) >= 25 has p ~ 1e-9 per pair
    # keys are distinct and the same customer always gets the same codeword
    assert len({customer_key(MASTER, i) for i in ids}) == len(ids)
    assert np.array_equal(codeword(MASTER, ids[0], "ps1", p, c), cw[0])


def test_codeword_differs_between_probe_sets():
    a = codeword(MASTER, "acme-01", "ps1", 64, 10)
    b = codeword(MASTER, "acme-01", "ps2", 64, 10)
    assert (a == b).sum() < 24
