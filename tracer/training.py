"""Plain supervised training and evaluation helpers (base models, attacks, independent models)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["train_classifier", "scores", "predict", "accuracy", "pick_device", "last_layer"]


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
    params: Sequence[nn.Parameter] | None = None,
    soft: bool = False,
    masks: dict[str, torch.Tensor] | None = None,
    schedule: str = "constant",
) -> nn.Module:
    """Train with Adam: the one supervised training loop (base models, attacks, independent models).

    Cross-entropy on class labels ``y``, or (``soft``) KL divergence to target distributions.
    ``steps`` (if given) overrides ``epochs``; ``params`` limits the trained parameters; after each
    step, ``masks`` (parameter name -> 0/1 tensor) are multiplied into their parameters.
    ``schedule``: ``"constant"`` learning rate, or ``"onecycle"`` (warm up to ``lr``, then anneal
    towards zero): a base that ends on a decaying rate converges instead of hovering.
    """
    dev = pick_device(device)
    gen = torch.Generator().manual_seed(seed)
    model.to(dev).train()
    xt = torch.as_tensor(np.ascontiguousarray(x)).to(dev)
    yt = torch.as_tensor(y, dtype=torch.float32 if soft else torch.long).to(dev)
    opt = torch.optim.Adam(list(params) if params is not None else model.parameters(), lr=lr, weight_decay=weight_decay)
    named = dict(model.named_parameters())
    n = len(xt)
    total = steps if steps is not None else epochs * max(1, -(-n // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25) if schedule == "onecycle" else None
    done = 0
    while done < total:
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            out = model(xt[idx])
            loss = (nn.functional.kl_div(out.log_softmax(1), yt[idx], reduction="batchmean") if soft
                    else nn.functional.cross_entropy(out, yt[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if masks:
                with torch.no_grad():
                    for name, m in masks.items():
                        named[name].mul_(m)
            done += 1
            if done >= total:
                break
    model.eval()
    return model.cpu()


@torch.no_grad()
def scores(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Output scores (float32, one row per input) of a torch model in eval mode, on the model's device."""
    model.eval()
    dev = next(model.parameters()).device
    out = [model(torch.as_tensor(np.ascontiguousarray(x[i : i + batch_size])).to(dev)).float().cpu().numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Class indices (int64) predicted by a torch model."""
    if not len(x):
        return np.zeros(0, dtype=np.int64)
    return scores(model, x, batch_size=batch_size).argmax(1).astype(np.int64)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of predicted class indices equal to the labels (0.0 for no labels): the one accuracy helper."""
    return float(np.mean(np.asarray(pred) == np.asarray(y))) if len(y) else 0.0
