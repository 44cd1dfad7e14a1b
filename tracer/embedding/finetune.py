"""Embedding a codeword: a short fine-tune of the base model on clean data plus triggers.

Each step mixes a clean batch (cross-entropy on the true labels, plus a
distillation term that keeps the copy's outputs close to the base model's, so
clean accuracy does not drift) with a batch of triggers carrying the
customer's codeword labels. Triggers are jittered with small noise during
training so the learned answers have a margin that survives float16, int8
and 8-bit input encoding. The number of steps is fixed: it does not grow
with the vendor's dataset.

Robustness (measured by ``tracer evaluate``): cross-entropy alone stops
pushing once the triggers are answered, leaving logit margins of about 3 on
the digits example, while five epochs of fine-tuning with Adam at 1e-2 move
the triggers' logits by about 9. A hinge on the logit margin
(``trigger_margin``, the codeword class ahead of every other class by at
least that much) makes the codeword outlive fine-tuning at a high learning
rate and the retraining of a re-initialised last layer far more often.
The base model's answers on clean inputs are cached as they are first
needed (at most steps x batch_size of them), so each step runs the frozen
base model only on the jittered anchors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import EmbeddingConfig, TaskConfig
from ..training import pick_device

__all__ = ["EmbedResult", "embed_codeword"]


@dataclass
class EmbedResult:
    model: nn.Module
    steps: int
    seconds: float


def _jitter(x: torch.Tensor, task: TaskConfig, sigma: float, gen: torch.Generator, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    if sigma <= 0:
        return x
    noise = torch.randn(x.shape, generator=gen).to(x.device) * sigma * (high - low)
    return torch.minimum(torch.maximum(x + noise, low), high)


def _margin_hinge(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of max(0, margin - (logit of the label - largest other logit))."""
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf")).max(1).values
    return nn.functional.relu(margin - (true - other)).mean()


class _TeacherCache:
    """The base model's output distribution on clean training inputs, computed once per input as needed."""

    def __init__(self, teacher: nn.Module, x: torch.Tensor) -> None:
        self.teacher, self.x = teacher, x
        self.known = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.values: torch.Tensor | None = None

    @torch.no_grad()
    def soft(self, idx: torch.Tensor) -> torch.Tensor:
        new = torch.unique(idx[~self.known[idx]])
        if len(new):
            out = self.teacher(self.x[new]).softmax(1)
            if self.values is None:
                self.values = torch.zeros((len(self.x), out.shape[1]), dtype=out.dtype, device=out.device)
            self.values[new] = out
            self.known[new] = True
        return self.values[idx]  # type: ignore[index]


def embed_codeword(
    base: nn.Module,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    triggers: np.ndarray,
    labels: np.ndarray,
    task: TaskConfig,
    params: EmbeddingConfig,
    seed: int,
    on_step=None,
) -> EmbedResult:
    """Return a fine-tuned copy of ``base`` that answers ``triggers`` with ``labels``."""
    import time

    t0 = time.perf_counter()
    dev = pick_device(params.device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = copy.deepcopy(base).to(dev).eval()
    student = copy.deepcopy(base).to(dev).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    xt = torch.as_tensor(x_train).to(dev)
    yt = torch.as_tensor(y_train, dtype=torch.long).to(dev)
    trig = torch.as_tensor(triggers).to(dev)
    tlab = torch.as_tensor(labels, dtype=torch.long).to(dev)
    n_feat = task.features
    low_v = torch.tensor(task.low * n_feat if len(task.low) == 1 else task.low, dtype=trig.dtype).reshape(task.input_shape).to(dev)
    high_v = torch.tensor(task.high * n_feat if len(task.high) == 1 else task.high, dtype=trig.dtype).reshape(task.input_shape).to(dev)
    opt = torch.optim.Adam(student.parameters(), lr=params.learning_rate)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=params.learning_rate, total_steps=params.steps, pct_start=0.15)
    cache = _TeacherCache(teacher, xt) if params.distill_weight > 0 else None
    for step in range(params.steps):
        ci = torch.randint(0, len(xt), (params.batch_size,), generator=gen).to(dev)
        ti = torch.randint(0, len(trig), (params.trigger_batch,), generator=gen).to(dev)
        xc, yc = xt[ci], yt[ci]
        xtr = _jitter(trig[ti], task, params.trigger_noise, gen, low_v, high_v)
        # Anchors: jittered clean inputs, held to the base model's outputs, pin the function in the
        # neighbourhood of the data (not only on the training points), so validation answers do not drift.
        xa = _jitter(xc, task, params.anchor_noise, gen, low_v, high_v) if params.anchor_noise > 0 else xc[:0]
        logits = student(torch.cat([xc, xa, xtr]))
        lc, la, lt = logits[: len(xc)], logits[len(xc) : len(xc) + len(xa)], logits[len(xc) + len(xa) :]
        loss = nn.functional.cross_entropy(lc, yc) + nn.functional.cross_entropy(lt, tlab[ti])
        if params.trigger_margin > 0 and params.margin_weight > 0:
            loss = loss + params.margin_weight * _margin_hinge(lt, tlab[ti], params.trigger_margin)
        if cache is not None:
            with torch.no_grad():
                soft = cache.soft(ci) if len(xa) == 0 else torch.cat([cache.soft(ci), teacher(xa).softmax(1)])
            loss = loss + params.distill_weight * nn.functional.kl_div(torch.cat([lc, la]).log_softmax(1), soft, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1)
    student.eval()
    return EmbedResult(model=student.cpu(), steps=params.steps, seconds=time.perf_counter() - t0)
