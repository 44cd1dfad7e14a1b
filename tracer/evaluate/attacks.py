"""What a leaker might do to a copy before using or redistributing it.

Each attack is a plain function over torch models, ONNX bytes or query inputs,
so it can be used on its own:

* fine-tuning: :func:`finetune` (last layer only, or all layers), :func:`retrain_head`
  (re-initialise the last layer, train it, then train all layers);
* pruning: :func:`magnitude_prune`, :func:`fine_prune` (Liu et al. 2018: drop the
  penultimate units that are dormant on clean data, then fine-tune);
* weight quantization and noise: :func:`onnx_int8_dynamic`, :func:`onnx_int8_static`,
  :func:`onnx_float16`, :func:`quantize_weights` (n-bit), :func:`weight_noise`;
* input transformations applied at query time: :func:`input_noise`,
  :func:`input_quantize`, :func:`input_jpeg`, :func:`input_blur`, and
  :func:`randomized_smoothing` (a prediction wrapper);
* extraction: :func:`distill` (a fresh student trained on the copy's outputs);
* collusion: :func:`average_weights`, :func:`ensemble`;
* evasion: the copy served behind a query filter that the leaker fits on its own
  share (:mod:`.detectors`: k-nearest-neighbour distance, input statistics,
  Mahalanobis distance on the copy's penultimate features, an autoencoder's
  reconstruction error). Flagged queries get the copy's runner-up class
  (``evade-<detector>``) or a uniformly random class (``evade-<detector>-random``).
  Besides identification, each evasion row reports the detector's AUC between
  the keys and natural inputs, the share of each it flags, and the verdict of
  a real probe through a loopback server running the filter (:mod:`.evasion`).

A *predictor* is a callable ``x -> scores`` ([N, C] logits or probabilities,
numpy); identification uses its argmax. :data:`ATTACKS` lists the named attacks
of the suite (``tracer evaluate --attacks``), each a function of an
:class:`AttackContext` returning an :class:`Attacked`.

Attack strength follows what a determined leaker would try while keeping the
model useful. Where an attack has a strength knob (noise level, JPEG quality,
pruned fraction) the suite picks the *strongest* level whose accuracy on the
attacker's own data stays within the accuracy budget (5 points) of the copy's:
the leaker calibrates on the data it holds, never on the vendor's, and keeps a
1-point safety margin because its sample is small.
"""

from __future__ import annotations

import copy as _copy
import io
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ..config import TaskConfig
from ..training import accuracy, last_layer, scores, train_classifier
from .detectors import Detector, detector_figures, filtered_predictor, make_detector

__all__ = [
    "Predictor", "AttackContext", "Attacked", "AttackSpec", "ATTACKS", "GROUPS", "attack_names", "resolve_attacks",
    "torch_predictor", "onnx_predictor", "finetune", "retrain_head", "magnitude_prune", "fine_prune",
    "onnx_int8_dynamic", "onnx_int8_static", "onnx_float16", "quantize_weights", "weight_noise",
    "input_noise", "input_quantize", "input_jpeg", "input_blur", "randomized_smoothing", "distill",
    "average_weights", "ensemble", "last_layer", "softmax",
]

Predictor = Callable[[np.ndarray], np.ndarray]

ACCURACY_BUDGET = 0.05  # Lukas et al., S&P 2022: an attack may cost at most 5 points of accuracy
CALIBRATION_MARGIN = 0.01  # a leaker calibrating on its own small sample keeps a 1-point safety margin

_L = TypeVar("_L")  # an attack strength: a noise level, a JPEG quality, a fraction


# --------------------------------------------------------------------------- predictors


def softmax(scores: np.ndarray) -> np.ndarray:
    z = np.asarray(scores, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def torch_predictor(model: nn.Module, *, batch_size: int = 2048) -> Predictor:
    """Scores of a torch model on the CPU (:func:`tracer.training.scores`)."""
    model = model.cpu().eval()
    return lambda x: scores(model, x, batch_size=batch_size)


def onnx_predictor(onnx_bytes: bytes) -> Predictor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {inp.name: np.ascontiguousarray(x).astype(dtype)})[0], dtype=np.float32)

    return predict


def _acc(predict: Predictor, x: np.ndarray, y: np.ndarray) -> float:
    return accuracy(predict(x).argmax(1), y) if len(y) else 0.0


# --------------------------------------------------------------------------- training helpers


def _weight_tensors(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Weights of convolutions and linear layers (matrices and kernels; not biases or norms)."""
    return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]


def _fit(
    model: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 32,
    params: Sequence[nn.Parameter] | None = None,
    soft: bool = False,
    masks: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """:func:`tracer.training.train_classifier` on the CPU, with torch's global seed set too (as the attacks were recorded)."""
    torch.manual_seed(seed)
    return train_classifier(model, x, targets, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, device="cpu",
                            params=params, soft=soft, masks=masks)


# --------------------------------------------------------------------------- fine-tuning


def finetune(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 5, lr: float = 1e-3,
             last_only: bool = False, seed: int = 0, batch_size: int = 32) -> nn.Module:
    """A fine-tuned copy of ``model`` (Adam, cross-entropy on the attacker's labels)."""
    m = _copy.deepcopy(model)
    params = list(last_layer(m).parameters()) if last_only else None
    return _fit(m, x, y, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, params=params)


def retrain_head(model: nn.Module, x: np.ndarray, y: np.ndarray, *, head_epochs: int = 5, epochs: int = 5,
                 head_lr: float = 1e-2, lr: float = 1e-3, seed: int = 0, batch_size: int = 32) -> nn.Module:
    """Re-initialise the last layer, train it alone, then fine-tune all layers."""
    m = _copy.deepcopy(model)
    head = last_layer(m)
    torch.manual_seed(seed)
    head.reset_parameters()  # type: ignore[operator]
    _fit(m, x, y, epochs=head_epochs, lr=head_lr, seed=seed, batch_size=batch_size, params=list(head.parameters()))
    return _fit(m, x, y, epochs=epochs, lr=lr, seed=seed + 1, batch_size=batch_size)


# --------------------------------------------------------------------------- pruning


def magnitude_prune(model: nn.Module, fraction: float) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Zero the ``fraction`` of smallest-magnitude weights in every layer; returns (model, masks)."""
    m = _copy.deepcopy(model)
    masks = {}
    with torch.no_grad():
        for name, p in _weight_tensors(m):
            k = int(round(fraction * p.numel()))
            mask = torch.ones_like(p)
            if k > 0:
                idx = p.abs().flatten().argsort()[:k]
                mask.view(-1)[idx] = 0.0
            p.mul_(mask)
            masks[name] = mask
    return m, masks


def _head_input_activity(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    head = last_layer(model)
    acts = []
    hook = head.register_forward_hook(lambda mod, inp, out: acts.append(inp[0].detach().abs().reshape(len(inp[0]), -1).mean(0)))
    try:
        torch_predictor(model)(x)
    finally:
        hook.remove()
    return torch.stack(acts).mean(0)


def fine_prune(model: nn.Module, x: np.ndarray, y: np.ndarray, *, fractions: Sequence[float] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
               budget: float = ACCURACY_BUDGET, epochs: int = 5, lr: float = 1e-3, seed: int = 0) -> tuple[nn.Module, float]:
    """Fine-pruning (Liu, Dolan-Gavitt, Garg, RAID 2018).

    Units feeding the last layer are ranked by their mean activation on the
    attacker's clean data; the most dormant are removed (their weights into the
    head zeroed), increasing the fraction while accuracy on that data stays
    within ``budget`` of the unpruned model; then all layers are fine-tuned
    with the pruned units kept at zero. Returns (model, fraction pruned).
    """
    m = _copy.deepcopy(model)
    head = last_layer(m)
    if not isinstance(head, nn.Linear):
        raise ValueError("fine-pruning needs a linear last layer")
    ref = _acc(torch_predictor(m), x, y)
    order = _head_input_activity(m, x).argsort()  # most dormant first
    chosen, mask = 0.0, torch.ones_like(head.weight)
    for f in fractions:
        trial = torch.ones_like(head.weight)
        trial[:, order[: int(round(f * len(order)))]] = 0.0
        probe = _copy.deepcopy(m)
        with torch.no_grad():
            last_layer(probe).get_parameter("weight").mul_(trial)
        if ref - _acc(torch_predictor(probe), x, y) > budget:
            break
        chosen, mask = f, trial
    with torch.no_grad():
        head.weight.mul_(mask)
    name = next(n for n, p in m.named_parameters() if p is head.weight)
    _fit(m, x, y, epochs=epochs, lr=lr, seed=seed, masks={name: mask})
    return m, chosen


# --------------------------------------------------------------------------- quantization and noise


class _quiet_logging:
    """onnxruntime.quantization logs advice ("consider pre-processing") on the root logger: keep stderr clean."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger()
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _to_tmp(data: bytes, folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def onnx_int8_dynamic(onnx_bytes: bytes) -> bytes:
    """onnxruntime dynamic quantization: int8 weights, activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        src = _to_tmp(onnx_bytes, Path(tmp), "in.onnx")
        dst = Path(tmp) / "out.onnx"
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            data = dst.read_bytes()
            onnx_predictor(data)  # some ops (ConvInteger) have no int8-weight kernel on the CPU
        except Exception:
            quantize_dynamic(src, dst, weight_type=QuantType.QUInt8)
            data = dst.read_bytes()
        return data


def onnx_int8_static(onnx_bytes: bytes, calibration: np.ndarray, *, per_channel: bool = False) -> bytes:
    """onnxruntime static quantization (QDQ, int8 weights and activations), calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.batches = iter([{name: calibration[i : i + 64].astype(np.float32)} for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.batches, None)

    import onnxruntime as ort

    name = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        src = _to_tmp(onnx_bytes, Path(tmp), "in.onnx")
        dst = Path(tmp) / "out.onnx"
        quantize_static(src, dst, Reader(name), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def onnx_float16(onnx_bytes: bytes) -> bytes:
    """Float16 weights and arithmetic (onnxruntime.transformers.float16; float32 inputs and outputs kept)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_from_string(onnx_bytes), keep_io_types=True)
    return model.SerializeToString()


def quantize_weights(model: nn.Module, bits: int = 5) -> nn.Module:
    """Round every weight tensor to ``2**bits - 1`` symmetric uniform levels (per tensor); biases stay float."""
    m = _copy.deepcopy(model)
    half = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for _, p in _weight_tensors(m):
            scale = p.abs().max() / half
            if scale > 0:
                p.copy_(torch.round(p / scale).clamp(-half, half) * scale)
    return m


def weight_noise(model: nn.Module, sigma: float, *, seed: int = 0) -> nn.Module:
    """Add Gaussian noise to every weight tensor, ``sigma`` times that tensor's standard deviation."""
    m = _copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in _weight_tensors(m):
            p.add_(torch.randn(p.shape, generator=gen) * sigma * p.std())
    return m


# --------------------------------------------------------------------------- input transformations


def input_noise(x: np.ndarray, task: TaskConfig, sigma: float, *, seed: int = 0) -> np.ndarray:
    """Gaussian noise of ``sigma`` times the input range, clipped to the domain."""
    low, high = task.bounds(dtype=np.float32)
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.standard_normal(x.shape).astype(np.float32) * sigma * (high - low), low, high).astype(x.dtype)


def input_quantize(x: np.ndarray, task: TaskConfig, bits: int = 8) -> np.ndarray:
    """Bit-depth reduction (feature squeezing): each value rounded to ``2**bits`` levels over its range."""
    low, high = task.bounds(dtype=np.float32)
    levels = 2**bits - 1
    q = np.round((np.clip(x, low, high) - low) / (high - low) * levels) / levels
    return (low + q * (high - low)).astype(x.dtype)


def _as_images(x: np.ndarray, task: TaskConfig) -> np.ndarray:
    if len(task.input_shape) != 3:
        raise ValueError("image transformations need input_shape [channels, height, width]")
    return x


def input_jpeg(x: np.ndarray, task: TaskConfig, quality: int = 75) -> np.ndarray:
    """Encode each image as 8-bit JPEG at ``quality`` with Pillow and decode it again."""
    from PIL import Image

    _as_images(x, task)
    low, high = task.bounds(dtype=np.float32)
    u8 = np.round((np.clip(x, low, high) - low) / (high - low) * 255).astype(np.uint8)
    out = np.empty_like(u8)
    for i, img in enumerate(u8):
        pil = Image.fromarray(img[0]) if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out[i] = dec[None] if img.shape[0] == 1 else dec.transpose(2, 0, 1)
    return (low + out.astype(np.float32) / 255.0 * (high - low)).astype(x.dtype)


def input_blur(x: np.ndarray, task: TaskConfig, sigma: float = 0.5) -> np.ndarray:
    """Spatial smoothing: a Gaussian blur of ``sigma`` pixels (3x3 or 5x5 kernel, edges replicated)."""
    _as_images(x, task)
    radius = 1 if sigma <= 0.75 else 2
    r = np.arange(-radius, radius + 1, dtype=np.float64)
    k1 = np.exp(-(r**2) / (2 * sigma**2))
    k1 /= k1.sum()
    kernel = torch.as_tensor(np.outer(k1, k1), dtype=torch.float32)
    c = x.shape[1]
    weight = kernel.expand(c, 1, *kernel.shape).contiguous()
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    xt = nn.functional.pad(xt, (radius,) * 4, mode="replicate")
    return nn.functional.conv2d(xt, weight, groups=c).numpy().astype(x.dtype)


def randomized_smoothing(predict: Predictor, task: TaskConfig, sigma: float, *, samples: int = 16, seed: int = 0) -> Predictor:
    """Answer with the majority class over ``samples`` noisy versions of each query (Cohen et al. 2019)."""

    def smoothed(x: np.ndarray) -> np.ndarray:
        votes = np.zeros((len(x), task.num_classes), dtype=np.float32)
        for s in range(samples):
            votes[np.arange(len(x)), predict(input_noise(x, task, sigma, seed=seed + s)).argmax(1)] += 1.0
        return votes / samples

    return smoothed


def _transformed(predict: Predictor, transform: Callable[[np.ndarray], np.ndarray]) -> Predictor:
    return lambda x: predict(transform(x))


# --------------------------------------------------------------------------- extraction and collusion


def distill(teacher: Predictor, student: nn.Module, x: np.ndarray, *, epochs: int = 60, lr: float = 1e-3,
            temperature: float = 1.0, seed: int = 0, batch_size: int = 32) -> nn.Module:
    """Train a fresh ``student`` on the teacher's output distribution over ``x`` (model extraction).

    The teacher is only queried, as a leaker with an API or an opaque runtime would.
    """
    target = softmax(teacher(x) / temperature).astype(np.float32)
    return _fit(student, x, target, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, soft=True)


def average_weights(models: Sequence[nn.Module]) -> nn.Module:
    """The parameter-wise mean of models of one architecture (collusion by weight averaging)."""
    out = _copy.deepcopy(models[0])
    states = [m.state_dict() for m in models]
    avg = {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype) if states[0][k].is_floating_point() else states[0][k]
           for k in states[0]}
    out.load_state_dict(avg)
    return out.eval()


def ensemble(predictors: Sequence[Predictor]) -> Predictor:
    """Mean of the softmax outputs of several models (collusion by output ensembling)."""
    return lambda x: np.mean([softmax(p(x)) for p in predictors], axis=0)


# --------------------------------------------------------------------------- the named attacks of the suite


@dataclass
class AttackContext:
    """What the leaker holds: the copy (and for collusion other copies) plus a share of data."""

    task: TaskConfig
    copy: nn.Module  # the attacked customer's copy, as a torch model
    copy_onnx: bytes  # the same copy, as issued
    x_attack: np.ndarray
    y_attack: np.ndarray
    make_model: Callable[[], nn.Module]
    make_model_alt: Callable[[], nn.Module] | None = None
    colluders: list[tuple[str, nn.Module]] = field(default_factory=list)  # other customers' copies
    seed: int = 0
    distill_epochs: int = 60
    budget: float = ACCURACY_BUDGET
    keys: np.ndarray | None = None  # the fingerprint key inputs (evasion: what the filter should not catch)
    natural: np.ndarray | None = None  # natural queries: the vendor's validation inputs, the probe's decoys
    probe: Callable[[Callable[[np.ndarray], np.ndarray], str], dict] | None = None  # (flags, answer) -> a probe through that filter
    rank_probe: Callable[[Callable[[np.ndarray], np.ndarray], str], dict] | None = None  # the same, `tracer probe --rank-code` with scores
    detectors: dict[str, Detector] = field(default_factory=dict)  # fitted once, shared by a detector's rows

    @property
    def copy_predict(self) -> Predictor:
        return torch_predictor(self.copy)

    def strongest(self, levels: Sequence[_L], build: Callable[[_L], Predictor]) -> tuple[_L, Predictor]:
        """The strongest level (levels go weak to strong) whose accuracy on the attacker's data stays in budget."""
        ref = _acc(self.copy_predict, self.x_attack, self.y_attack)
        target = self.budget - CALIBRATION_MARGIN
        chosen: tuple[_L, Predictor] | None = None
        for level in levels:
            pred = build(level)
            within = ref - _acc(pred, self.x_attack, self.y_attack) <= target
            if within or chosen is None:  # even the weakest level is kept (the suite then flags it)
                chosen = (level, pred)
            if not within:
                break
        assert chosen is not None, "strongest() needs at least one level"
        return chosen


@dataclass
class Attacked:
    predict: Predictor
    params: dict = field(default_factory=dict)
    customers: list[str] | None = None  # the customers whose copies went in (default: the attacked one)
    note: str = ""
    evasion: dict | None = None  # evasion attacks: detector figures and the probe (see .evasion)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    group: str
    description: str
    run: Callable[[AttackContext], Attacked]
    needs: str = ""  # "image", "alt", "copies:2", "copies:3"

    def applicable(self, ctx: AttackContext) -> str | None:
        """None if the attack can run here, else why not."""
        if self.needs == "image" and (ctx.task.domain != "image" or len(ctx.task.input_shape) != 3):
            return "needs image inputs"
        if self.needs == "alt" and ctx.make_model_alt is None:
            return "no alternative architecture (model.factory's module has no make_model_alt)"
        if self.needs.startswith("copies:") and 1 + len(ctx.colluders) < int(self.needs.split(":")[1]):
            return f"needs {self.needs.split(':')[1]} issued copies"
        return None


def _ft(lr: float, last_only: bool = False):
    def run(ctx: AttackContext) -> Attacked:
        m = finetune(ctx.copy, ctx.x_attack, ctx.y_attack, epochs=5, lr=lr, last_only=last_only, seed=ctx.seed)
        return Attacked(torch_predictor(m), {"epochs": 5, "optimizer": "Adam", "lr": lr, "layers": "last" if last_only else "all"})
    return run


def _reinit(lr: float):
    def run(ctx: AttackContext) -> Attacked:
        m = retrain_head(ctx.copy, ctx.x_attack, ctx.y_attack, head_epochs=5, epochs=5, head_lr=1e-2, lr=lr, seed=ctx.seed)
        return Attacked(torch_predictor(m), {"head_epochs": 5, "head_lr": 1e-2, "epochs": 5, "lr": lr})
    return run


def _prune(fraction: float):
    def run(ctx: AttackContext) -> Attacked:
        m, _ = magnitude_prune(ctx.copy, fraction)
        return Attacked(torch_predictor(m), {"fraction": fraction, "scope": "per layer, weights"})
    return run


def _fine_prune(ctx: AttackContext) -> Attacked:
    m, f = fine_prune(ctx.copy, ctx.x_attack, ctx.y_attack, budget=ctx.budget, seed=ctx.seed)
    return Attacked(torch_predictor(m), {"pruned_units": f, "epochs": 5, "lr": 1e-3})


def _int8_dynamic(ctx: AttackContext) -> Attacked:
    return Attacked(onnx_predictor(onnx_int8_dynamic(ctx.copy_onnx)), {"tool": "onnxruntime.quantization.quantize_dynamic"})


def _int8_static(ctx: AttackContext) -> Attacked:
    data = onnx_int8_static(ctx.copy_onnx, ctx.x_attack)
    return Attacked(onnx_predictor(data), {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "calibration": len(ctx.x_attack)})


def _float16(ctx: AttackContext) -> Attacked:
    return Attacked(onnx_predictor(onnx_float16(ctx.copy_onnx)), {"tool": "onnxruntime.transformers.float16"})


def _bits(bits: int):
    def run(ctx: AttackContext) -> Attacked:
        return Attacked(torch_predictor(quantize_weights(ctx.copy, bits)), {"bits": bits, "scheme": "symmetric uniform, per tensor"})
    return run


def _weight_noise(ctx: AttackContext) -> Attacked:
    level, pred = ctx.strongest((0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), lambda s: torch_predictor(weight_noise(ctx.copy, s, seed=ctx.seed)))
    return Attacked(pred, {"sigma": level, "relative_to": "each tensor's std"})


def _input_noise(ctx: AttackContext) -> Attacked:
    base = ctx.copy_predict
    level, pred = ctx.strongest((0.02, 0.05, 0.1, 0.15, 0.2, 0.3), lambda s: _transformed(base, lambda x: input_noise(x, ctx.task, s, seed=ctx.seed)))
    return Attacked(pred, {"sigma": level, "relative_to": "input range"})


def _input_8bit(ctx: AttackContext) -> Attacked:
    base = ctx.copy_predict
    return Attacked(_transformed(base, lambda x: input_quantize(x, ctx.task, 8)), {"bits": 8})


def _input_jpeg(ctx: AttackContext) -> Attacked:
    base = ctx.copy_predict
    level, pred = ctx.strongest((90, 75, 50, 25, 10), lambda q: _transformed(base, lambda x: input_jpeg(x, ctx.task, q)))
    return Attacked(pred, {"quality": level})


def _input_smooth(ctx: AttackContext) -> Attacked:
    base = ctx.copy_predict
    if ctx.task.domain == "image" and len(ctx.task.input_shape) == 3:
        level, pred = ctx.strongest((0.5, 0.75, 1.0, 1.5), lambda s: _transformed(base, lambda x: input_blur(x, ctx.task, s)))
        return Attacked(pred, {"kind": "Gaussian blur", "sigma_pixels": level})
    level, pred = ctx.strongest((0.02, 0.05, 0.1, 0.2, 0.3), lambda s: randomized_smoothing(base, ctx.task, s, seed=ctx.seed))
    return Attacked(pred, {"kind": "randomized smoothing (majority of 16 noisy queries)", "sigma": level, "relative_to": "input range"})


def _distill(alt: bool):
    def run(ctx: AttackContext) -> Attacked:
        torch.manual_seed(ctx.seed)
        student = (ctx.make_model_alt if alt else ctx.make_model)()  # type: ignore[misc]
        m = distill(ctx.copy_predict, student, ctx.x_attack, epochs=ctx.distill_epochs, seed=ctx.seed)
        return Attacked(torch_predictor(m), {"student": "alternative architecture" if alt else "same architecture", "epochs": ctx.distill_epochs,
                                             "queries": len(ctx.x_attack), "targets": "soft (softmax)"})
    return run


def _average(k: int):
    def run(ctx: AttackContext) -> Attacked:
        group = [ctx.copy] + [m for _, m in ctx.colluders[: k - 1]]
        return Attacked(torch_predictor(average_weights(group)), {"copies": k}, customers=[cid for cid, _ in ctx.colluders[: k - 1]])
    return run


def _ensemble(k: int):
    def run(ctx: AttackContext) -> Attacked:
        group = [ctx.copy] + [m for _, m in ctx.colluders[: k - 1]]
        return Attacked(ensemble([torch_predictor(m) for m in group]), {"copies": k, "combine": "mean of softmax"},
                        customers=[cid for cid, _ in ctx.colluders[: k - 1]])
    return run


def _detector(ctx: AttackContext, name: str) -> Detector:
    """The leaker's detector, fitted on its own share (labels included: Mahalanobis' class means), once per context."""
    if name not in ctx.detectors:
        ctx.detectors[name] = make_detector(name, task=ctx.task, model=ctx.copy, seed=ctx.seed).fit(ctx.x_attack, ctx.y_attack)
    return ctx.detectors[name]


def _evade(name: str, answer: str):
    def run(ctx: AttackContext) -> Attacked:
        det = _detector(ctx, name)
        figures = {**detector_figures(det, ctx.keys, ctx.natural), "answer": answer, "probe": None, "rank_probe": None}
        if ctx.probe is not None:
            figures["probe"] = ctx.probe(det.flags, answer)
        if ctx.rank_probe is not None:
            figures["rank_probe"] = ctx.rank_probe(det.flags, answer)
        return Attacked(filtered_predictor(ctx.copy_predict, det, answer=answer, seed=ctx.seed),
                        {"detector": name, "answer": answer, **det.describe()}, evasion=figures)
    return run


_DETECTOR_TEXT = {
    "knn": "mean distance to the 5 nearest of the leaker's inputs, above the 99.5th percentile of its held-out inputs",
    "stats": "input statistics (images: near-zero share, mean, border mass; tabular: max |z|, mean, std) outside the range of the leaker's inputs",
    "mahalanobis": "Mahalanobis distance of the copy's penultimate features to the nearest class mean, above the 99.5th percentile of held-out inputs",
    "autoencoder": "a small autoencoder's reconstruction error, above the 99.5th percentile of held-out inputs",
}


def _evasion_specs() -> list[AttackSpec]:
    out = []
    for answer, suffix, what in (("runner-up", "", "the copy's runner-up class"), ("random", "-random", "a uniformly random class")):
        for det, text in _DETECTOR_TEXT.items():
            out.append(AttackSpec(f"evade-{det}{suffix}", "evasion", f"query filter: {text}; flagged queries get {what}", _evade(det, answer)))
    return out


ATTACKS: dict[str, AttackSpec] = {s.name: s for s in [
    AttackSpec("ft-last", "fine-tuning", "fine-tune the last layer only, 5 epochs, Adam 1e-2", _ft(1e-2, last_only=True)),
    AttackSpec("ft-all-1e-3", "fine-tuning", "fine-tune all layers, 5 epochs, Adam 1e-3", _ft(1e-3)),
    AttackSpec("ft-all-1e-2", "fine-tuning", "fine-tune all layers, 5 epochs, Adam 1e-2", _ft(1e-2)),
    AttackSpec("ft-reinit", "fine-tuning", "re-initialise the last layer, train it 5 epochs (Adam 1e-2), then all layers 5 epochs (Adam 1e-3)", _reinit(1e-3)),
    AttackSpec("ft-reinit-1e-2", "fine-tuning", "re-initialise the last layer, train it 5 epochs (Adam 1e-2), then all layers 5 epochs (Adam 1e-2)",
               _reinit(1e-2)),
    AttackSpec("prune-30", "pruning", "magnitude pruning, 30 % of each layer's weights", _prune(0.3)),
    AttackSpec("prune-50", "pruning", "magnitude pruning, 50 % of each layer's weights", _prune(0.5)),
    AttackSpec("prune-70", "pruning", "magnitude pruning, 70 % of each layer's weights", _prune(0.7)),
    AttackSpec("fine-prune", "pruning", "fine-pruning: drop dormant penultimate units (strongest within budget), then fine-tune all layers 5 epochs, Adam 1e-3",
               _fine_prune),
    AttackSpec("int8-dynamic", "quantization", "ONNX int8 dynamic quantization (onnxruntime)", _int8_dynamic),
    AttackSpec("int8-static", "quantization", "ONNX int8 static quantization, QDQ, calibrated on the attacker's data (onnxruntime)", _int8_static),
    AttackSpec("float16", "quantization", "ONNX float16 conversion (onnxruntime.transformers.float16)", _float16),
    AttackSpec("5bit", "quantization", "5-bit weights (31 symmetric levels per tensor)", _bits(5)),
    AttackSpec("weight-noise", "quantization", "Gaussian weight noise (strongest level within budget)", _weight_noise),
    AttackSpec("input-noise", "input", "Gaussian noise on every query (strongest level within budget)", _input_noise),
    AttackSpec("input-8bit", "input", "8-bit quantization of every query (feature squeezing)", _input_8bit),
    AttackSpec("input-jpeg", "input", "JPEG re-encoding of every query (strongest quality within budget)", _input_jpeg, needs="image"),
    AttackSpec("input-smooth", "input", "smoothing of every query: Gaussian blur for images, randomized smoothing otherwise (strongest within budget)",
               _input_smooth),
    AttackSpec("distill-same", "extraction", "distillation into a fresh student of the same architecture on the attacker's data", _distill(False)),
    AttackSpec("distill-alt", "extraction", "distillation into a fresh student of another architecture on the attacker's data", _distill(True), needs="alt"),
    AttackSpec("average-2", "collusion", "weight average of 2 customers' copies", _average(2), needs="copies:2"),
    AttackSpec("average-3", "collusion", "weight average of 3 customers' copies", _average(3), needs="copies:3"),
    AttackSpec("ensemble-3", "collusion", "output ensemble (mean softmax) of 3 customers' copies", _ensemble(3), needs="copies:3"),
    *_evasion_specs(),
]}

GROUPS: dict[str, list[str]] = {}
for _spec in ATTACKS.values():
    GROUPS.setdefault(_spec.group, []).append(_spec.name)


def attack_names() -> list[str]:
    return list(ATTACKS)


def resolve_attacks(spec: str | Sequence[str] | None) -> list[str]:
    """Attack names from a comma-separated list of names and group names ("all" for every attack).

    Raises ValueError naming the first unknown entry.
    """
    if spec is None:
        return attack_names()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no attack given")
    out: list[str] = []
    for item in items:
        key = item.lower()
        names = attack_names() if key == "all" else GROUPS.get(key) or ([key] if key in ATTACKS else None)
        if names is None:
            raise ValueError(f"unknown attack {item!r}")
        out += [n for n in names if n not in out]
    return out
