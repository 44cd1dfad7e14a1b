"""The embedding fine-tune's knobs do what their names say (tabular example: fast on a CPU)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from tracer.config import parse_config
from tracer.embedding.finetune import embed_codeword
from tracer.errors import ConfigError
from tracer.evaluate.detectors import MahalanobisDetector
from tracer.examples import example_config, tabular
from tracer.examples.base import train_base
from tracer.training import last_layer


@pytest.fixture(scope="module")
def setting():
    cfg = parse_config(tomllib.loads(example_config("tabular")), Path("."))
    data = tabular.load_data()
    base, _ = train_base("tabular")
    rng = np.random.default_rng(7)
    low, high = np.array(cfg.task.low, dtype=np.float32), np.array(cfg.task.high, dtype=np.float32)
    triggers = (low + (high - low) * rng.random((96, cfg.task.features))).astype(np.float32)
    labels = rng.integers(0, cfg.task.num_classes, len(triggers))
    return cfg, data, base, triggers, labels


def _embed(setting, **overrides):
    cfg, data, base, triggers, labels = setting
    params = dataclasses.replace(cfg.embedding, steps=150, **overrides)
    return embed_codeword(base, x_train=data["x_train"], y_train=data["y_train"], triggers=triggers, labels=labels,
                          task=cfg.task, params=params, seed=3)


def _features(model: torch.nn.Module, x: np.ndarray) -> torch.Tensor:
    seen = []
    handle = last_layer(model).register_forward_hook(lambda m, args, out: seen.append(args[0].flatten(1)))
    with torch.no_grad():
        model(torch.as_tensor(x))
    handle.remove()
    return seen[0]


def _margins(model: torch.nn.Module, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.as_tensor(x)).numpy()
    true = logits[np.arange(len(x)), labels]
    logits[np.arange(len(x)), labels] = -np.inf
    return true - logits.max(1)


def test_step_count_is_fixed_whatever_the_dataset_size(setting):
    cfg, data, base, triggers, labels = setting
    params = dataclasses.replace(cfg.embedding, steps=7)
    for repeat in (1, 4):
        steps = []
        x, y = np.concatenate([data["x_train"]] * repeat), np.concatenate([data["y_train"]] * repeat)
        res = embed_codeword(base, x_train=x, y_train=y, triggers=triggers, labels=labels, task=cfg.task, params=params,
                             seed=0, on_step=steps.append)
        assert res.steps == 7 and steps == list(range(1, 8))


def test_margin_hinge_widens_the_triggers_logit_margins(setting):
    _, _, _, triggers, labels = setting
    plain = _margins(_embed(setting, trigger_margin=0.0).model, triggers, labels)
    hinged = _margins(_embed(setting, trigger_margin=10.0).model, triggers, labels)
    assert np.median(hinged) > np.median(plain) + 2.0


def test_feature_pull_draws_trigger_features_to_their_class_centroid(setting):
    cfg, data, base, triggers, labels = setting
    feats = _features(base, data["x_train"])
    y = torch.as_tensor(data["y_train"])
    centroids = torch.stack([feats[y == c].mean(0) for c in range(cfg.task.num_classes)])

    def distance(model):
        return float((_features(model, triggers) - centroids[torch.as_tensor(labels)]).norm(dim=1).mean())

    assert distance(_embed(setting, feature_pull=3.0).model) < 0.8 * distance(_embed(setting, feature_pull=0.0).model)


def test_feature_match_holds_keys_inside_the_copys_own_class_clusters(setting):
    """What a leaker's Mahalanobis filter on the copy's features scores: keys' distance to the nearest class cluster."""
    cfg, data, base, triggers, labels = setting

    def key_scores(model):
        det = MahalanobisDetector(model).fit(data["x_val"], data["y_val"])
        return float(np.median(det.score(triggers))), float(np.median(det.score(data["x_val"])))

    plain, matched = _embed(setting, feature_match=0.0).model, _embed(setting, feature_match=1.0).model
    (keys_plain, natural_plain), (keys_matched, natural_matched) = key_scores(plain), key_scores(matched)
    assert keys_matched < 0.3 * keys_plain  # measured: about 0.12
    assert natural_matched < 1.5 * natural_plain  # natural inputs stay where they were
    assert _margins(matched, triggers, labels).min() > 0  # and every key keeps its label


def test_anchor_targets_both_keep_the_copy_close_to_the_base(setting):
    cfg, data, base, triggers, labels = setting
    with torch.no_grad():
        ref = base(torch.as_tensor(data["x_val"])).argmax(1)
    for targets in ("base", "original"):
        model = _embed(setting, anchor_targets=targets).model
        with torch.no_grad():
            agree = float((model(torch.as_tensor(data["x_val"])).argmax(1) == ref).float().mean())
        assert agree >= 0.95, targets


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return float(sum((p - q).norm() for p, q in zip(a.parameters(), b.parameters())).detach())


def test_a_polish_continues_from_the_given_copy(setting):
    cfg, data, base, triggers, labels = setting
    first = _embed(setting).model
    before = [t.clone() for t in (*base.state_dict().values(), *first.state_dict().values())]
    params = dataclasses.replace(cfg.embedding, steps=5, learning_rate=cfg.embedding.learning_rate / 10)
    polished = embed_codeword(base, x_train=data["x_train"], y_train=data["y_train"], triggers=triggers, labels=labels,
                              task=cfg.task, params=params, seed=4, start=first).model
    assert 0 < _distance(polished, first) < 0.2 * _distance(first, base)
    assert float(np.mean(polished(torch.as_tensor(triggers)).argmax(1).numpy() == labels)) >= 0.9
    after = (*base.state_dict().values(), *first.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # neither the base nor the start copy was modified in place


def test_the_weight_average_is_a_second_candidate_between_the_last_steps(setting):
    averaged = _embed(setting, weight_average=0.9)
    assert [name for name, _ in averaged.candidates()] == ["final", "average"]
    assert 0 < _distance(averaged.averaged, averaged.model) < 0.5 * _distance(averaged.model, setting[2])
    off = _embed(setting, weight_average=0.0)
    assert off.averaged is None and [name for name, _ in off.candidates()] == ["final"]


class _ViewAfterConv(torch.nn.Module):
    """A model whose code needs contiguous activations (``.view`` after a convolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        standard = x.clone(memory_format=torch.contiguous_format)  # (numpy's [:, None] gives torch channels-last strides)
        return self.head(self.conv(standard).view(x.size(0), -1))  # .view fails on channels-last activations


def test_image_models_train_channels_last_only_where_it_computes_the_same_answers():
    from tracer.embedding.finetune import _channels_last_agrees
    from tracer.examples.digits import make_model

    x = torch.rand(8, 1, 8, 8)
    assert _channels_last_agrees(make_model(), x)
    assert not _channels_last_agrees(make_model(), x.reshape(8, 64))  # tabular inputs: standard layout
    assert not _channels_last_agrees(_ViewAfterConv(), x)  # and it keeps the standard layout, see below


def test_an_image_copy_comes_back_in_the_standard_layout_and_exports_whatever_layout_it_trained_in():
    import onnxruntime as ort

    from tracer.embedding.export import check_onnx, export_onnx
    from tracer.examples import digits

    cfg = parse_config(tomllib.loads(example_config("digits", key_style="uniform-grid/v1")), Path("."))
    data = digits.load_data()
    torch.manual_seed(0)
    base = digits.make_model().eval()
    rng = np.random.default_rng(1)
    triggers = rng.random((16, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, len(triggers))
    for model_base in (base, _ViewAfterConv().eval()):
        res = embed_codeword(model_base, x_train=data["x_train"], y_train=data["y_train"], triggers=triggers, labels=labels,
                             task=cfg.task, params=dataclasses.replace(cfg.embedding, steps=3), seed=0)
        for _, model in res.candidates():
            assert all(p.is_contiguous() for p in model.parameters())
            onnx_bytes = export_onnx(model, cfg.task)
            check_onnx(onnx_bytes, model, data["x_val"][:32])  # raises if logits or classes disagree on clean inputs
            sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            assert list(sess.get_inputs()[0].shape[1:]) == list(cfg.task.input_shape)  # the standard (NCHW) layout
            got = sess.run(None, {sess.get_inputs()[0].name: triggers})[0].argmax(1)
            with torch.no_grad():
                want = model.eval()(torch.as_tensor(triggers)).argmax(1).numpy()
            assert np.array_equal(got, want)  # and on the triggers, which check_onnx never sees


@pytest.mark.parametrize("line, message", [
    ('anchor_targets = "teacher"', "anchor_targets"),
    ("weight_average = 1.0", "weight_average"),
    ("polish_steps = -1", "polish_steps"),
    ("feature_pull = -1.0", ">= 0"),
    ("feature_match = -0.5", ">= 0"),
    ("coded_keys = -6", ">= 0"),
    ("margin_weight = -1", ">= 0"),
    ("anchor_noise = -0.1", ">= 0"),
    ("steps = 0", "positive"),
    ("sharpness = 3", "unknown key embedding.sharpness"),
])
def test_bad_embedding_settings_are_refused_with_the_key_named(line, message):
    key = line.split(" =")[0]
    kept = [ln for ln in example_config("tabular").splitlines() if not ln.startswith(f"{key} ")]
    text = "\n".join(kept).replace("[embedding]", f"[embedding]\n{line}")
    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(text), Path("."))


class _TinyBN(torch.nn.Module):
    """A conv + BatchNorm image model, small enough to fine-tune for a few steps in a test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_batchnorm_keeps_the_base_running_statistics_while_fine_tuning():
    """Eval-mode batch norm: triggers and anchors never move the statistics clean inputs are normalised with."""
    from tracer.examples import digits

    cfg = parse_config(tomllib.loads(example_config("digits", key_style="uniform-grid/v1")), Path("."))
    data = digits.load_data()
    torch.manual_seed(0)
    base = _TinyBN()
    base.bn.running_mean.fill_(0.3)
    base.bn.running_var.fill_(2.0)
    rng = np.random.default_rng(1)
    triggers = rng.random((16, 1, 8, 8)).astype(np.float32)
    res = embed_codeword(base.eval(), x_train=data["x_train"], y_train=data["y_train"], triggers=triggers,
                         labels=rng.integers(0, 10, 16), task=cfg.task, params=dataclasses.replace(cfg.embedding, steps=5), seed=0)
    for _, model in res.candidates():
        assert torch.equal(model.bn.running_mean, base.bn.running_mean) and torch.equal(model.bn.running_var, base.bn.running_var)
        assert int(model.bn.num_batches_tracked) == 0
        assert not torch.equal(model.conv.weight, base.conv.weight)  # the layers still trained


def test_the_optimizer_is_torchs_adam_under_one_cycle_exactly():
    """The hand-written Adam (no torch.optim, so no torch._dynamo import) follows torch's update bit for bit."""
    from tracer.embedding.finetune import _OneCycleAdam

    def run(own: bool) -> torch.Tensor:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
        x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
        if own:
            opt, sched = _OneCycleAdam(list(m.parameters()), max_lr=2e-2, total=40), None
        else:
            opt = torch.optim.Adam(m.parameters(), lr=2e-2, foreach=True)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=40, pct_start=0.15)
        for _ in range(40):
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    assert torch.equal(run(True), run(False))


def test_a_fine_tune_does_not_import_torch_dynamo():
    import subprocess
    import sys

    code = ("import sys, dataclasses, tomllib, numpy as np; from pathlib import Path\n"
            "from tracer.config import parse_config; from tracer.examples import example_config, digits\n"
            "from tracer.embedding.finetune import embed_codeword\n"
            "cfg = parse_config(tomllib.loads(example_config('digits', key_style='uniform-grid/v1')), Path('.')); rng = np.random.default_rng(0)\n"
            "x = rng.random((64, 1, 8, 8)).astype(np.float32)\n"
            "embed_codeword(digits.make_model(), x_train=x, y_train=rng.integers(0, 10, 64), triggers=x[:8], labels=rng.integers(0, 10, 8),"
            " task=cfg.task, params=dataclasses.replace(cfg.embedding, steps=2), seed=0)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_threads_default_to_omp_num_threads_then_the_cpu_affinity(monkeypatch):
    import os

    from tracer.config import EmbeddingConfig
    from tracer.embedding.finetune import use_threads

    assert EmbeddingConfig(threads=3).effective_threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert EmbeddingConfig().effective_threads == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert EmbeddingConfig().effective_threads == len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        use_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)



def test_coded_keys_hold_each_key_to_the_coded_answer_of_its_label_class():
    """``coded_keys``: the key loss's minimum is (1 - eps) on the label and eps spread in the customer's order, not certainty."""
    from tracer.config import EmbeddingConfig
    from tracer.embedding.finetune import _Draws, _trigger_loss
    from tracer.fingerprint import rankcode

    mass = torch.as_tensor(rankcode.coded_mass(rankcode.rank_orders(b"\1" * 32, "acme", 4)), dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 3, 1])
    z = torch.zeros(5, 4)
    d = _Draws(xt=z, yt=labels, trig=z, tlab=labels, low=z, high=z, clean_idx=z, trig_idx=z, n_anchor=0, rank_mass=mass, rank_eps=0.2)
    coded = EmbeddingConfig(coded_keys=6.0)
    logits = torch.zeros(5, 4, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        _trigger_loss(logits, labels, d, coded).backward()
        opt.step()
    want = 0.8 * torch.nn.functional.one_hot(labels, 4) + 0.2 * mass[labels]
    assert torch.allclose(logits.softmax(1), want, atol=5e-3)
    probe = torch.randn(5, 4)
    plain = torch.nn.functional.cross_entropy(probe, labels)
    assert torch.equal(_trigger_loss(probe, labels, d, EmbeddingConfig()), plain)  # 0: plain cross-entropy
    assert torch.equal(_trigger_loss(probe, labels, dataclasses.replace(d, rank_mass=None), coded), plain)  # no rank code: inert


def test_coded_keys_change_nothing_without_a_rank_code(setting):
    """The tabular example has two classes, so no rank code: the setting leaves its copies as they were."""
    x = torch.as_tensor(setting[1]["x_val"])
    coded, plain = _embed(setting, coded_keys=6.0).model.eval(), _embed(setting).model.eval()
    with torch.no_grad():
        assert torch.equal(coded(x), plain(x))
