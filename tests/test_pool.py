"""The natural-mix key pool: golden vectors, its construction's contract, encrypted storage, revelation per key.

The golden vectors were computed once and are hard-coded on purpose: the pool and a
customer's labels on it are evidence that must re-derive byte for byte years later.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests._constants import LOW_SCRYPT, PASSPHRASE
from tracer.config import FingerprintConfig, TaskConfig, parse_config
from tracer.errors import ConfigError, KeyFileError, TracerError
from tracer.fingerprint.keysets import open_pool
from tracer.fingerprint.pool import IMAGE_MIX_HIGH, IMAGE_MIX_LOW, MIX_HIGH, MIX_LOW, SPREAD, _spread_order, build_pool, load_pool, save_pool
from tracer.fingerprint.probes import codeword, customer_labels, trigger_commitment
from tracer.fingerprint.revelation import LOW_POOL_PROBES, draw_keys, pool_usage
from tracer.ledger import Ledger
from tracer.workspace import GENERIC_CONFIG, init_workspace

MASTER = bytes(range(32))
TASK = TaskConfig(num_classes=3, input_shape=(1, 2, 2))


def _data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    x = (np.arange(n * 4).reshape(n, 1, 2, 2) % 17 / 16).astype(np.float32)
    return x, np.arange(n) % 3


def _pool(size: int = 8, master: bytes = MASTER):
    x, y = _data()
    return build_pool(master, TASK, x, y, size=size, dataset_fingerprint="golden")


# -- golden vectors --------------------------------------------------------------------------------


def test_golden_pool_and_customer_labels():
    pool = _pool()
    assert pool.digest() == "79875fd10746aaa9fd87ddffdcd5d7bfceb358c64c0a6727b6af8afc340c5b6f"
    assert pool.sources.tolist() == [[3, 20], [6, 23], [4, 21], [13, 17], [14, 10], [16, 3], [15, 19], [19, 2]]
    assert pool.label_sets.tolist() == [[0, 2], [0, 2], [1, 0], [1, 2], [2, 1], [1, 0], [0, 1], [1, 2]]
    assert [round(float(w), 6) for w in pool.weights] == [0.428014, 0.410503, 0.324375, 0.49873, 0.438708, 0.465621, 0.360261, 0.325943]
    assert pool.inputs.reshape(8, -1)[:2].tolist() == [[0.75, 0.8125, 0.875, 0.9375], [0.4375, 0.5, 0.5625, 0.625]]
    assert codeword(MASTER, "acme-01", "pool1", 8, 2).tolist() == [1, 1, 1, 0, 1, 1, 0, 0]
    assert customer_labels(MASTER, "acme-01", pool, 3).tolist() == [2, 2, 0, 1, 1, 0, 0, 1]
    assert trigger_commitment(MASTER, "acme-01", [pool], 3) == "6f3116cf0d3f40452e94da6f969058568b02b5d7e07d84e095e2b7b37b5bd810"


TABULAR = TaskConfig(num_classes=3, input_shape=(5,), domain="tabular", low=(-3.0,), high=(3.0,))


def _rows(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Tabular rows on a 1/16 grid in [-3, 3) (deterministic, no generator)."""
    return ((np.arange(n * 5).reshape(n, 5) * 7919 % 97) / 16 - 3).astype(np.float32), np.arange(n) % 3


def test_golden_v2_tabular_pool_and_customer_labels():
    """natural-mix/v2 (pool2): its own streams, and tabular keys as a keyed crossover of their two sources."""
    x, y = _rows()
    pool = build_pool(MASTER, TABULAR, x, y, size=8, dataset_fingerprint="golden", pool_id="pool2")
    assert pool.style == "natural-mix/v2" and pool.record()["style"] == "natural-mix/v2"
    assert pool.digest() == "6ed8e46945ac40bb83ad50ab293d8522056f86b48762c6e9cf850577de0120b3"
    assert pool.sources.tolist() == [[11, 6], [19, 14], [22, 17], [14, 19], [22, 17], [14, 19], [9, 4], [2, 7]]
    assert pool.label_sets.tolist() == [[2, 0], [1, 2], [1, 2], [2, 1], [1, 2], [2, 1], [0, 1], [2, 1]]
    assert [round(float(w), 6) for w in pool.weights] == [0.408885, 0.353513, 0.385423, 0.313495, 0.385045, 0.462417, 0.463995, 0.498419]
    assert pool.inputs[:2].tolist() == [[-2.0625, 1.9375, -0.375, -2.4375, 1.3125], [1.5, -0.6875, -3.0, 1.0, -1.3125]]
    assert codeword(MASTER, "acme-01", "pool2", 8, 2).tolist() == [1, 1, 1, 1, 0, 1, 1, 0]
    assert customer_labels(MASTER, "acme-01", pool, 3).tolist() == [0, 2, 2, 1, 1, 1, 1, 2]
    assert trigger_commitment(MASTER, "acme-01", [pool], 3) == "00a08d5a488e9ac5cfef7d64dacaf674c6a31b19dd9d5299109d27817186d507"


def test_v2_tabular_keys_take_each_feature_from_one_source_at_the_keyed_rate():
    x, y = _rows(90)
    pool = build_pool(MASTER, TABULAR, x, y, size=600, dataset_fingerprint="f", pool_id="pool2")
    a, b = x[pool.sources[:, 0]], x[pool.sources[:, 1]]
    assert ((pool.inputs == a) | (pool.inputs == b)).all()  # every value is one a real row has, in its own column
    from_b = (pool.inputs == b) & (a != b)
    share = from_b.sum() / (a != b).sum()
    assert abs(share - pool.weights.mean()) < 0.03  # feature j from b with probability w (mean w about 0.4)
    assert (pool.label_sets[:, 0] != pool.label_sets[:, 1]).all()
    v1 = build_pool(MASTER, TABULAR, x, y, size=600, dataset_fingerprint="f")
    assert v1.style == "natural-mix/v1" and (v1.sources != pool.sources).any()  # each style its own streams
    mixed = (1 - v1.weights[:, None]) * x[v1.sources[:, 0]].astype(np.float64) + v1.weights[:, None] * x[v1.sources[:, 1]]
    assert np.allclose(v1.inputs, mixed, atol=1 / 32 + 1e-6)  # v1: the plain mixture, snapped to the rows' 1/16 grid
    assert np.abs(v1.inputs - x[v1.sources[:, 0]]).max() < np.abs(pool.inputs - a).max()  # v2 keeps the sources' spread


def test_v2_image_keys_are_built_as_v1_builds_them():
    x, y = _digits_like()
    task = TaskConfig(num_classes=3, input_shape=(1, 4, 4))
    pool = build_pool(MASTER, task, x, y, size=50, dataset_fingerprint="f", pool_id="pool2")
    flat = x.reshape(len(x), -1).astype(np.float64)
    for i in range(50):
        a, b, w = flat[pool.sources[i, 0]], flat[pool.sources[i, 1]], pool.weights[i]
        want = np.round(((1 - w) * np.sort(a) + w * np.sort(b)) * 16) / 16  # the quantile mixture, as v1
        assert np.allclose(np.sort(pool.inputs[i].reshape(-1)), want, atol=1 / 32 + 1e-9)


def _images(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """4x4 images on a 17-level grid from integer arithmetic alone (no generator whose stream could change), half dimmed by class."""
    i, j = np.arange(n)[:, None], np.arange(16)[None, :]
    x, y = (i * 7919 + j * j * 104729) % 17, np.arange(n) % 3
    x = np.where((y[:, None] == 0) & (j < 8), x // 3, x)
    x = np.where((y[:, None] == 1) & (j >= 8), x // 3, x)
    return (x.reshape(n, 1, 4, 4) / 16).astype(np.float32), y


IMAGES = TaskConfig(num_classes=3, input_shape=(1, 4, 4))


def test_golden_v3_image_pool_and_customer_labels():
    """natural-mix/v3 (pool3): its own streams, weights in [0.25, 0.45], image keys ranked in the spread-restoring order."""
    x, y = _images()
    pool = build_pool(MASTER, IMAGES, x, y, size=8, dataset_fingerprint="golden", pool_id="pool3")
    assert pool.style == "natural-mix/v3" and pool.record()["style"] == "natural-mix/v3"
    assert pool.digest() == "ea240a46c9d24badbc758b4403d15bc713996759742c01407e18e7fc775cb3b9"
    assert pool.sources.tolist() == [[22, 5], [58, 41], [13, 8], [51, 17], [2, 36], [59, 36], [36, 14], [26, 43]]
    assert (pool.inputs.reshape(8, -1)[:2] * 16).astype(int).tolist() == [[2, 12, 4, 15, 10, 7, 3, 1, 0, 0, 0, 1, 3, 5, 7, 2],
                                                                           [13, 4, 15, 8, 3, 0, 14, 13, 6, 7, 7, 8, 0, 2, 6, 11]]
    x, y = _data()
    pool = build_pool(MASTER, TASK, x, y, size=8, dataset_fingerprint="golden", pool_id="pool3")
    assert pool.digest() == "e1c40c184c9644d1b88bd6577cfa0e30199999f0f5ec214e396af046cfaf86a2"
    assert pool.label_sets.tolist() == [[1, 0], [1, 2], [1, 0], [0, 2], [2, 1], [2, 0], [0, 2], [2, 1]]
    assert [round(float(w), 6) for w in pool.weights] == [0.31154, 0.42254, 0.321257, 0.304026, 0.417367, 0.321772, 0.367809, 0.400564]
    assert codeword(MASTER, "acme-01", "pool3", 8, 2).tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert customer_labels(MASTER, "acme-01", pool, 3).tolist() == [1, 1, 1, 0, 1, 0, 0, 2]
    assert trigger_commitment(MASTER, "acme-01", [pool], 3) == "6070b303cc0db11a89c54837151893c0b2a658d32cfcc17f80dc276b1d14f472"


def test_golden_v3_tabular_keys_are_v2_crossovers_from_pool3_streams():
    x, y = _rows()
    pool = build_pool(MASTER, TABULAR, x, y, size=8, dataset_fingerprint="golden", pool_id="pool3")
    assert pool.digest() == "d1dfcb940e328cd7332fee7de5942e6631043a346c2350f03e10743a087693c2"
    assert pool.inputs[:2].tolist() == [[2.9375, 0.75, -1.5625, 2.3125, 0.125], [-1.125, 2.875, 0.5625, -1.625, 2.375]]
    assert MIX_LOW <= pool.weights.min() and pool.weights.max() <= MIX_HIGH  # tabular rows keep v2's weights
    a, b = x[pool.sources[:, 0]], x[pool.sources[:, 1]]
    assert ((pool.inputs == a) | (pool.inputs == b)).all()


def test_v3_image_keys_rank_pixels_by_the_mixture_with_its_spread_restored():
    """Histogram: v1's quantile mixture. Order: the mixture's deviation from the mean input, scaled up by s**-0.75."""
    x, y = _digits_like()
    pool = build_pool(MASTER, IMAGES, x, y, size=60, dataset_fingerprint="f", pool_id="pool3")
    assert IMAGE_MIX_LOW <= pool.weights.min() and pool.weights.max() <= IMAGE_MIX_HIGH and SPREAD == 0.75
    flat = x.reshape(len(x), -1).astype(np.float64)
    centre = flat.mean(0)
    reordered = 0
    for i in range(60):
        a, b, w = flat[pool.sources[i, 0]], flat[pool.sources[i, 1]], pool.weights[i]
        key = pool.inputs[i].reshape(-1).astype(np.float64)
        want = np.round(((1 - w) * np.sort(a) + w * np.sort(b)) * 16) / 16
        assert np.allclose(np.sort(key), want, atol=1 / 32 + 1e-9)
        mix = (1 - w) * a + w * b
        order = centre + (mix - centre) / np.sqrt((1 - w) ** 2 + w**2) ** SPREAD
        ranked = key[np.argsort(order, kind="stable")]
        assert (np.diff(ranked) >= 0).all() or len(set(order.round(9))) < len(order)  # ties go by a keyed order
        reordered += not (np.diff(key[np.argsort(mix, kind="stable")]) >= 0).all()
    assert reordered > 0  # the spread changes the rank order of some keys: v3 is not v2 with other weights


def test_spread_order_takes_square_roots_only_and_equals_the_power_form():
    w = np.linspace(0.2, 0.4, 101)
    mixed, centre = np.linspace(0, 1, 101 * 3).reshape(101, 3), np.array([0.1, 0.5, 0.9])
    s = np.sqrt((1 - w) ** 2 + w**2)
    assert np.allclose(_spread_order(mixed, w, centre), centre + (mixed - centre) / (s**SPREAD)[:, None], rtol=0, atol=1e-13)


def _digits_like(n: int = 200, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Images on a 17-level grid, two blobs per class (a deterministic stand-in for digits)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 17, size=(n, 1, 4, 4)).astype(np.float64)
    x[y == 0, 0, :2, :] //= 3
    x[y == 1, 0, 2:, :] //= 3
    return (x / 16).astype(np.float32), y


def test_each_key_is_the_documented_mixture():
    """Pixels: the quantile mixture of a's and b's histograms, snapped to the data's levels, in the plain mixture's rank order."""
    x, y = _digits_like()
    task = TaskConfig(num_classes=3, input_shape=(1, 4, 4))
    pool = build_pool(MASTER, task, x, y, size=50, dataset_fingerprint="f")
    flat = x.reshape(len(x), -1).astype(np.float64)
    for i in range(50):
        a, b = flat[pool.sources[i, 0]], flat[pool.sources[i, 1]]
        w = pool.weights[i]
        key = pool.inputs[i].reshape(-1).astype(np.float64)
        want = np.round(((1 - w) * np.sort(a) + w * np.sort(b)) * 16) / 16  # the 17 levels; no exact ties at .5 steps here
        assert np.allclose(np.sort(key), want, atol=1 / 32 + 1e-9)
        mix = (1 - w) * a + w * b
        assert (np.diff(key[np.argsort(mix, kind="stable")]) >= 0).all() or len(set(mix)) < len(mix)


def test_the_second_source_is_one_of_the_nearest_other_class_inputs():
    x, y = _digits_like()
    task = TaskConfig(num_classes=3, input_shape=(1, 4, 4))
    pool = build_pool(MASTER, task, x, y, size=200, dataset_fingerprint="f")
    flat = x.reshape(len(x), -1).astype(np.float64)
    ranks = []
    for a, b in pool.sources:
        other = np.flatnonzero(y != y[a])
        d = ((flat[other] - flat[a]) ** 2).sum(1)
        ranks.append(int((d < ((flat[b] - flat[a]) ** 2).sum()).sum()))
    assert np.median(ranks) <= 8  # nearest 8 of 256 keyed candidates: among the closest few of all ~133 other-class inputs


# -- the construction's contract -----------------------------------------------------------------


def test_label_sets_are_the_two_different_source_classes():
    x, y = _data(60)
    pool = build_pool(MASTER, TASK, x, y, size=500, dataset_fingerprint="f")
    assert (pool.label_sets[:, 0] == y[pool.sources[:, 0]]).all()
    assert (pool.label_sets[:, 1] == y[pool.sources[:, 1]]).all()
    assert (pool.label_sets[:, 0] != pool.label_sets[:, 1]).all()
    assert ((pool.weights >= MIX_LOW) & (pool.weights <= MIX_HIGH)).all()


def test_keys_take_only_values_the_vendor_inputs_take():
    x, y = _data(60)
    pool = build_pool(MASTER, TASK, x, y, size=300, dataset_fingerprint="f")
    assert set(np.unique(pool.inputs)) <= set(np.unique(x))
    assert pool.inputs.dtype == np.float32 and pool.inputs.shape == (300, 1, 2, 2)


def test_pool_depends_only_on_master_and_data():
    assert _pool().digest() == _pool().digest()
    assert _pool(master=bytes(32)).digest() != _pool().digest()
    x, y = _data()
    x2 = x.copy()
    x2[3] = 0.0  # a source of key 0
    assert build_pool(MASTER, TASK, x2, y, size=8, dataset_fingerprint="golden").digest() != _pool().digest()


def test_customer_labels_are_in_each_label_set_and_about_balanced():
    x, y = _data(60)
    pool = build_pool(MASTER, TASK, x, y, size=4000, dataset_fingerprint="f")
    labels = customer_labels(MASTER, "acme", pool, 3)
    first = labels == pool.label_sets[:, 0]
    assert (first | (labels == pool.label_sets[:, 1])).all()
    assert 0.46 < first.mean() < 0.54  # exactly uniform per key: 4000 fair coins
    other = customer_labels(MASTER, "globex", pool, 3)
    assert 0.46 < (labels == other).mean() < 0.54


def test_labels_select_columns_of_a_subset():
    pool = _pool()
    index = codeword(MASTER, "acme-01", "pool1", 8, 2)
    keys = np.array([5, 1, 6])
    assert pool.labels(index[None, keys], keys=keys).tolist() == [customer_labels(MASTER, "acme-01", pool, 3)[keys].tolist()]


# -- storage ---------------------------------------------------------------------------------------


def test_storage_round_trip_is_encrypted_and_private(tmp_path):
    pool = _pool(64)
    path = tmp_path / "pool1.keypool"
    save_pool(path, MASTER, pool)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    blob = path.read_bytes()
    assert pool.inputs.tobytes() not in blob and b"golden" not in blob
    back = load_pool(path, MASTER)
    assert back.digest() == pool.digest()
    assert np.array_equal(back.sources, pool.sources) and np.array_equal(back.weights, pool.weights)


def test_storage_refuses_a_tampered_file_and_another_master(tmp_path):
    path = tmp_path / "pool1.keypool"
    save_pool(path, MASTER, _pool(64))
    with pytest.raises(KeyFileError, match="does not decrypt"):
        load_pool(path, bytes(32))
    blob = bytearray(path.read_bytes())
    blob[40] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(KeyFileError, match="does not decrypt"):
        load_pool(path, MASTER)
    path.write_bytes(b"not a pool")
    with pytest.raises(KeyFileError, match="not a tracer key pool"):
        load_pool(path, MASTER)


# -- revelation per key (a real ledger) -----------------------------------------------------------


@pytest.fixture
def ledger_ws(tmp_path):
    ws = init_workspace(tmp_path / "ws", passphrase=PASSPHRASE, scrypt=LOW_SCRYPT)
    return ws, ws.unlock(passphrase=PASSPHRASE)


def _session(ledger: Ledger, key, name: str, keys: list[int], sent: list[int], *, finished: bool) -> None:
    items = [("probe-start", {"session": name, "probe_set": "pool1", "keys": keys})]
    items += [("probe-sent", {"session": name, "idx": i, "try": 1, "pool": "pool1", "key": k}) for i, k in enumerate(sent)]
    items += [("probe-result", {"session": name, "verdict": "no_match"})] if finished else []
    ledger.append_many(items, key=key)


def test_fifty_endpoints_never_reuse_a_key_and_the_pool_warns_early(ledger_ws):
    ws, keyring = ledger_ws
    x, y = _data(60)
    pool = build_pool(MASTER, TASK, x, y, size=4096, dataset_fingerprint="f")
    shown: set[int] = set()
    warned_at = None
    with ws.ledger() as ledger:
        for n in range(60):
            keys, left = draw_keys(ledger, pool, os.urandom(32), 64)
            assert len(keys) == 64 and not shown & set(keys), f"endpoint {n} reused a key"
            shown |= set(keys)
            _session(ledger, keyring.signing_key, f"s{n}", keys, keys, finished=True)  # an innocent endpoint: every key sent
            if left.low and warned_at is None:
                warned_at = n
                assert left.warning() and "unrevealed" in left.warning()
        usage, _ = pool_usage(ledger, "pool1", 4096, 64)
    assert usage.revealed == 60 * 64 and usage.probes_left == 4
    assert warned_at == 64 - LOW_POOL_PROBES  # said while LOW_POOL_PROBES probes were still possible


def test_unfinished_sessions_hold_their_keys_and_finished_ones_release_unsent_keys(ledger_ws):
    ws, keyring = ledger_ws
    pool = _pool(8)
    with ws.ledger() as ledger:
        _session(ledger, keyring.signing_key, "open", [0, 1, 2], [0], finished=False)
        _session(ledger, keyring.signing_key, "done", [3, 4, 5], [3], finished=True)
        usage, taken = pool_usage(ledger, "pool1", 8, 2)
        assert taken == {0, 1, 2, 3}
        assert (usage.revealed, usage.reserved, usage.left) == (2, 2, 4)
        keys, _ = draw_keys(ledger, pool, b"seed", 8)
        assert sorted(keys) == [4, 5, 6, 7]


def test_automatic_keys_per_probe_is_128_or_the_whole_pool_and_unfinished_sessions_are_named_as_the_holders(ledger_ws):
    from tracer.config import AUTO_KEYS_PER_PROBE
    from tracer.fingerprint.revelation import keys_per_session

    assert FingerprintConfig().keys_per_probe == 0 and AUTO_KEYS_PER_PROBE == 128
    assert [keys_per_session(0, n) for n in (64, 128, 2048)] == [64, 128, 128]
    assert keys_per_session(40, 2048) == 40  # a value written out is kept
    assert "\nkeys_per_probe = 0 " in GENERIC_CONFIG  # what `tracer init` writes
    with pytest.raises(ConfigError, match=r"fingerprint.keys_per_probe must be 0 \(automatic\) or >= 8, not 5"):
        parse_config(tomllib.loads(GENERIC_CONFIG.replace("\nkeys_per_probe = 0 ", "\nkeys_per_probe = 5 ")), Path("."))
    ws, keyring = ledger_ws
    pool = _pool(8)
    with ws.ledger() as ledger:
        keys, left = draw_keys(ledger, pool, b"seed", 0)  # automatic, on a pool smaller than 128: the whole pool
        assert sorted(keys) == list(range(8)) and left.keys_per_probe == 8 and left.left == 0
        _session(ledger, keyring.signing_key, "open", keys, keys[:2], finished=False)  # interrupted: it holds the rest
        with pytest.raises(TracerError, match="held by unfinished probe sessions") as info:
            draw_keys(ledger, pool, b"other", 0)
        assert "--resume" in (info.value.hint or "")
        ledger.append("probe-result", {"session": "open", "verdict": "no_match"}, key=keyring.signing_key)
        again, _ = draw_keys(ledger, pool, b"other", 0)  # finished: its 6 unsent keys went back
        assert sorted(again) == sorted(keys[2:])


def test_an_exhausted_pool_refuses_with_a_hint(ledger_ws):
    ws, keyring = ledger_ws
    pool = _pool(8)
    with ws.ledger() as ledger:
        _session(ledger, keyring.signing_key, "all", list(range(8)), list(range(8)), finished=True)
        with pytest.raises(TracerError, match="every key of pool pool1 was already shown"):
            draw_keys(ledger, pool, b"seed", 4)


# -- the statistic, through the scoring path ------------------------------------------------------


@pytest.mark.parametrize("answers", ["random", "first-of-set", "mostly-outside"])
def test_simulated_null_of_the_pool_statistic_is_calibrated(answers):
    """Innocent customers (their labels never reached the model) get P[p <= u] <= u, whatever the model answers."""
    from tracer.identify.scoring import IssuedCustomer, score_answers

    x, y = _digits_like(300)
    task = TaskConfig(num_classes=3, input_shape=(1, 4, 4))
    pool = build_pool(MASTER, task, x, y, size=256, dataset_fingerprint="f")
    rng = np.random.default_rng(11)
    if answers == "random":
        ans = rng.integers(0, 3, pool.size)
    elif answers == "first-of-set":  # always inside S_i, the strongest null for a 1/2 test
        ans = pool.label_sets[:, 0].copy()
    else:
        ans = np.where(rng.random(pool.size) < 0.8, 3 - pool.label_sets.sum(1), pool.label_sets[:, 1])  # the third class, mostly
    customers = [IssuedCustomer(f"c{i}", f"c{i}", (pool.id,)) for i in range(3000)]
    res = score_answers(MASTER, customers, [pool], {pool.id: ans}, num_classes=3, alpha=1e-6, queries=pool.size, model_sha256=None)
    p = np.array([c.p_value for c in res.candidates[:]])
    trials = {c.trials for c in res.candidates[:]}
    assert trials == {int(pool.scored(ans).sum())}  # the same in-set answers are trials for every customer
    for u in (0.01, 0.05, 0.2):
        assert (p <= u).mean() <= u + 3 * np.sqrt(u * (1 - u) / len(p)), u
    assert res.verdict == "no_match" and res.label_choices == 2


def test_config_refuses_more_keys_per_probe_than_the_pool_holds(tmp_path):
    from tracer.config import load_config
    from tracer.examples import example_config

    path = tmp_path / "tracer.toml"
    path.write_text(example_config("digits").replace("pool_size = 2048", "pool_size = 64").replace("keys_per_probe = 0 ", "keys_per_probe = 65 "))
    with pytest.raises(ConfigError, match="keys_per_probe.*more than pool_size"):
        load_config(path)
    path.write_text(example_config("digits").replace('style = "uniform-grid/v1"', 'style = "natural-mix/v9"'))
    with pytest.raises(ConfigError, match="style"):
        load_config(path)


def test_the_automatic_pool_size_follows_the_training_rows():
    auto = FingerprintConfig()
    assert auto.pool_size == 0
    # two keys per row, in steps of 64, within 64..2048: the README quickstart's wine (95 rows), the digits data (959 rows)
    assert [auto.pool_size_for(n) for n in (1, 40, 95, 96, 959, 1024, 5000)] == [64, 64, 128, 192, 1856, 2048, 2048]
    assert FingerprintConfig(pool_size=300).pool_size_for(95) == 300  # a size written out is kept
    text = GENERIC_CONFIG.replace("\npool_size = 0 ", "\npool_size = 10")
    with pytest.raises(ConfigError, match=r"fingerprint.pool_size must be 0 \(automatic\) or >= 64, not 10"):
        parse_config(tomllib.loads(text), Path("."))


def test_an_automatic_pool_is_built_to_its_size_stored_and_then_fixed(tmp_path):
    x, y = _digits_like(200)  # 200 rows: 384 keys
    config = SimpleNamespace(task=TaskConfig(num_classes=3, input_shape=(1, 4, 4)), fingerprint=FingerprintConfig())
    pool = open_pool(config, MASTER, tmp_path, data=lambda: (x, y, "f"))
    assert pool.size == 384 and load_pool(tmp_path / "pool1.keypool", MASTER).digest() == pool.digest()
    more = open_pool(config, MASTER, tmp_path, data=lambda: (np.concatenate([x, x]), np.concatenate([y, y]), "f2"))
    assert more.digest() == pool.digest()  # stored: more rows later do not change the keys issued copies carry
    greedy = SimpleNamespace(task=config.task, fingerprint=FingerprintConfig(keys_per_probe=400))
    with pytest.raises(ConfigError, match="keys_per_probe is 400, more than the 384 keys of the pool built from 200 training rows"):
        open_pool(greedy, MASTER, tmp_path / "other", data=lambda: (x, y, "f"))
    assert not (tmp_path / "other").exists()


def test_the_low_pool_warning_tells_a_pool_small_from_the_start_from_one_used_up():
    from tracer.fingerprint.revelation import PoolUsage

    fresh = PoolUsage("pool1", 128, revealed=0, reserved=0, keys_per_probe=40).warning()
    assert fresh.startswith("key pool pool1: 128 of 128 keys are unrevealed, enough for at least 3 more probed endpoint(s); the pool is small")
    assert "2 keys per training row" in fresh and "fresh workspace" not in fresh
    used = PoolUsage("pool1", 2048, revealed=1800, reserved=0, keys_per_probe=40).warning()
    assert used.startswith("key pool pool1: 248 of 2048 keys are unrevealed, enough for at least 6 more") and "plan a fresh workspace" in used
    assert PoolUsage("pool1", 2048, revealed=0, reserved=0, keys_per_probe=40).warning() is None
