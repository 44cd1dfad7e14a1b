"""Train an example's base model on first use (nothing is downloaded)."""

from __future__ import annotations

import importlib
import io

import torch

from .._files import atomic_write_bytes
from ..data import load_dataset
from ..training import accuracy, predict, train_classifier


def train_base(name: str, *, seed: int = 0, alt: bool = False, factory: str = "make_model"):
    """Return (model, validation accuracy) for example ``name``, trained from scratch (``factory``: which of its architectures)."""
    mod = importlib.import_module(f"tracer.examples.{name}")
    data = mod.load_data()
    torch.manual_seed(seed)
    model = getattr(mod, "make_model_alt" if alt else factory)()
    train_classifier(model, data["x_train"], data["y_train"], seed=seed, **mod.BASE_TRAINING)
    return model, accuracy(predict(model, data["x_val"]), data["y_val"])


def ensure_base_model(ws, name: str, *, progress: bool = True) -> None:
    cfg = ws.config
    weights = cfg.path(cfg.model.weights)
    if weights.exists():
        return
    weights.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"training the {name} example's base model (first use)...")
    module, _, factory = cfg.model.factory.partition(":")  # an example's own other architecture, where tracer.toml names one
    model, _ = train_base(name, factory=factory if module == f"tracer.examples.{name}" and factory else "make_model")
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(weights, buf.getvalue())
    load_dataset(cfg)  # fail now, not later, if the loader is broken
