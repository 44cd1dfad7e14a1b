"""A recovered model file, loaded with onnxruntime and checked against the workspace's task.

Accepts any single-input ONNX classifier: any input name, a dynamic batch axis
or one fixed to 1 (then queried one input at a time), float32/float16/float64
inputs, and outputs that are numeric logits, probabilities or class indices.

A suspect is hostile input: its total run time is bounded (``time_limit`` seconds over all
its runs, ``tracer identify --time-limit``, default :data:`DEFAULT_TIME_LIMIT`). A watchdog
thread sets onnxruntime's ``RunOptions.terminate`` when the budget is spent, which stops a
run between kernels, so even a Loop of 10^12 iterations ends; the error names the limit.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from .._files import sha256_file
from ..config import TaskConfig
from ..errors import ModelError

__all__ = ["SuspectModel", "DEFAULT_TIME_LIMIT"]

DEFAULT_TIME_LIMIT = 120.0  # seconds: the issued copies answer every probe in well under one
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_NUMERIC_OUTPUTS = {f"tensor({t})" for t in ("float", "float16", "double", "bfloat16", "int8", "int16", "int32", "int64",
                                               "uint8", "uint16", "uint32", "uint64")}


class SuspectTimeout(ModelError):
    """The suspect model ran past its time limit."""


class SuspectModel:
    """Query interface over an ONNX file: ``predict(x) -> class indices``."""

    def __init__(self, path: Path, task: TaskConfig, *, time_limit: float | None = DEFAULT_TIME_LIMIT) -> None:
        """``time_limit``: seconds the suspect may run in total (None: unbounded)."""
        import onnxruntime as ort

        if time_limit is not None and not (0 < time_limit < float("inf")):
            raise ModelError(f"time limit must be a positive number of seconds, not {time_limit!r}")
        self.path = Path(path)
        self.task = task
        self.time_limit = time_limit
        self._time_left = time_limit
        if not self.path.is_file():
            raise ModelError(f"model file {self.path} does not exist")
        if self.path.stat().st_size == 0:
            raise ModelError(f"model file {self.path.name} is empty")
        self.sha256 = sha256_file(self.path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path.name} is not a loadable ONNX model (corrupt or not ONNX): {first}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path.name} has {len(inputs)} inputs; tracer queries classifiers with exactly one input")
        inp = inputs[0]
        self.input_name = inp.name
        if inp.type not in _FLOAT_TYPES:
            raise ModelError(f"{self.path.name} takes {inp.type} input; the task's input is {task.input_dtype}")
        self.input_dtype = _FLOAT_TYPES[inp.type]
        shape = list(inp.shape)
        want = list(task.input_shape)
        if len(shape) != len(want) + 1:
            raise ModelError(f"{self.path.name} expects input of rank {len(shape)} {shape}; the task needs [batch, {', '.join(map(str, want))}]")
        for got, exp in zip(shape[1:], want):
            if isinstance(got, int) and got != exp:
                raise ModelError(f"{self.path.name} expects input shape {shape[1:]}; the task's input shape is {want}")
        batch = shape[0]
        if isinstance(batch, int) and batch != 1:
            raise ModelError(f"{self.path.name} has a fixed batch size of {batch}; tracer needs a dynamic batch axis or batch 1")
        self.one_at_a_time = batch == 1
        outputs = self.session.get_outputs()
        if not outputs:
            raise ModelError(f"{self.path.name} has no outputs")
        if outputs[0].type not in _NUMERIC_OUTPUTS:
            raise ModelError(f"{self.path.name} outputs {outputs[0].type}; tracer needs numeric class scores or class indices")
        self.output_name = outputs[0].name
        # Dry run: the output must be a class vector or a class index.
        self.predict(np.zeros((1, *want), dtype=np.float32))

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One session run, stopped by a watchdog when the suspect's time budget runs out."""
        import onnxruntime as ort

        if self._time_left is not None and self._time_left <= 0:
            raise self._timeout()
        options = ort.RunOptions()
        options.log_severity_level = 4
        watchdog = None
        if self._time_left is not None:
            watchdog = threading.Timer(self._time_left, lambda: setattr(options, "terminate", True))
            watchdog.daemon = True
            watchdog.start()
        t0 = time.monotonic()
        try:
            out = self.session.run([self.output_name], {self.input_name: x.astype(self.input_dtype)}, options)[0]
        except Exception as exc:
            if options.terminate:
                raise self._timeout() from None
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path.name} failed to run on task-shaped input: {first}") from None
        finally:
            if watchdog is not None and self._time_left is not None:
                watchdog.cancel()
                self._time_left -= time.monotonic() - t0
        out = np.asarray(out)
        if not (np.issubdtype(out.dtype, np.number) or out.dtype == np.bool_):
            raise ModelError(f"{self.path.name} outputs {out.dtype} values; tracer needs numeric class scores or class indices")
        return out

    def _timeout(self) -> SuspectTimeout:
        return SuspectTimeout(f"{self.path.name} ran past the time limit of {self.time_limit:g} s and was stopped",
                              hint="raise --time-limit if the model is legitimately this slow")

    def _classes(self, out: np.ndarray, n: int) -> np.ndarray:
        c = self.task.num_classes
        if out.ndim == 2 and out.shape == (n, c):
            if not np.all(np.isfinite(out)):
                raise ModelError(f"{self.path.name} outputs non-finite scores")
            return out.argmax(axis=1).astype(np.int64)
        if out.ndim in (1, 2) and out.shape[0] == n and out.size == n:
            flat = out.reshape(n)
            if np.issubdtype(flat.dtype, np.integer) or np.all(np.equal(np.mod(flat, 1), 0)):
                cls = flat.astype(np.int64)
                if cls.min() >= 0 and cls.max() < c:
                    return cls
        raise ModelError(f"{self.path.name} outputs shape {list(out.shape)}, not a vector of {c} class scores or a class index")

    def scores(self, x: np.ndarray) -> np.ndarray | None:
        """The suspect's class scores (float64 [n, C]: logits or probabilities) for ``x``; None if it outputs class indices."""
        c = self.task.num_classes
        if self.one_at_a_time:
            outs = [self._run(x[i : i + 1]) for i in range(len(x))]
            out = np.concatenate([o.reshape(1, -1) for o in outs]) if outs else np.zeros((0, c))
        else:
            out = self._run(x)
        if out.ndim != 2 or out.shape != (len(x), c) or not np.issubdtype(out.dtype, np.floating):
            return None
        if not np.all(np.isfinite(out)):
            raise ModelError(f"{self.path.name} outputs non-finite scores")
        return out.astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class indices (int64) for a batch ``x``."""
        if self.one_at_a_time:
            return np.concatenate([self._classes(self._run(x[i : i + 1]), 1) for i in range(len(x))]) if len(x) else np.zeros(0, np.int64)
        return self._classes(self._run(x), len(x))
