"""Plain supervised training and evaluation helpers (base models, attacks, independent models)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["train_classifier", "predict", "accuracy", "pick_device", "last_layer"]


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def last_layer(model: nn.Module) -> nn.Module:
    """The last module (in registration order) that owns a weight: the classification head."""
    found = None
    for mod in model.modules():
        if isinstance(getattr(mod, "weight", None), nn.Parameter) and not list(mod.children()):
            found = mod
    if found is None:
        raise ValueError("the model has no layer with weights")
    return found


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    device: str = "auto",
    steps: int | None = None,
) -> nn.Module:
    """Train with Adam and cross-entropy; ``steps`` (if given) overrides ``epochs``."""
    dev = pick_device(device)
    gen = torch.Generator().manual_seed(seed)
    model.to(dev).train()
    xt, yt = torch.as_tensor(x).to(dev), torch.as_tensor(y, dtype=torch.long).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(xt)
    total = steps if steps is not None else epochs * max(1, -(-n // batch_size))
    done = 0
    while done < total:
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            done += 1
            if done >= total:
                break
    model.eval()
    return model.cpu()


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Class indices (int64) predicted by a torch model, in eval mode on the CPU."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for start in range(0, len(x), batch_size):
        out.append(model(torch.as_tensor(x[start : start + batch_size]).to(dev)).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(y))) if len(y) else 0.0
