"""Export an issued copy to ONNX and check onnxruntime agrees with torch."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from ..config import TaskConfig
from ..errors import ModelError

__all__ = ["export_onnx", "check_onnx", "logit_tolerance", "OPSET"]

OPSET = 17


def export_onnx(model: nn.Module, task: TaskConfig) -> bytes:
    """ONNX bytes (opset 17, dynamic batch axis, input "input", output "logits")."""
    model = model.cpu().eval()
    example = torch.zeros((1, *task.input_shape), dtype=getattr(torch, task.input_dtype))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buf, dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            # PRESERVE, not EVAL: EVAL folds BatchNorm into the convolutions, and `tracer evaluate` maps the
            # ONNX initializers back onto the factory's state_dict by name (same bytes for models without BN).
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return buf.getvalue()


# Tolerance of the ONNX check, relative to the logits' magnitude. float32 keeps ~7 significant digits,
# and a reordered sum of n products loses up to ~sqrt(n) ulps: a correct resnet18 export differed by
# 7.8e-3 on logits of 18,862 (relative 4e-7), which a fixed 1e-3 rejected. 1e-4 of the largest logit
# leaves ~250x headroom over that, and still rejects a real export fault (a wrong weight or op moves
# logits by a visible fraction of their size); the 1e-5 floor covers logits near zero.
RTOL = 1e-4
ATOL = 1e-5


def logit_tolerance(logits: np.ndarray, *, rtol: float = RTOL, atol: float = ATOL) -> float:
    """Largest logit difference accepted between torch and onnxruntime: ``rtol * max(1, max|logit|) + atol``."""
    scale = float(np.max(np.abs(logits))) if logits.size else 0.0
    return rtol * max(1.0, scale) + atol


def check_onnx(onnx_bytes: bytes, model: nn.Module, inputs: np.ndarray, *, rtol: float = RTOL, atol: float = ATOL) -> float:
    """Run onnxruntime and torch on ``inputs``; raise ModelError if any class decision differs or the logits
    differ by more than :func:`logit_tolerance` of torch's logits (a bound that scales with the model).

    Returns the largest absolute logit difference (the issuance records it).
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: inputs})[0]
    with torch.no_grad():
        want = model.cpu().eval()(torch.as_tensor(inputs)).numpy()
    if got.shape != want.shape:
        raise ModelError(f"the exported ONNX model disagrees with torch (output shape {got.shape}, torch {want.shape})")
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    tol = logit_tolerance(want, rtol=rtol, atol=atol)
    flipped = int(np.sum(got.argmax(1) != want.argmax(1))) if got.size else 0
    if flipped or not diff <= tol:
        raise ModelError(f"the exported ONNX model disagrees with torch ({flipped} of {len(want)} class decisions differ; "
                         f"max logit difference {diff:.2e}, allowed {tol:.2e})")
    return diff
