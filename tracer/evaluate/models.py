"""The models an evaluation works on: issued copies (ONNX files) as torch models, factories, training recipe."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._imports import import_object
from ..config import Config
from ..data import ATTACKER_SHARE_TEXT, Dataset, attacker_share_case, split_indices
from ..errors import ConfigError, CustomerError, ModelError
from ..keys import normalize_customer_id
from ..workspace import Workspace

__all__ = ["IssuedCopy", "load_copy", "issued_copies", "onnx_to_torch", "factories", "training_recipe", "attacker_data"]

DEFAULT_RECIPE = {"epochs": 30, "lr": 1e-3, "batch_size": 32}


@dataclass
class IssuedCopy:
    customer: str
    display_name: str
    path: Path
    sha256: str
    onnx: bytes
    model: nn.Module


def factories(config: Config) -> tuple[Callable[[], nn.Module], Callable[[], nn.Module] | None]:
    """(model.factory, the same module's ``make_model_alt`` if it has one)."""
    make = import_object(config.model.factory, root=config.root, field="model.factory")
    module, _, _ = config.model.factory.partition(":")
    try:
        alt = import_object(f"{module}:make_model_alt", root=config.root, field="model.factory")
    except ConfigError:
        alt = None
    return make, alt


def training_recipe(config: Config) -> dict:
    """The base model's training recipe: ``BASE_TRAINING`` of the factory's module, else a default."""
    import importlib

    module = importlib.import_module(config.model.factory.partition(":")[0])
    recipe = getattr(module, "BASE_TRAINING", None)
    return dict(recipe) if isinstance(recipe, dict) else dict(DEFAULT_RECIPE)


def attacker_data(data: Dataset) -> tuple[np.ndarray, np.ndarray, str]:
    """The leaker's data: the dataset's attacker share (the vendor's, or held out by tracer), else a third of x_train.

    The third of x_train is left for datasets built by hand (load_dataset always gives a share); the
    suite labels each case from the copy's issuance record (:func:`tracer.data.attacker_share_case`).
    """
    if data.x_attack is not None and data.y_attack is not None and len(data.x_attack):
        return data.x_attack, data.y_attack, attacker_share_case(data, data.attacker_share())[1]
    _, third = split_indices(len(data.x_train), 1 / 3, label="tracer-evaluate/attack")
    return data.x_train[third], data.y_train[third], ATTACKER_SHARE_TEXT["legacy"]


def onnx_to_torch(onnx_bytes: bytes, make_model: Callable[[], nn.Module], sample: np.ndarray) -> nn.Module:
    """Load an issued ONNX file's weights into ``make_model()`` and check both compute the same thing."""
    import onnx
    from onnx import numpy_helper

    from ..embedding.export import check_onnx

    proto = onnx.load_from_string(onnx_bytes)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:  # the exporter merges equal tensors (e.g. two BN biases), naming the copy by an Identity
        if node.op_type == "Identity" and node.input and node.input[0] in inits:
            inits.setdefault(node.output[0], inits[node.input[0]])
    model = make_model()
    state = model.state_dict()
    missing = []
    for key, ref in state.items():
        if key.endswith("num_batches_tracked"):  # a BatchNorm training counter, not part of the exported computation
            continue
        arr = inits.get(key)
        if arr is None or tuple(arr.shape) != tuple(ref.shape):
            missing.append(key)
            continue
        state[key] = torch.as_tensor(arr.copy(), dtype=ref.dtype)
    if missing:
        raise ModelError(f"cannot map the issued ONNX weights onto model.factory (no initializer for {missing[0]})",
                         hint="evaluate needs copies exported by `tracer issue` from this workspace's model.factory")
    model.load_state_dict(state)
    model.eval()
    check_onnx(onnx_bytes, model, sample)
    return model


def _copy_for(ws: Workspace, entry, make_model, sample) -> IssuedCopy:
    p = entry.payload
    path = Path(p["model_path"])
    path = path if path.is_absolute() else ws.root / path
    if not path.is_file():
        raise ModelError(f"the copy issued to {p['customer_id']} is missing: {path}")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != p["model_sha256"]:
        raise ModelError(f"{path.name} does not match its issuance record (sha256 {sha[:12]}..., recorded {p['model_sha256'][:12]}...)")
    return IssuedCopy(p["customer_id"], p["display_name"], path, sha, data, onnx_to_torch(data, make_model, sample))


def issued_copies(ws: Workspace) -> list[tuple[str, object]]:
    """(customer id, latest issuance entry) for every issued customer, in issuance order."""
    with ws.ledger() as ledger:
        latest: dict[str, object] = {}
        for e in ledger.issuances():
            latest[e.payload["customer_id"]] = e
    return list(latest.items())


def load_copy(ws: Workspace, customer: str | None, make_model, sample: np.ndarray) -> IssuedCopy:
    """The latest copy issued to ``customer`` (default: the first issued customer)."""
    copies = issued_copies(ws)
    if not copies:
        raise CustomerError("no copy has been issued in this workspace", hint="run `tracer issue --customer ID` first")
    if customer is None:
        return _copy_for(ws, copies[0][1], make_model, sample)
    cid = normalize_customer_id(customer)
    for c, entry in copies:
        if c == cid:
            return _copy_for(ws, entry, make_model, sample)
    raise CustomerError(f"customer {cid} has no issued copy", hint="see `tracer ledger` for issued customers")
