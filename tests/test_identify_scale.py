"""Identification at scale (issue 16): the encrypted customer table and codeword matrices, extended incrementally.

Real SQLite ledgers and real key files; the customers are real signed issuance records without a
model (scoring needs only their codewords), the suspect's answers are arrays. Every cached result
is compared with the uncached computation (one query over the whole ledger, codewords derived).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tracer.fingerprint.cache as cache_mod
from tests._constants import LOW_SCRYPT, PASSPHRASE
from tracer.fingerprint import codeword, make_probe_set
from tracer.fingerprint.cache import cached_codewords
from tracer.identify.scoring import issued_customers, refresh_cache, score_answers
from tracer.ledger import Ledger
from tracer.workspace import Workspace


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    from tracer.examples import example_config
    from tracer.workspace import init_workspace

    root = tmp_path_factory.mktemp("ident-scale") / "ws"
    init_workspace(root, passphrase=PASSPHRASE, config_text=example_config("digits", key_style="uniform-grid/v1"), scrypt=LOW_SCRYPT)
    return root


@pytest.fixture
def ws(template, tmp_path) -> Workspace:
    shutil.copytree(template, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def _keyring(ws: Workspace):
    return ws.unlock(passphrase=PASSPHRASE)


def _sets(ws: Workspace, keyring):
    cfg = ws.config
    return [make_probe_set(keyring.master, f"ps{i}", cfg.task, cfg.probes_per_set) for i in (1, 2)]


def _issue(ws: Workspace, keyring, records: list[tuple[str, tuple[str, ...], bool]]) -> None:
    """Signed issuance entries: (customer id, probe-set ids, registers the customer)."""
    sets = {ps.id: ps for ps in _sets(ws, keyring)}
    items = [("issuance", {"customer_id": cid, "display_name": f"Customer {cid.upper()}", "new_customer": new,
                           "model_sha256": f"{i:064x}", "model_path": f"paper/{cid}-{i}.onnx",
                           "probe_sets": [{"id": s, "size": sets[s].size, "digest": sets[s].digest()} for s in ids]})
             for i, (cid, ids, new) in enumerate(records)]
    with ws.ledger() as ledger:
        ledger.append_many(items, key=keyring.signing_key)


def _answers(ws: Workspace, keyring, leaked: str) -> dict[str, np.ndarray]:
    """A suspect that answers ps1 with ``leaked``'s codeword and ps2 at random."""
    c = ws.config.task.num_classes
    ps1, ps2 = _sets(ws, keyring)
    rng = np.random.default_rng(7)
    return {"ps1": codeword(keyring.master, leaked, "ps1", ps1.size, c), "ps2": rng.integers(0, c, ps2.size)}


def _score(ws: Workspace, keyring, *, cached: bool, answers: dict[str, np.ndarray]) -> dict:
    with ws.ledger(readonly=True) as ledger:
        table = issued_customers(ledger, master=keyring.master, cache_dir=ws.cache_dir) if cached else issued_customers(ledger)
    r = score_answers(keyring.master, table, _sets(ws, keyring), answers, num_classes=ws.config.task.num_classes,
                      alpha=1e-6, queries=128, model_sha256=None, cache_dir=ws.cache_dir if cached else None)
    return {"table": [(c.customer_id, c.display_name, c.probe_sets) for c in table], "result": r.full()}


MIXED = [("a", ("ps1", "ps2"), True), ("b", ("ps1",), True), ("c", ("ps2",), True), ("d", ("ps1", "ps2"), True),
         ("b", ("ps2",), False),  # reissued with the other set
         ("x", ("ps2",), False),  # an issuance before its customer is registered ...
         ("e", ("ps1",), True), ("x", ("ps1",), True)]  # ... and the registration


def test_cached_table_and_scores_equal_the_uncached_computation_on_a_mixed_workspace(ws):
    keyring = _keyring(ws)
    _issue(ws, keyring, MIXED)
    answers = _answers(ws, keyring, "d")
    want = _score(ws, keyring, cached=False, answers=answers)
    assert want["result"]["customers"] == ["d"]
    assert dict((c, s) for c, _, s in want["table"])["x"] == ("ps1", "ps2")
    assert _score(ws, keyring, cached=True, answers=answers) == want  # cold: built from the ledger
    assert _score(ws, keyring, cached=True, answers=answers) == want  # warm: read back
    for batch in ([("f", ("ps2",), True), ("a", ("ps1",), False)], [("c", ("ps1",), False)], [("g", ("ps1", "ps2"), True)] * 1):
        _issue(ws, keyring, batch)  # incrementally: reissues, new customers, one at a time
        assert _score(ws, keyring, cached=True, answers=answers) == _score(ws, keyring, cached=False, answers=answers)


class _Counter:
    """Counts the codeword rows the cache derives."""

    def __init__(self, monkeypatch) -> None:
        self.rows: dict[str, int] = {}
        real = cache_mod.codewords

        def counted(master, ids, set_id, count, bound):
            self.rows[set_id] = self.rows.get(set_id, 0) + len(ids)
            return real(master, ids, set_id, count, bound)

        monkeypatch.setattr(cache_mod, "codewords", counted)


def test_a_new_issuance_derives_one_row_per_key_set_and_reads_only_the_new_entries(ws, monkeypatch):
    keyring = _keyring(ws)
    _issue(ws, keyring, [(f"c{i:03d}", ("ps1", "ps2"), True) for i in range(300)])
    answers = _answers(ws, keyring, "c007")
    first = _score(ws, keyring, cached=True, answers=answers)
    counter = _Counter(monkeypatch)
    with ws.ledger() as ledger:
        head = ledger.head()[0]
    _issue(ws, keyring, [("newcomer", ("ps1", "ps2"), True)])
    after: list[int] = []
    real_after = Ledger.issuances_after
    monkeypatch.setattr(Ledger, "issuances_after", lambda self, seq: after.append(seq) or real_after(self, seq))
    monkeypatch.setattr(Ledger, "issued_customers", lambda self: pytest.fail("the whole ledger was queried"))
    second = _score(ws, keyring, cached=True, answers=answers)
    assert counter.rows == {"ps1": 1, "ps2": 1}
    assert after == [head]  # only the entries after the stored head
    assert second["table"][:-1] == first["table"] and second["table"][-1][0] == "newcomer"
    assert second["result"]["customers"] == ["c007"]
    counter.rows.clear()
    assert _score(ws, keyring, cached=True, answers=answers) == second and counter.rows == {}


def test_segments_stay_few_and_each_append_writes_one_small_segment(ws):
    keyring = _keyring(ws)
    answers = _answers(ws, keyring, "c000")
    sizes = []
    for i in range(40):
        _issue(ws, keyring, [(f"c{i:03d}", ("ps1", "ps2"), True)])
        _score(ws, keyring, cached=True, answers=answers)
        sizes.append(len(list((ws.cache_dir / "codewords-ps1-64x10").glob("*.seg"))))
    assert max(sizes) <= 7  # log2(40) + 1: merged as a binary counter, never one file per issuance
    assert _score(ws, keyring, cached=True, answers=answers) == _score(ws, keyring, cached=False, answers=answers)


def _segments(ws: Workspace) -> list[Path]:
    return sorted(ws.cache_dir.rglob("*.seg"))


def test_a_tampered_cache_is_discarded_and_rebuilt_with_identical_results(ws):
    keyring = _keyring(ws)
    _issue(ws, keyring, MIXED)
    answers = _answers(ws, keyring, "a")
    want = _score(ws, keyring, cached=False, answers=answers)
    _score(ws, keyring, cached=True, answers=answers)
    for seg in _segments(ws):
        blob = bytearray(seg.read_bytes())
        blob[-20] ^= 1  # one bit of ciphertext
        seg.write_bytes(bytes(blob))
    tampered = {p.name for p in _segments(ws)}
    assert _score(ws, keyring, cached=True, answers=answers) == want  # this process may hold the authentic segments
    cache_mod._OPENED.clear()  # a new process reads the files
    assert _score(ws, keyring, cached=True, answers=answers) == want
    assert tampered.isdisjoint(p.name for p in _segments(ws))  # rebuilt: none of the tampered files is left


def test_a_cache_from_another_master_secret_is_not_trusted(ws, tmp_path):
    from tracer.examples import example_config
    from tracer.workspace import init_workspace

    other = init_workspace(tmp_path / "other", passphrase=PASSPHRASE, config_text=example_config("digits", key_style="uniform-grid/v1"), scrypt=LOW_SCRYPT)
    okeys = other.unlock(passphrase=PASSPHRASE)
    _issue(other, okeys, MIXED)
    _score(other, okeys, cached=True, answers=_answers(other, okeys, "a"))
    keyring = _keyring(ws)
    _issue(ws, keyring, MIXED)
    answers = _answers(ws, keyring, "a")
    shutil.copytree(other.cache_dir, ws.cache_dir)
    assert _score(ws, keyring, cached=True, answers=answers) == _score(ws, keyring, cached=False, answers=answers)
    assert _score(ws, keyring, cached=True, answers=answers)["result"]["customers"] == ["a"]


def test_a_replaced_ledger_invalidates_the_customer_table(ws, tmp_path):
    keyring = _keyring(ws)
    twin = Workspace(shutil.copytree(ws.root, tmp_path / "twin"))  # same keys, same genesis entry
    _issue(ws, keyring, MIXED)
    _issue(twin, keyring, [("zed", ("ps1", "ps2"), True), ("a", ("ps1",), True)])
    answers = _answers(ws, keyring, "a")
    _score(ws, keyring, cached=True, answers=answers)
    shutil.rmtree(twin.cache_dir, ignore_errors=True)
    shutil.copytree(ws.cache_dir, twin.cache_dir)  # the cache of a ledger with other entries at the same seqs
    got = _score(twin, keyring, cached=True, answers=answers)
    assert got == _score(twin, keyring, cached=False, answers=answers)
    assert [c for c, _, _ in got["table"]] == ["zed", "a"]


def test_deleting_the_cache_is_safe(ws):
    keyring = _keyring(ws)
    _issue(ws, keyring, MIXED)
    answers = _answers(ws, keyring, "b")
    first = _score(ws, keyring, cached=True, answers=answers)
    shutil.rmtree(ws.cache_dir)
    assert _score(ws, keyring, cached=True, answers=answers) == first


def test_a_read_only_cache_folder_still_identifies_and_writes_nothing(ws, monkeypatch):
    keyring = _keyring(ws)
    _issue(ws, keyring, MIXED)
    answers = _answers(ws, keyring, "c")
    _score(ws, keyring, cached=True, answers=answers)
    _issue(ws, keyring, [("late", ("ps1", "ps2"), True)])  # the cache is now behind
    before = {p: p.read_bytes() for p in _segments(ws)}
    folders = [ws.cache_dir, *[p for p in ws.cache_dir.rglob("*") if p.is_dir()]]
    for d in folders:
        d.chmod(0o500)
    if os.geteuid() == 0:  # root writes through permission bits: the folder refuses as a read-only mount would

        def refuse(*_a, **_k):
            raise PermissionError(13, "Read-only file system")

        monkeypatch.setattr(cache_mod, "_publish", refuse)
        monkeypatch.setattr(cache_mod, "_unlink", lambda path: None)  # what the real one does when refused
    try:
        got = _score(ws, keyring, cached=True, answers=answers)
    finally:
        for d in folders:
            d.chmod(0o700)
    assert got == _score(ws, keyring, cached=False, answers=answers)
    assert {p: p.read_bytes() for p in _segments(ws)} == before


def test_cached_codewords_keeps_its_meaning_for_any_ids_in_any_order(ws):
    keyring = _keyring(ws)
    m, folder = keyring.master, ws.cache_dir
    ids = [f"k{i}" for i in range(20)]
    for request in (ids[:5], ids, ids[::-1], ids[3:9] + ["k3", "new"], ["solo"], ids + ["new", "more"]):
        got = cached_codewords(m, request, "ps9", 40, 7, folder=folder)
        assert got.dtype == np.int16
        assert np.array_equal(got, np.stack([codeword(m, c, "ps9", 40, 7) for c in request]))
    wide = cached_codewords(m, ids[:3], "big", 8, 1000, folder=folder)  # a bound beyond one byte
    assert np.array_equal(wide, np.stack([codeword(m, c, "big", 8, 1000) for c in ids[:3]]))


def test_refresh_cache_brings_table_and_matrices_up_to_the_ledger(ws, monkeypatch):
    keyring = _keyring(ws)
    _issue(ws, keyring, MIXED)
    with ws.ledger(readonly=True) as ledger:
        refresh_cache(ledger, keyring.master, _sets(ws, keyring), num_classes=10, folder=ws.cache_dir)
    counter = _Counter(monkeypatch)
    answers = _answers(ws, keyring, "e")
    assert _score(ws, keyring, cached=True, answers=answers)["result"]["customers"] == ["e"]
    assert counter.rows == {}  # nothing left to derive


def test_holm_on_the_rejectable_p_values_only_is_holm_over_every_customer():
    from tracer.fingerprint.stats import holm

    rng = np.random.default_rng(3)
    for n, alpha in ((1, 0.05), (50, 0.05), (1000, 1e-3), (5000, 1e-6)):
        p = np.concatenate([rng.random(n) ** 8, np.full(3, alpha), np.full(3, alpha / (n + 3))])
        rng.shuffle(p)
        assert np.array_equal(holm(np.where(p <= alpha, p, 1.0), alpha), holm(p, alpha))


def test_a_failing_cache_update_never_fails_an_issuance(ws, monkeypatch):
    from types import SimpleNamespace

    import tracer.identify.scoring as scoring
    from tracer.embedding.issue import Issuer

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scoring, "refresh_cache", broken)
    issuer = SimpleNamespace(ws=ws, keyring=_keyring(ws), probe_sets=[], config=ws.config)
    Issuer._refresh_cache(issuer)  # type: ignore[arg-type]  # returns: the landed copy stands


def test_issuing_extends_the_cache_so_the_next_identification_derives_nothing(issued_tabular_copy, monkeypatch):
    from tracer.identify import identify_model

    ws = Workspace(issued_tabular_copy)
    keyring = _keyring(ws)
    assert list((ws.cache_dir / "customers").glob("*.seg"))  # written when the copies landed
    counter = _Counter(monkeypatch)
    monkeypatch.setattr(Ledger, "issued_customers", lambda self: pytest.fail("the whole ledger was queried"))
    result = identify_model(ws, keyring, ws.root / "models" / "issued" / "acme.onnx")
    assert result.customers == ["acme"] and result.family_size == 3
    assert counter.rows == {}
