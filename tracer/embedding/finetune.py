"""Embedding a codeword: a short fine-tune of the base model on clean data plus triggers.

Each step mixes a clean batch (cross-entropy on the true labels, plus a
distillation term that keeps the copy's outputs close to the base model's, so
clean accuracy does not drift) with a batch of triggers carrying the
customer's codeword labels. Triggers are jittered with small noise during
training so the learned answers have a margin that survives float16, int8
and 8-bit input encoding. The number of steps is fixed: it does not grow
with the vendor's dataset.

Robustness (measured by ``tracer evaluate``, figures in bench/results/):
cross-entropy alone stops pushing once the triggers are answered, leaving
logit margins of about 3 on the digits example, while five epochs of
fine-tuning with Adam at 1e-2 move the triggers' logits by about 9. A hinge
on the logit margin (``trigger_margin``: the codeword class ahead of every
other class by at least that much) makes the codeword outlive fine-tuning at
a high learning rate and the retraining of a re-initialised last layer. A
short, hot schedule (learning rate 2e-2) with a stronger distillation weight
reaches the margin in fewer steps than a long, cool one and keeps clean
accuracy. ``feature_pull`` (off by default) draws each trigger's penultimate
features to the base model's centroid of its codeword class: on the tabular
example a head re-fitted on clean data then keeps 0.96 of the codeword
instead of 0.82, but after the further all-layer fine-tuning of the suite's
re-initialisation attacks the gain was gone, so it is not on by default.

Feature match (``feature_match``, :class:`_KeyClusters`): with the rank code, every natural input is
held to one soft coded answer of its class, which tightens the class clusters of the copy's
penultimate features, while keys, pushed to their label by cross-entropy and the margin, land outside
them: a leaker's Mahalanobis filter on the copy's own features then separates keys from natural
inputs (digits natural-mix variant: AUC 0.89-0.90, 18-40 % of keys flagged). The term holds each key's
features within the copy's own cluster of its label class: its squared Mahalanobis distance to that
class's mean (the copy's features on a fixed reference subset of the training inputs, one shared
covariance, refreshed every ``_KeyClusters.EVERY`` steps) is penalised by log(1 + excess / r) beyond
r, the 90th percentile of the reference inputs' own distances. It reads the keys' labels as every key
term does, and selects nothing: it only shapes how the copy answers all keys. Single tries on that
variant (scratch runs, acme seed 2; Mahalanobis AUC keys / natural, clean drop in points, keys
learnt): weight 0: 0.90, -0.28, 0.988; 0.25: 0.69, +0.56, 0.986; 0.5: 0.55, +0.00, 0.986 (globex
seed 3: 0.57, +0.28, 0.981); 1: 0.40 (keys now *more* central than natural inputs), +1.11, 0.982;
the rank code read after soft-label distillation into an MLP was unchanged throughout (10^-14 to 10^-17).
Through the issuer at 0.5 the clean gate is the price: of 3 issuances (two fresh workspaces) only one
landed within 5 tries, the others missing by one validation input (0.56 points against 0.50), where
without the term 3 of 3 landed in 2-3 tries. The copy that landed hid its keys from every filter of
``tracer evaluate`` (Mahalanobis AUC 0.571, 2 % of keys flagged; label-only probe named it behind each
in 22-35 keys) and kept soft-label distillation (10^-16 into the MLP): bench/results/
evasion_digits_natural_wide_fm.txt. So it is off by default.

Coded keys (``coded_keys``): with the rank code, each key's target is the coded answer of its label
class, (1 - eps) on the label and eps in the customer's order, as natural inputs of that class are held,
instead of certainty: keys then answer as natural inputs do. Together with a light feature match (0.25)
and a 2-logit margin (the coded answers cannot hold 3) this is the digits example's natural-mix variant:
6 of 6 customers landed in two workspaces, 5 on the first try; Mahalanobis AUC 0.52-0.65 on the six copies
(five at most 0.6; 0.3-4.8 % of keys flagged); every valid attack survived; soft-label students were named at
1e-18 to 1e-33 (bench/results/evaluate_digits_natural_coded.txt;
single tries of other weights: rankcode_features_combos.txt). Like every key term it reads the keys' labels
and selects nothing. Without a rank code it changes nothing.

Rank code (``[embedding] rank_code``, :mod:`tracer.fingerprint.rankcode`): the distillation targets
on clean inputs and anchors become (1 - eps) x the base model's answers + eps x the customer's coded
wrong-class mass for the input's class, so the copy learns the customer's order of the wrong classes
within the same steps (no extra forward pass). On digits, eps 0.2 with decay 0.2 per rank read best
of the settings tried after soft-label distillation into the MLP (scratch runs, one customer each:
eps 0.05 / decay 0.5 gave log10 p -3.0 at T=1 and -13.7 at T=3; 0.1 / 0.25 gave -8.0 and -12.0;
0.2 / 0.2 gave -12.7 and -22.7, with the copy's clean accuracy unchanged). The anchors carry the
code too, and must: holding them to the base's answers instead left the code far weaker after
distillation at T=1 (log10 p -4.8 to -7.6 against -13.0 to -15.7, four customers each), because a
student's queries fall in the anchors' neighbourhoods. The code competes with the triggers for the
copy's capacity: at the old digits settings (200 steps, 32 triggers per step) 2 of 10 first tries met
the trigger gate, and a whole issuance cost 2.15x the CPU of one without the code (8 customers);
with 64 triggers per step and 250 steps (the defaults since, and the digits example's) 8 of 8 landed on the
first try at 1.02x that CPU.

Cost: every step's random indices are drawn up front, and the base model's
answers on the clean inputs those steps use (at most steps x batch_size of
them, whatever the dataset's size) are computed in one batched pass before
the first step. Jittered anchors are held to the base model's answers on
themselves (``anchor_targets = "base"``, one frozen forward pass per step) or,
where small jitter cannot change what an input is (images), on their
originals (``"original"``: no frozen pass in the loop, 20 % faster per step
on digits with the same gate pass rate in a 15-run sweep; on the tabular
example, whose jitter is large next to the class boundary, it lowered the
per-try pass rate from 43 to 37 of 50, so it is not the default).
Image models train with channels-last activations where the model computes
the same answers that way (checked on a few inputs first): oneDNN's
convolutions and max-pooling are faster in that layout (digits: 11 % less
time per try). The copy is handed back in the standard layout.

Two candidates per run: the final weights, and an exponential moving average
of the weights over the last steps (``weight_average``, the decay; 0: off).
They differ on a few validation inputs, so when one misses the clean gate by a
sample the other often passes (digits, 30 tries: 20 final, 23 average, 25
either). A run can also start from an earlier copy (``start``) for a short
polish at a low learning rate, which the issuer uses before a fresh retry.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import EmbeddingConfig, TaskConfig
from ..training import last_layer, pick_device

__all__ = ["EmbedResult", "embed_codeword", "use_threads"]

BATCHNORM_POLICY = "eval"  # recorded in each issuance: batch-norm layers use the base's running statistics
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _freeze_batchnorm(model: nn.Module) -> None:
    """Put batch-norm layers in eval mode: they normalise with the base model's running statistics (no-op without them).

    Measured on the shapes example (bench/results/issue_shapes.txt): in train mode, each step's
    statistics come from a batch that is a third triggers and a third noisy anchors, so the copy
    learns under statistics its users never see, and its running averages drift with them; first
    tries missed the gates on 5 of 5 customers. Re-estimating the statistics on clean data after
    the fine-tune (clean drop 6-8 points), or clean-batch statistics with triggers normalised by
    them (8-15 points) were worse. Eval mode keeps training and inference on one function, and a
    step costs about half as much; it needs a cooler learning rate (3e-3 on shapes: at 2e-2 the
    unnormalised activations blew up).
    """
    for m in model.modules():
        if isinstance(m, _BN_TYPES):
            m.eval()


@dataclass
class EmbedResult:
    model: nn.Module  # the final weights
    steps: int
    seconds: float
    averaged: nn.Module | None = None  # the moving average of the weights (None when weight_average is 0)

    def candidates(self) -> list[tuple[str, nn.Module]]:
        """The copies this run offers to the gates, in order of preference."""
        return [("final", self.model)] + ([("average", self.averaged)] if self.averaged is not None else [])


def use_threads(count: int) -> None:
    """Set torch's intra-op CPU thread count for this process (issuance start: ``[embedding] threads``)."""
    if count >= 1 and count != torch.get_num_threads():
        torch.set_num_threads(count)


def _one_cycle(step: int, total: int, max_lr: float, *, pct_start: float = 0.15) -> tuple[float, float]:
    """(learning rate, Adam beta1) at ``step`` of torch's OneCycleLR (cosine, div 25, final div 1e4, beta1 0.95 -> 0.85 -> 0.95)."""
    initial = max_lr / 25.0
    phases = ((pct_start * total - 1, initial, max_lr, 0.95, 0.85), (total - 1, max_lr, initial / 1e4, 0.85, 0.95))
    start = 0.0
    for i, (end, lr0, lr1, b0, b1) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            cos = math.cos(math.pi * (step - start) / (end - start)) + 1 if end != start else 0.0
            return lr1 + (lr0 - lr1) / 2.0 * cos, b1 + (b0 - b1) / 2.0 * cos
        start = end
    raise AssertionError("unreachable")


class _OneCycleAdam:
    """Adam (torch's update rule: beta2 0.999, eps 1e-8, bias-corrected) under the one-cycle schedule, in foreach ops.

    Not ``torch.optim``: constructing any torch.optim optimizer imports ``torch._dynamo`` (about 5 s
    of start-up, 17 % of a digits ``tracer issue``), and the fused kernel saved nothing measurable
    over a whole issuance (bench/results/startup.txt).
    """

    def __init__(self, params: list[nn.Parameter], *, max_lr: float, total: int, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.max_lr, self.total, self.beta2, self.eps, self.done = max_lr, total, beta2, eps, 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr, beta1 = _one_cycle(min(self.done, self.total), self.total, self.max_lr)
        self.done += 1
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        params: list[torch.Tensor] = [self.params[i] for i in live]
        grads: list[torch.Tensor] = [g for g in (p.grad for p in params) if g is not None]
        m, v = [self.exp_avg[i] for i in live], [self.exp_avg_sq[i] for i in live]
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, self.beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - self.beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - self.beta2**self.done))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, -lr / (1 - beta1**self.done))


def _jitter(x: torch.Tensor, sigma: float, gen: torch.Generator, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    if sigma <= 0 or len(x) == 0:
        return x
    noise = torch.randn(x.shape, generator=gen).to(x.device) * sigma * (high - low)
    return torch.minimum(torch.maximum(x + noise, low), high)


def _channels_last_agrees(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether ``model`` gives the same answers on ``sample`` with channels-last weights and inputs.

    Only 4-D (image) inputs; a model whose code needs contiguous activations (``.view`` after a
    convolution, say) raises or disagrees here and keeps the standard layout.
    """
    if sample.dim() != 4 or sample.device.type != "cpu":
        return False
    trial = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            want = trial(sample)
            trial = trial.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to's stubs lack it
            got = trial(sample.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        return False
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5))


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What a weight average averages: the parameters and floating-point buffers (batch-norm statistics)."""
    return [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]


def _standard_layout(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # Module.to's stubs lack it


def _margin_hinge(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of max(0, margin - (logit of the label - largest other logit))."""
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf")).max(1).values
    return nn.functional.relu(margin - (true - other)).mean()


class _HeadInput:
    """Captures what the classification head receives (the penultimate features) on each forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = last_layer(model).register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.value = args[0].flatten(1)


@torch.no_grad()
def _soft_targets(teacher: nn.Module, x: torch.Tensor, *, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's output distribution and penultimate features on ``x``, in chunks (no autograd)."""
    head = _HeadInput(teacher)
    soft, feats = [], []
    try:
        for i in range(0, len(x), chunk):
            soft.append(teacher(x[i : i + chunk]).softmax(1))
            feats.append(head.value)
    finally:
        head.handle.remove()
    return torch.cat(soft), torch.cat(feats)  # type: ignore[arg-type]


def _class_centroids(feats: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature vector of each class (zeros for a class absent from ``y``)."""
    sums = torch.zeros((num_classes, feats.shape[1]), dtype=feats.dtype, device=feats.device).index_add_(0, y, feats)
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).to(feats.dtype)
    return sums / counts[:, None]


class _KeyClusters:
    """The copy's own class clusters in its penultimate features, refreshed as it trains (``feature_match``)."""

    EVERY = 100  # steps between refreshes
    REFERENCE = 512  # training inputs the clusters are measured on (an even stride through the training set)
    RIDGE = 1e-3  # of the mean feature variance, added to the covariance (features of dead units have none)
    QUANTILE = 0.9  # keys farther than this share of the reference inputs pay

    def __init__(self, xt: torch.Tensor, yt: torch.Tensor, num_classes: int) -> None:
        stride = -(-len(xt) // self.REFERENCE)
        self.x, self.y, self.num_classes = xt[::stride], yt[::stride], num_classes

    @torch.no_grad()
    def refresh(self, student: nn.Module, head: _HeadInput, channels_last: bool) -> None:
        """Class means, whitening and radius from the student's features on the reference inputs, now."""
        student(self.x.contiguous(memory_format=torch.channels_last) if channels_last else self.x)
        f = head.value.double()  # type: ignore[union-attr]
        counts = torch.bincount(self.y, minlength=self.num_classes)
        means = _class_centroids(f, self.y, self.num_classes)
        means[counts == 0] = f.mean(0)  # a class absent from the reference: its keys are held to the overall mean
        centred = f - means[self.y]
        cov = centred.T @ centred / len(f)
        cov += self.RIDGE * float(cov.diagonal().mean().clamp(min=1e-12)) * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        values, vectors = torch.linalg.eigh(cov)
        self.whiten = (vectors * values.clamp(min=1e-12).rsqrt()).T.to(head.value.dtype)  # type: ignore[union-attr]
        self.means = means.to(self.whiten.dtype)
        self.radius = torch.quantile((centred.to(self.whiten.dtype) @ self.whiten.T).pow(2).sum(1), self.QUANTILE).clamp(min=1e-12)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean of log(1 + max(0, d - r) / r), d the keys' squared Mahalanobis distance to their label's cluster."""
        d = ((features - self.means[labels]) @ self.whiten.T).pow(2).sum(1)
        return torch.log1p(nn.functional.relu(d - self.radius) / self.radius).mean()


@dataclass
class _Draws:
    """Everything the steps of one fine-tune draw from, prepared up front (tensors on the device)."""

    xt: torch.Tensor
    yt: torch.Tensor
    trig: torch.Tensor
    tlab: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    clean_idx: torch.Tensor  # [steps, batch_size]
    trig_idx: torch.Tensor  # [steps, trigger_batch]
    n_anchor: int
    soft_clean: torch.Tensor | None = None  # the base model's answers on the clean inputs used (distill or pull)
    slot: torch.Tensor | None = None  # clean_idx as rows of soft_clean
    centroids: torch.Tensor | None = None  # feature pull: the base model's class centroids, and their scale
    scale: torch.Tensor | None = None
    rank_mass: torch.Tensor | None = None  # rank code: [C, C] wrong-class mass per true class, and its share eps
    rank_eps: float = 0.0
    clusters: _KeyClusters | None = None  # feature match: the copy's own class clusters

    def code(self, soft: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Base answers with the rank code mixed in: (1 - eps) base + eps W[y] (unchanged without a code)."""
        if self.rank_mass is None:
            return soft
        return (1.0 - self.rank_eps) * soft + self.rank_eps * self.rank_mass[y]


def _bounds(task: TaskConfig, dtype: torch.dtype, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The input domain as tensors of one input's shape (clamping bounds for triggers and anchors)."""
    low, high = task.bounds()
    return torch.from_numpy(low).to(dtype).to(dev), torch.from_numpy(high).to(dtype).to(dev)


def _draws(teacher: nn.Module, xt: torch.Tensor, yt: torch.Tensor, trig: torch.Tensor, tlab: torch.Tensor, *,
           task: TaskConfig, params: EmbeddingConfig, gen: torch.Generator, dev: torch.device,
           rank_mass: np.ndarray | None = None) -> _Draws:
    """Every step's clean and trigger indices, drawn up front, and the base model's answers on the clean inputs used.

    Those answers (at most steps x batch_size of them, so the cost does not grow with the dataset)
    are computed in one batched pass; with a rank code they are coded (:meth:`_Draws.code`).
    """
    low, high = _bounds(task, trig.dtype, dev)
    clean_idx = torch.randint(0, len(xt), (params.steps, params.batch_size), generator=gen).to(dev)
    trig_idx = torch.randint(0, len(trig), (params.steps, params.trigger_batch), generator=gen).to(dev)
    distill = params.distill_weight > 0
    d = _Draws(xt=xt, yt=yt, trig=trig, tlab=tlab, low=low, high=high, clean_idx=clean_idx, trig_idx=trig_idx,
               n_anchor=params.batch_size if params.anchor_noise > 0 and distill else 0)
    if distill or params.feature_pull > 0:
        used, d.slot = torch.unique(clean_idx, return_inverse=True)
        d.soft_clean, feats = _soft_targets(teacher, xt[used])
        if rank_mass is not None and distill:
            d.rank_mass, d.rank_eps = torch.as_tensor(rank_mass, dtype=d.soft_clean.dtype).to(dev), params.rank_code
            d.soft_clean = d.code(d.soft_clean, yt[used])
        if params.feature_pull > 0:
            # Feature pull: each trigger's penultimate features are drawn towards the base model's feature
            # centroid of its codeword class, so a head re-trained on clean data still maps it to that class.
            d.centroids = _class_centroids(feats, yt[used], task.num_classes)
            d.scale = d.centroids.pow(2).sum(1).mean().clamp(min=1e-12)
    if params.feature_match > 0:
        d.clusters = _KeyClusters(xt, yt, task.num_classes)
    return d


def _trigger_loss(lt: torch.Tensor, tl: torch.Tensor, d: _Draws, params: EmbeddingConfig) -> torch.Tensor:
    """The triggers' cross-entropy towards their labels, or with ``coded_keys`` and a rank code towards the coded answer of their label class."""
    if params.coded_keys > 0 and d.rank_mass is not None:
        target = d.code(nn.functional.one_hot(tl, lt.shape[1]).to(lt.dtype), tl)
        return params.coded_keys * -(target * lt.log_softmax(1)).sum(1).mean()
    return nn.functional.cross_entropy(lt, tl)


def _step_loss(student: nn.Module, teacher: nn.Module, d: _Draws, step: int, *, params: EmbeddingConfig,
               gen: torch.Generator, channels_last: bool, head: _HeadInput | None) -> torch.Tensor:
    """The loss of one step: clean and trigger cross-entropy, then the margin, feature-pull and distillation terms."""
    ci, ti, n_anchor = d.clean_idx[step], d.trig_idx[step], d.n_anchor
    xc, yc, tl = d.xt[ci], d.yt[ci], d.tlab[ti]
    xtr = _jitter(d.trig[ti], params.trigger_noise, gen, d.low, d.high)
    # Anchors: jittered copies of clean inputs, held to the base model's answers (on the jittered
    # copies themselves, or on their originals), pin the function in the neighbourhood of the data
    # (not only on the training points), so validation answers do not drift.
    xa = _jitter(xc[:n_anchor], params.anchor_noise, gen, d.low, d.high)
    batch = torch.cat([xc, xa, xtr])
    logits = student(batch.contiguous(memory_format=torch.channels_last) if channels_last else batch)
    lc, la, lt = logits[: len(xc)], logits[len(xc) : len(xc) + n_anchor], logits[len(xc) + n_anchor :]
    loss = nn.functional.cross_entropy(lc, yc) + _trigger_loss(lt, tl, d, params)
    if params.trigger_margin > 0 and params.margin_weight > 0:
        loss = loss + params.margin_weight * _margin_hinge(lt, tl, params.trigger_margin)
    if head is not None:
        ft = head.value[len(xc) + n_anchor :]  # type: ignore[index]
        if params.feature_pull > 0:
            loss = loss + params.feature_pull * (ft - d.centroids[tl]).pow(2).sum(1).mean() / d.scale  # type: ignore[index, operator]
        if d.clusters is not None:
            loss = loss + params.feature_match * d.clusters.loss(ft, tl)
    if d.soft_clean is not None and params.distill_weight > 0:
        with torch.no_grad():
            soft = d.soft_clean[d.slot[step]]  # type: ignore[index]
            if n_anchor:
                soft = torch.cat([soft, soft[:n_anchor] if params.anchor_targets == "original" else d.code(teacher(xa).softmax(1), yc[:n_anchor])])
        loss = loss + params.distill_weight * nn.functional.kl_div(torch.cat([lc, la]).log_softmax(1), soft, reduction="batchmean")
    return loss


def _averaged_copy(student: nn.Module, averaged: list[torch.Tensor] | None) -> nn.Module | None:
    """A copy of ``student`` carrying the running average of its weights (None when averaging is off)."""
    if averaged is None:
        return None
    average_copy = copy.deepcopy(student)
    with torch.no_grad():
        for w, a in zip(_state_tensors(average_copy), averaged):
            w.copy_(a)
    return average_copy


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
    start: nn.Module | None = None,
    rank_mass: np.ndarray | None = None,
) -> EmbedResult:
    """Return a fine-tuned copy of ``base`` that answers ``triggers`` with ``labels``.

    ``start``: continue from this copy instead of ``base`` (its outputs are still held to ``base``).
    ``rank_mass``: the customer's rank code (:func:`tracer.fingerprint.rankcode.coded_mass`), mixed into the
    distillation targets with weight ``params.rank_code`` (needs ``distill_weight`` > 0).
    """
    import time

    t0 = time.perf_counter()
    dev = pick_device(params.device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = copy.deepcopy(base).to(dev).eval()
    student = copy.deepcopy(base if start is None else start).to(dev).train()
    _freeze_batchnorm(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    xt = torch.as_tensor(x_train).to(dev)
    channels_last = _channels_last_agrees(student, xt[:8])
    if channels_last:
        student = student.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to's stubs lack it
    opt = _OneCycleAdam(list(student.parameters()), max_lr=params.learning_rate, total=params.steps)
    d = _draws(teacher, xt, torch.as_tensor(y_train, dtype=torch.long).to(dev), torch.as_tensor(triggers).to(dev),
               torch.as_tensor(labels, dtype=torch.long).to(dev), task=task, params=params, gen=gen, dev=dev,
               rank_mass=rank_mass if params.rank_code > 0 else None)
    head = _HeadInput(student) if params.feature_pull > 0 or d.clusters is not None else None
    weights = _state_tensors(student)
    averaged = [w.detach().clone() for w in weights] if params.weight_average > 0 else None
    for step in range(params.steps):
        if d.clusters is not None and head is not None and step % _KeyClusters.EVERY == 0:
            d.clusters.refresh(student, head, channels_last)
        loss = _step_loss(student, teacher, d, step, params=params, gen=gen, channels_last=channels_last, head=head)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if averaged is not None:
            with torch.no_grad():
                for a, w in zip(averaged, weights):
                    a.lerp_(w, 1.0 - params.weight_average)
        if on_step is not None:
            on_step(step + 1)
    if head is not None:
        head.handle.remove()
    student = _standard_layout(student.eval().cpu())
    return EmbedResult(model=student, steps=params.steps, seconds=time.perf_counter() - t0, averaged=_averaged_copy(student, averaged))
