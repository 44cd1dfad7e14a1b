"""The shapes example (synthetic images, a BatchNorm ResNet) and the ONNX check that scales with the model.

Small by design: the model is checked untrained for its layout, a training step and its ONNX
round trip, and the data for determinism against golden digests. The flow tests (init, issue,
identify, probe through the CLI) share one workspace built once per run on a briefly trained
base, not the example's 12-epoch one (about three CPU minutes): bench/bench_issue.py shapes
trains the real base, issues, and measures the gates, cost and drops.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import _run_cli
from tests.fixtures_issued import FAST_SCRYPT, PASSPHRASE, copy_workspace, shared_build, shared_dir
from tests.servers import ModelServer
from tracer.config import TaskConfig
from tracer.data import load_dataset
from tracer.embedding.basemodel import load_base_model
from tracer.embedding.export import check_onnx, export_onnx, logit_tolerance
from tracer.errors import ConfigError, ModelError
from tracer.evaluate.models import onnx_to_torch
from tracer.examples import EXAMPLES, example_config, shapes
from tracer.keys.keyring import load_public_key
from tracer.training import train_classifier
from tracer.workspace import Workspace, init_workspace

SHAPES_TASK = TaskConfig(num_classes=10, input_shape=(3, 32, 32), domain="image")

# Golden digests: the dataset's bytes are its identity (the ledger records its fingerprint), so a
# change to the generator must be deliberate. Recompute with the expressions in the tests.
GOLDEN_SAMPLE_SHA256 = "914fe2989bf918c5f29911659005d60afd8c8d4d221cb0d0c766617040bd1ea0"
GOLDEN_FINGERPRINT = "0cda445db5dd5b07a54eb5bee490fe4470eb162701fa37f96ecbbf605992bf40"


def _sha(x: np.ndarray, y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()


# --------------------------------------------------------------------------- data


def test_generator_is_deterministic_and_matches_golden():
    x1, y1 = shapes.generate(40)
    x2, y2 = shapes.generate(40)
    assert x1.dtype == np.float32 and x1.shape == (40, 3, 32, 32) and y1.dtype == np.int64
    assert x1.tobytes() == x2.tobytes() and y1.tobytes() == y2.tobytes()
    assert 0.0 <= x1.min() and x1.max() <= 1.0
    assert _sha(x1, y1) == GOLDEN_SAMPLE_SHA256
    x3, _ = shapes.generate(40, seed=shapes.SEED + 1)
    assert x3.tobytes() != x1.tobytes()


def test_generator_is_balanced():
    _, y = shapes.generate(200)
    assert np.bincount(y, minlength=10).tolist() == [20] * 10


@pytest.fixture(scope="module")
def shapes_ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "ws"
    return init_workspace(root, passphrase=PASSPHRASE, config_text=example_config("shapes"), scrypt=FAST_SCRYPT)


def test_workspace_loads_config_and_data(shapes_ws):
    assert "shapes" in EXAMPLES
    cfg = shapes_ws.config
    assert cfg.task.input_shape == (3, 32, 32) and cfg.task.num_classes == 10 and cfg.task.domain == "image"
    data = load_dataset(cfg)
    n = shapes.SAMPLES
    assert len(data.x_val) == n // 5 and len(data.x_train) + len(data.x_attack) + len(data.x_val) == n
    assert data.x_train.shape[1:] == (3, 32, 32) and data.x_attack is not None
    assert set(np.unique(data.y_train)) == set(range(10))
    # the vendor's and the attacker's shares are disjoint (no image in both)
    train_keys = {hashlib.sha256(img.tobytes()).digest() for img in data.x_train[:2000]}
    assert not any(hashlib.sha256(img.tobytes()).digest() in train_keys for img in data.x_attack)
    assert data.fingerprint() == GOLDEN_FINGERPRINT


def test_unknown_example_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown example") as err:
        example_config("cifar")
    assert "shapes" in err.value.hint


# --------------------------------------------------------------------------- model


def test_model_is_a_batchnorm_resnet_in_torchvision_layout():
    model = shapes.make_model()
    top = [name for name, _ in model.named_children()]
    assert top == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    blocks = [m for m in model.modules() if isinstance(m, shapes.BasicBlock)]
    assert len(blocks) >= 4 and any(b.downsample is not None for b in blocks)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) >= 9
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn2.weight",
            "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "fc.weight", "fc.bias"} <= keys


def test_residual_path_is_used():
    """Zeroing a block's last BatchNorm scale and shift leaves relu(identity): the skip connection carries the input."""
    block = shapes.BasicBlock(8, 8).eval()
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(x))


def test_training_step_updates_weights_and_running_stats():
    torch.manual_seed(0)
    model = shapes.make_model().train()
    x, y = shapes.generate(16)
    before = model.bn1.running_mean.clone()
    w = model.conv1.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    logits = model(torch.as_tensor(x))
    assert logits.shape == (16, 10)
    nn.functional.cross_entropy(logits, torch.as_tensor(y)).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert not torch.equal(model.conv1.weight, w) and not torch.equal(model.bn1.running_mean, before)


def test_onnx_export_round_trips_through_evaluate_mapping():
    """An untrained copy (running statistics moved off their defaults) exports, passes the check, and maps back by name."""
    torch.manual_seed(1)
    model = shapes.make_model().train()
    x, _ = shapes.generate(32)
    with torch.no_grad():
        model(torch.as_tensor(x))  # move the running statistics
    model.eval()
    data = export_onnx(model, SHAPES_TASK)
    diff = check_onnx(data, model, x)
    assert 0.0 <= diff <= logit_tolerance(model(torch.as_tensor(x)).detach().numpy())
    back = onnx_to_torch(data, shapes.make_model, x)
    with torch.no_grad():
        assert torch.allclose(back(torch.as_tensor(x)), model(torch.as_tensor(x)), atol=1e-5)


# --------------------------------------------------------------------------- the ONNX check


class _Scaled(nn.Module):
    """Logits of size ~``scale``, with an optional shift of one class's logit (a stand-in for export rounding)."""

    def __init__(self, scale: float, shift: float = 0.0, swap: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]) * scale)
            self.lin.bias.copy_(torch.tensor([shift, 0.0, 0.0]))
            if swap:
                self.lin.weight.copy_(self.lin.weight[[1, 0, 2]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


TOY_TASK = TaskConfig(num_classes=3, input_shape=(4,), domain="tabular", low=(0.0,), high=(1.0,))
TOY_X = np.array([[0.9, 0.5, 0.1, 0.0], [0.2, 0.8, 0.4, 0.0], [0.1, 0.3, 0.7, 0.0]], dtype=np.float32)


def test_large_logits_with_small_relative_difference_pass():
    """Logits of ~10,000 differing by 5e-3 (relative 5e-7, the resnet18 case): a fixed 1e-3 rejected this."""
    exported = export_onnx(_Scaled(1e4, shift=5e-3), TOY_TASK)
    diff = check_onnx(exported, _Scaled(1e4), TOY_X)
    assert diff > 1e-3 and diff == pytest.approx(5e-3, rel=0.2)


def test_small_logits_with_large_relative_difference_fail():
    exported = export_onnx(_Scaled(1.0, shift=5e-3), TOY_TASK)
    with pytest.raises(ModelError, match="max logit difference"):
        check_onnx(exported, _Scaled(1.0), TOY_X)


def test_flipped_class_decision_fails():
    exported = export_onnx(_Scaled(1e4, swap=True), TOY_TASK)
    with pytest.raises(ModelError, match="class decisions differ"):
        check_onnx(exported, _Scaled(1e4), TOY_X)


def test_tolerance_scales_with_magnitude_and_has_a_floor():
    assert logit_tolerance(np.array([[0.1, -0.2]])) == pytest.approx(1e-4 + 1e-5)
    assert logit_tolerance(np.array([[18862.0, 3.0]])) == pytest.approx(1e-4 * 18862 + 1e-5)
    assert logit_tolerance(np.zeros((0, 3))) == pytest.approx(1e-4 + 1e-5)


# --------------------------------------------------------------------------- the whole flow: init, issue, identify, probe

#: The flow's settings (the example's own, 300 steps on a 12-epoch base, are measured by bench/bench_issue.py shapes).
FLOW_STEPS = 150
FLOW_MAX_DROP = 0.02
FLOW_MIN_TRIGGER = 0.7  # the copies land at 0.82-0.83: some room for other CPUs' rounding
FLOW_CUSTOMERS = ("acme", "globex")


def _quick_base(weights: Path) -> None:
    """A briefly trained base (2 one-cycle epochs on 4,000 images, 0.44 validation) where init looks for it.

    `tracer init --example shapes` trains the example's base only when models/base.pt is missing (12 epochs,
    about 1.5 CPU minutes): weights already there are used as they are, as a vendor's own would be. This one
    stands in for it to keep the flow short.
    """
    data = shapes.load_data()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = train_classifier(shapes.make_model(), data["x_train"][:4000], data["y_train"][:4000], epochs=2, lr=3e-3,
                                 batch_size=64, schedule="onecycle", device="cpu")
    finally:
        torch.set_num_threads(threads)
    weights.parent.mkdir(parents=True)
    torch.save(model.state_dict(), weights)


def _shorten(toml: Path) -> None:
    """FLOW_STEPS embedding steps and looser gates, so that the first try lands: a base this weak moves more under a
    fine-tune and takes its triggers more slowly (on such bases, at the example's gates, copies needed 2-5 tries).
    A copy at 0.7 trigger accuracy is still named with p far below 1e-20 on 64 probes: this flow is about the commands.
    """
    text = toml.read_text(encoding="utf-8")
    for old, new in (("\nsteps = 300 ", f"\nsteps = {FLOW_STEPS} "), ("\nmax_accuracy_drop = 0.005", f"\nmax_accuracy_drop = {FLOW_MAX_DROP}"),
                     ("\nmin_trigger_accuracy = 0.95", f"\nmin_trigger_accuracy = {FLOW_MIN_TRIGGER}")):
        assert old in text, old
        text = text.replace(old, new)
    toml.write_text(text, encoding="utf-8")


def _build_flow(folder: Path) -> None:
    """`tracer init DIR --example shapes`, then one `tracer issue --customers FILE` for FLOW_CUSTOMERS; its JSON kept."""
    ws = folder / "ws"
    _quick_base(ws / "models" / "base.pt")
    env = {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": None}
    res = _run_cli(["init", ws, "--example", "shapes", "--json"], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    _shorten(ws / "tracer.toml")
    (folder / "customers.txt").write_text("".join(f"{cid}\n" for cid in FLOW_CUSTOMERS), encoding="utf-8")
    res = _run_cli(["-w", ws, "issue", "--customers", folder / "customers.txt", "--workers", "1", "--threads", "1", "--json"], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    (folder / "issue.json").write_text(res.stdout, encoding="utf-8")


@pytest.fixture(scope="session")
def shapes_flow(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A shapes workspace made through the CLI with two issued copies, built once per run (the issued fixtures' lock and cache)."""
    folder = shared_build(shared_dir(tmp_path_factory), "flow-shapes", _build_flow)
    assert folder is not None
    docs = json.loads((folder / "issue.json").read_text(encoding="utf-8"))["issued"]
    return copy_workspace(folder / "ws", tmp_path_factory.mktemp("flow-shapes") / "ws"), docs


def _flow_env(root: Path) -> dict[str, str]:
    return {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(root)}


def test_flow_issues_copies_that_pass_both_gates(shapes_flow):
    root, docs = shapes_flow
    ws = Workspace(root)
    gates = ws.config.gates
    assert (gates.min_trigger_accuracy, gates.max_accuracy_drop) == (FLOW_MIN_TRIGGER, FLOW_MAX_DROP)
    for cid, doc in zip(FLOW_CUSTOMERS, docs, strict=True):
        assert doc["customer"] == cid and Path(doc["model_path"]).name == f"{cid}.onnx"
        assert (root / "models" / "issued" / f"{cid}.onnx").is_file()
        assert doc["trigger_accuracy"] >= gates.min_trigger_accuracy
        assert doc["base_accuracy"] - doc["clean_accuracy"] <= gates.max_accuracy_drop + 1e-9
    with ws.ledger() as ledger:
        assert sorted(ledger.issued_customer_ids()) == sorted(FLOW_CUSTOMERS)
        count, _ = ledger.verify(load_public_key(ws.public_key_pem()))
    assert count >= 3  # genesis and two issuances, signed


def test_flow_identify_names_the_leaked_copy_and_not_the_base(shapes_flow, run_cli, tmp_path):
    root, _ = shapes_flow
    res = run_cli(["identify", root / "models" / "issued" / "globex.onnx", "--json"], env=_flow_env(root))
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "match" and doc["customers"] == ["globex"]
    assert doc["candidates"][0]["customer"] == "globex" and doc["candidates"][0]["p_value"] < 1e-20
    ws = Workspace(root)
    base = tmp_path / "base.onnx"
    base.write_bytes(export_onnx(load_base_model(ws.config), ws.config.task))
    res = run_cli(["identify", base, "--json"], env=_flow_env(root))
    assert res.returncode == 1, res.stderr[-3000:]
    assert json.loads(res.stdout)["customers"] == []


def test_flow_probe_names_the_copy_behind_a_png_endpoint(shapes_flow, cli, tmp_path):
    """A label-only TorchServe-style endpoint taking PNG bodies: the colour probes survive the encoding."""
    root, _ = shapes_flow
    ws = Workspace(root)
    with ModelServer(root / "models" / "issued" / "acme.onnx", ws.config.task, "torchserve", label_only=True) as srv:
        r = cli(["-w", root, "probe", srv.url, "--format", "torchserve", "--json", "--report", tmp_path / "probe.html"],
                env={"TRACER_PASSPHRASE": PASSPHRASE})
        sent = srv.requests
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "match" and doc["customers"] == ["acme"]
    assert doc["queries"] == sent and doc["trigger_queries"] <= 64
    assert (tmp_path / "probe.html").is_file()
