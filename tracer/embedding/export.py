"""Export an issued copy to ONNX and check onnxruntime agrees with torch."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from ..config import TaskConfig
from ..errors import ModelError

__all__ = ["export_onnx", "check_onnx", "OPSET"]

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
        )
    return buf.getvalue()


def check_onnx(onnx_bytes: bytes, model: nn.Module, inputs: np.ndarray, *, atol: float = 1e-3) -> float:
    """Run onnxruntime and torch on ``inputs``; raise ModelError if classes or logits disagree.

    Returns the largest absolute logit difference.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: inputs})[0]
    with torch.no_grad():
        want = model.cpu().eval()(torch.as_tensor(inputs)).numpy()
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if got.shape != want.shape or diff > atol or not np.array_equal(got.argmax(1), want.argmax(1)):
        raise ModelError(f"the exported ONNX model disagrees with torch (max logit difference {diff:.2e})")
    return diff
