"""The evasion attack group: OOD detectors fitted on the leaker's share, the query filter, the suite rows, a probe through a filter server.

Detectors are tested on the bundled data directly (no workspace): uniform
noise on the input grid (today's key style) must be told apart from
validation inputs, and natural inputs the detector never saw must not be.
The suite and the probe run on the cached issued tabular workspace.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures_issued import PASSPHRASE, issued_tabular, issued_tabular_copy
from tracer.config import TaskConfig, parse_config
from tracer.evaluate.detectors import (
    DETECTORS,
    AutoencoderDetector,
    Detector,
    StatsDetector,
    auc,
    detector_figures,
    filter_scores,
    filtered_predictor,
    make_detector,
)


def _example(name: str):
    from tracer.examples import digits, example_config, tabular

    cfg = parse_config(tomllib.loads(example_config(name)), Path("."))
    return cfg.task, (digits if name == "digits" else tabular).load_data()


def _noise(task: TaskConfig, n: int) -> np.ndarray:
    from tracer.fingerprint import make_probe_set

    return make_probe_set(b"\x07" * 32, "ps1", task, n).inputs  # uniform on the input grid: today's keys


@pytest.fixture(scope="module")
def digits_model():
    from tracer.examples.digits import make_model
    from tracer.training import train_classifier

    _, data = _example("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small CNN on a shared CPU: more threads only contend
    try:
        torch.manual_seed(0)
        return train_classifier(make_model(), data["x_train"], data["y_train"], epochs=5, lr=3e-3, seed=0, device="cpu").eval()
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the AUC


def test_auc_is_the_exact_mann_whitney_statistic():
    assert auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert auc([0.0], [1.0]) == 0.0
    assert auc([1.0, 1.0], [1.0]) == 0.5  # ties count half
    assert auc([1.0, 3.0], [2.0]) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=40)
    assert auc(a, b) == pytest.approx(np.mean(a[:, None] > b[None, :]))


# --------------------------------------------------------------------------- detectors


@pytest.mark.parametrize("detector", DETECTORS)
def test_digits_detectors_flag_noise_and_pass_natural_inputs(detector, digits_model):
    task, data = _example("digits")
    det = make_detector(detector, task=task, model=digits_model, seed=0).fit(data["x_attack"], data["y_attack"])
    noise, val = _noise(task, 96), data["x_val"]
    assert auc(det.score(noise), det.score(val)) > 0.97  # noise keys are told apart
    assert 0.4 < auc(det.score(data["x_train"]), det.score(val)) < 0.6  # natural inputs it never saw are not
    assert det.flags(val).mean() <= 0.03  # about 0.5 % by the threshold's construction; the range rule a little more
    if detector != "mahalanobis":  # penultimate features of a small CNN rank noise high, but not all of it above the threshold
        assert det.flags(noise).mean() >= 0.9
    assert np.array_equal(det.flags(noise[:5]), np.array([det.flags(noise[i : i + 1])[0] for i in range(5)]))  # one by one = in a batch


@pytest.mark.parametrize("detector", ["knn", "stats", "autoencoder"])
def test_tabular_detectors_tell_noise_from_natural_inputs(detector):
    task, data = _example("tabular")
    det = make_detector(detector, task=task, seed=0).fit(data["x_attack"], data["y_attack"])
    noise, val = _noise(task, 96), data["x_val"]
    assert auc(det.score(noise), det.score(val)) > 0.95
    assert 0.35 < auc(det.score(data["x_train"]), det.score(val)) < 0.65


def test_detectors_are_deterministic_and_fit_on_a_held_out_split():
    task, data = _example("tabular")
    a = AutoencoderDetector(task, seed=3, steps=150).fit(data["x_attack"])
    b = AutoencoderDetector(task, seed=3, steps=150).fit(data["x_attack"])
    assert np.array_equal(a.score(data["x_val"]), b.score(data["x_val"])) and a.threshold == b.threshold
    assert a.fit_size + a.held_out_size == len(data["x_attack"]) and a.held_out_size == round(len(data["x_attack"]) / 4)
    torch.manual_seed(11)
    expected = torch.rand(1)
    torch.manual_seed(11)
    AutoencoderDetector(task, seed=0, steps=20).fit(data["x_attack"])
    assert torch.equal(torch.rand(1), expected)  # torch's global RNG left alone
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("bogus", task=task)


def test_stats_range_rule_flags_exactly_what_lies_outside_the_leakers_range():
    task = TaskConfig(num_classes=2, input_shape=(4,), domain="tabular", low=(-4.0,), high=(4.0,))
    rng = np.random.default_rng(1)
    own = rng.normal(size=(200, 4)).astype(np.float32)
    det = StatsDetector(task).fit(own)
    assert not det.flags(own).any()  # its own inputs span the range
    far = own[:3] * 10.0
    assert det.flags(far).all()
    s = det.stats(np.concatenate([own, far]))
    outside = ((s < det.lo) | (s > det.hi)).any(1)
    assert np.array_equal(outside, det.flags(np.concatenate([own, far])))


# --------------------------------------------------------------------------- the filter


class _Fixed(Detector):
    """Flags the rows whose first feature is positive."""

    name = "fixed"
    threshold = 0.0

    def score(self, x):
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:, 0]


def test_filter_answers_runner_up_or_random_on_flagged_queries_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    scores = rng.normal(size=(400, 5)).astype(np.float32)
    flagged = x[:, 0] > 0
    order = np.argsort(-scores, axis=1)
    out = filter_scores(x, scores, flagged, answer="runner-up")
    assert np.array_equal(out.argmax(1)[flagged], order[flagged, 1])
    assert np.array_equal(out[~flagged], scores[~flagged])
    assert np.allclose(np.sort(out, 1), np.sort(scores, 1))  # the same scores, two swapped

    rand = filter_scores(x, scores, flagged, answer="random", seed=4).argmax(1)
    assert np.array_equal(rand[~flagged], order[~flagged, 0])
    assert np.array_equal(rand, filter_scores(x, scores, flagged, answer="random", seed=4).argmax(1))  # asked again: same answer
    counts = np.bincount(rand[flagged], minlength=5)
    assert counts.min() > 0.1 * flagged.sum()  # every class drawn (uniform over all 5)
    assert not np.array_equal(rand, filter_scores(x, scores, flagged, answer="random", seed=5).argmax(1))

    predict = filtered_predictor(lambda q: scores[: len(q)], _Fixed(), answer="runner-up")
    assert np.array_equal(predict(x).argmax(1), out.argmax(1))
    with pytest.raises(ValueError, match="unknown filter answer"):
        filter_scores(x, scores, flagged, answer="copy")


def test_detector_figures_report_auc_and_flagged_shares():
    keys = np.array([[1.0], [2.0], [-1.0]])
    natural = np.array([[-1.0], [-2.0], [0.5], [-3.0]])
    fig = detector_figures(_Fixed(), keys, natural)
    assert fig["keys"] == 3 and fig["keys_flagged"] == pytest.approx(2 / 3)
    assert fig["decoys"] == 4 and fig["decoys_flagged"] == 0.25
    assert fig["auc"] == pytest.approx(auc(keys[:, 0], natural[:, 0]))
    assert fig["separation"] == pytest.approx(max(fig["auc"], 1 - fig["auc"]))
    low, high = fig["auc_interval"]
    assert 0.5 < low < fig["auc"] <= high <= 1.0 and fig["separation_interval"] == [low, high]  # wholly above 0.5: the same interval
    assert detector_figures(_Fixed(), None, natural)["auc_interval"] is None


def test_keys_scoring_lower_than_natural_inputs_still_count_as_separated():
    """A detector under which keys look *more* ordinary (AUC below 0.5) separates them as well as its mirror image."""
    keys = np.array([[-5.0], [-4.0], [-3.0]])
    natural = np.array([[1.0], [2.0], [-3.5], [3.0]])
    low, high = detector_figures(_Fixed(), keys, natural), detector_figures(_Fixed(), -keys, -natural)
    assert low["auc"] < 0.5 < high["auc"]
    assert low["separation"] == pytest.approx(high["separation"]) == pytest.approx(1 - low["auc"])


# --------------------------------------------------------------------------- the suite and the probe


def _open(root):
    from tracer.workspace import Workspace

    ws = Workspace(root)
    return ws, ws.unlock(passphrase=PASSPHRASE)


def test_evasion_group_resolves_and_erases_todays_noise_keys(issued_tabular):
    from tracer.evaluate import GROUPS, run_suite
    from tracer.evaluate.attacks import resolve_attacks
    from tracer.evaluate.tables import suite_table

    names = resolve_attacks("evasion")
    assert names == GROUPS["evasion"] and len(names) == 8
    assert {f"evade-{d}" for d in DETECTORS} | {f"evade-{d}-random" for d in DETECTORS} == set(names)
    assert set(names) <= set(resolve_attacks("all"))
    ws, keyring = _open(issued_tabular)
    suite = run_suite(ws, keyring, attacks="evasion", probe_evasion=False)
    assert [a.name for a in suite.attacks] == names
    for a in suite.attacks:
        e = a.evasion
        assert not a.named_others, a
        # Only flagged queries get another answer, and the clean accuracy is read on the same natural inputs, so a filter costs
        # the leaker at most the share of them it flags: the row can be invalid only when that share is above the accuracy budget (5 points).
        assert a.valid or e["decoys_flagged"] > suite.budget, a
        if e["detector"] in ("knn", "stats"):  # today's noise keys: all but a few flagged, and the watermark gone
            assert a.verdict == "erased" and e["keys_flagged"] > 0.95, a
        assert e["auc"] > 0.95 and e["keys"] == 2 * ws.config.probes_per_set and e["decoys"] == suite.validation_size
        # The threshold is the 99.5th percentile of the leaker's ~28 held-out inputs, about their maximum, so the share of
        # natural inputs above it is random, Beta(1, n)-like with mean 1 / (n + 1); the Mahalanobis filter (the copy's features)
        # draws it anew with each fixture's master key (seen: 12 of 228 = 0.053). 6 / (n + 1) is exceeded with chance
        # (1 - 6 / (n + 1)) ** n, 0.15 % at n = 28.
        n = a.params.get("held_out")  # the statistics filter has none: it flags what lies outside the range of all the leaker's inputs
        assert e["decoys_flagged"] <= (0.05 if n is None else max(0.05, 6 / (n + 1))) and e["probe"] is None
    runner_up = {a.name: a for a in suite.attacks}["evade-knn"]
    assert runner_up.agreement < 0.05  # two classes: the runner-up answer is the other label, so keys anti-match
    doc = json.loads(json.dumps(suite.to_json()))
    assert doc["attacks"][0]["evasion"]["detector"] == "knn" and doc["reference"]["evasion"] is None
    table = suite_table(suite)
    assert "evasion filters" in table and "AUC keys/natural" in table and "95 %" in table and "not run" in table
    knn = runner_up.evasion
    assert knn["separation_interval"][0] <= knn["separation"] <= knn["separation_interval"][1]
    assert f"{knn['separation_interval'][0]:.2f}-{knn['separation_interval'][1]:.2f}" in table


def test_probe_in_the_suite_runs_on_a_scratch_ledger(issued_tabular_copy):
    from tracer.evaluate import run_suite
    from tracer.evaluate.evaluation import Evaluation
    from tracer.evaluate.html import render_html

    ws, keyring = _open(issued_tabular_copy)
    with ws.ledger() as ledger:
        before = ledger.count()
    suite = run_suite(ws, keyring, attacks="evade-stats")
    with ws.ledger() as ledger:
        assert ledger.count() == before and not list(ledger.entries(kind="probe-set-revealed"))  # nothing spent, nothing journaled
    probe = suite.attacks[0].evasion["probe"]
    assert probe["verdict"] == "no_match" and probe["named"] == [] and probe["flagged"] >= probe["trigger_queries"] > 0
    assert probe["requests"] >= probe["trigger_queries"] + probe["decoy_queries"]
    page = render_html(Evaluation(suite))
    assert "Query filters" in page and "no_match" in page


def test_probe_through_the_loopback_filter_server_gets_the_filtered_answers(issued_tabular_copy):
    from tracer.data import load_dataset
    from tracer.evaluate.attacks import onnx_predictor
    from tracer.examples.servers import FilterServer
    from tracer.fingerprint import make_probe_set
    from tracer.probing import make_format, probe_endpoint
    from tracer.probing.plan import input_sha256

    ws, keyring = _open(issued_tabular_copy)
    task, data = ws.config.task, load_dataset(ws.config)
    onnx = (ws.root / "models" / "issued" / "acme.onnx").read_bytes()
    det = make_detector("knn", task=task).fit(data.x_attack)
    with FilterServer(onnx, task, "kserve-v1", label_only=True, flags=det.flags, on_flag="runner-up") as server:
        result = probe_endpoint(ws, keyring, server.url, make_format("kserve-v1", task))
    assert result.verdict == "no_match" and result.customers == []
    ps = make_probe_set(keyring.master, "ps1", task, ws.config.probes_per_set)
    inputs = {input_sha256(x, task.input_dtype): x for x in np.concatenate([ps.inputs, data.x_val])}
    expected = filtered_predictor(onnx_predictor(onnx), det, answer="runner-up")
    with ws.ledger() as ledger:
        answered = [e.payload for e in ledger.entries(kind="probe-query")]
    # every trigger sent was flagged but for the stray few the last line allows (the server also counts flagged decoys)
    assert answered and server.flagged >= sum(q["kind"] == "trigger" for q in answered) - 2
    for q in answered:
        x = inputs[q["input_sha256"]][None]
        assert q["answer"] == int(expected(x).argmax(1)[0]), q
        if det.flags(x)[0]:  # two classes: the runner-up is the other one
            assert q["answer"] != int(onnx_predictor(onnx)(x).argmax(1)[0])
    # noise keys: the filter flags them, all but a stray few: over 1000 fresh key sets of this example 40 of 224,000 noise
    # keys fell inside the kNN threshold, never more than 2 in one set (39 sets of 1000 held one: "every one sent" failed when such a key was sent)
    sent = [q for q in answered if q["kind"] == "trigger"]
    assert sent and sum(not det.flags(inputs[q["input_sha256"]][None])[0] for q in sent) <= 2
