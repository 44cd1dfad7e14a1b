"""False accusations: does identification ever name a customer for a model that owes nothing to any copy?

M models are trained from scratch, independently of every codeword: several
seeds, the workspace's architecture and (where the factory's module has one)
``make_model_alt``, on the vendor's training data or on the attacker's share.
The vendor's base model is scored too. Each is identified exactly as a
suspect would be (Holm over every issued customer at alpha); we report how
often any customer is named and the distribution of each model's smallest
p-value. Under the null every customer's p-value is super-uniform, so the
smallest of N is below t with probability at most N*t, and over M models at
most M*N*t are expected on average ("expected_below_0.05_at_most").

That count is not binomial: the models are trained on similar data and answer
the same secret probes much alike, so against one fixed set of codewords their
p-values rise and fall together (they share one codeword's luck). Several
models below 0.05 that are all closest to the same customer are one event, not
several; ``closest_customer_counts`` and ``customers_below_0.05`` show that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..data import load_dataset
from ..embedding.basemodel import load_base_model
from ..identify import identify_predictor
from ..keys.keyring import Keyring
from ..training import train_classifier
from ..workspace import Workspace
from .attacks import torch_predictor
from .models import attacker_data, factories, training_recipe

__all__ = ["IndependentModel", "FalseAccusationResult", "false_accusation_study", "MAX_STEPS"]

MAX_STEPS = 900  # optimizer steps per independent model, so M models train in minutes on a CPU


@dataclass
class IndependentModel:
    label: str
    architecture: str  # "model.factory", "make_model_alt" or "base model"
    data: str  # "vendor" | "attacker" | "-"
    seed: int | None
    clean_accuracy: float
    best_customer: str
    matches: int
    trials: int
    smallest_p: float
    log10_smallest_p: float
    named: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class FalseAccusationResult:
    models: list[IndependentModel]
    alpha: float
    issued_customers: int
    seconds: float

    @property
    def named_count(self) -> int:
        return sum(bool(m.named) for m in self.models)

    def closest_counts(self) -> dict[str, int]:
        """How many models were closest to each customer (correlated models pile up on one)."""
        out: dict[str, int] = {}
        for m in self.models:
            out[m.best_customer] = out.get(m.best_customer, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_json(self) -> dict:
        logs = sorted(m.log10_smallest_p for m in self.models)
        ps = sorted(m.smallest_p for m in self.models)
        n = self.issued_customers
        return {
            "models": len(self.models),
            "named": self.named_count,
            "alpha": self.alpha,
            "issued_customers": n,
            "smallest_p": ps[0] if ps else None,
            "log10_smallest_p": logs[0] if logs else None,
            "median_smallest_p": float(np.median(ps)) if ps else None,
            "smallest_p_values": ps,
            "below_0.05": sum(p <= 0.05 for p in ps),
            "expected_below_0.05_at_most": round(len(ps) * min(1.0, n * 0.05), 3),
            "closest_customer_counts": self.closest_counts(),
            "customers_below_0.05": sorted({m.best_customer for m in self.models if m.smallest_p <= 0.05}),
            "architectures": sorted({m.architecture for m in self.models}),
            "details": [asdict(m) for m in self.models],
            "seconds": round(self.seconds, 2),
        }


def false_accusation_study(
    ws: Workspace,
    keyring: Keyring,
    *,
    models: int = 8,
    seed: int = 0,
    alpha: float | None = None,
    include_base: bool = True,
    max_steps: int = MAX_STEPS,
    on_model: Callable[[int, IndependentModel | None], None] | None = None,
) -> FalseAccusationResult:
    """Train ``models`` independent models (alternating architecture, then data) and identify each."""
    t0 = time.perf_counter()
    cfg = ws.config
    data = load_dataset(cfg)
    x_att, y_att, _ = attacker_data(data)
    make_model, make_alt = factories(cfg)
    recipe = training_recipe(cfg)
    archs = [("model.factory", make_model)] + ([("make_model_alt", make_alt)] if make_alt is not None else [])
    sources = [("vendor", data.x_train, data.y_train), ("attacker", x_att, y_att)]
    out: list[IndependentModel] = []

    def score(label, arch, source, s, model) -> IndependentModel:
        pred = torch_predictor(model)
        acc = float(np.mean(pred(data.x_val).argmax(1) == data.y_val))
        res = identify_predictor(ws, keyring, lambda x: pred(x).argmax(1), alpha=alpha, scores=pred)
        best = res.candidates[0]
        return IndependentModel(label, arch, source, s, round(acc, 6), best.customer, best.matches, best.trials,
                                best.p_value, best.log10_p, list(res.customers))

    if include_base:
        t = time.perf_counter()
        m = score("base", "base model", "vendor", None, load_base_model(cfg))
        m.seconds = round(time.perf_counter() - t, 2)
        out.append(m)
        if on_model:
            on_model(0, m)
    for i in range(models):
        if on_model:
            on_model(i + 1, None)
        t = time.perf_counter()
        arch_name, factory = archs[i % len(archs)]
        src_name, x, y = sources[(i // len(archs)) % len(sources)]
        s = 1000 + seed * 7919 + i
        torch.manual_seed(s)
        model = factory()
        n_batches = -(-len(x) // int(recipe.get("batch_size", 32)))
        steps = min(int(recipe.get("epochs", 30)) * n_batches, max_steps)
        train_classifier(model, x, y, lr=float(recipe.get("lr", 1e-3)), batch_size=int(recipe.get("batch_size", 32)),
                         seed=s, steps=steps, device="cpu")
        m = score(f"independent-{i + 1}", arch_name, src_name, s, model)
        m.seconds = round(time.perf_counter() - t, 2)
        out.append(m)
        if on_model:
            on_model(i + 1, m)
    with ws.ledger() as ledger:
        issued = len(ledger.issued_customer_ids())
    return FalseAccusationResult(out, cfg.alpha if alpha is None else alpha, issued, time.perf_counter() - t0)
