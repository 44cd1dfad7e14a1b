"""Wire formats of prediction APIs: how to send one input, and how to read the class from the answer.

Every format sends exactly one input per HTTP request (the sequential test
looks after each answer, and decoys must be indistinguishable by batching).

``kserve-v1`` (also TF Serving's REST API)
    POST ``{"instances": [x]}`` with ``x`` as nested lists in the task's input
    shape, or ``{"instances": [{"b64": "<PNG>"}]}`` with ``--input-encoding png``;
    the answer is ``{"predictions": [p]}``.
``open-inference`` (KServe v2, Triton, Seldon MLServer)
    POST ``{"inputs": [{"name", "shape": [1, ...], "datatype": "FP32", "data": [...]}]}``;
    the answer is ``{"outputs": [{"name", "shape", "datatype", "data"}]}``.
``torchserve``
    POST the image as PNG bytes; the answer is JSON: ``{class: score}``, a label or a score list.
``template``
    ``--request-template FILE``: a JSON document in which the string ``"$INPUT"`` is
    replaced by the input as nested lists and ``$INPUT_PNG_B64`` (also inside a
    longer string, e.g. a data URL) by a base64 PNG of it.

Reading the answer: ``--response-path`` (dotted, e.g. ``result.class_id`` or
``predictions.0``) picks the value out of the JSON; without it each format
knows where to look. The value may be a class index, a label string (mapped
by ``--label-map``, or a decimal digit string), a vector of C scores (argmax),
a ``{label: score}`` mapping (argmax), or an object holding one of these under
a usual key (``scores``, ``probabilities``, ``logits``, ``class_id``, ``label``...).

PNG: probe inputs lie on the task's 8-bit grid in [low, high], so an 8-bit
grayscale (1 channel) or RGB (3 channels) PNG carries them exactly; a server
decodes pixel v to ``low + (high - low) * v / 255``.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._json import loads_bounded
from ..config import TaskConfig
from ..errors import ConfigError, MalformedResponse, ResponseError

__all__ = [
    "FORMATS",
    "WireFormat",
    "ResponseError",
    "MalformedResponse",
    "encode_png",
    "decode_png",
    "interpret",
    "follow_path",
    "load_label_map",
    "load_template",
    "make_format",
]

FORMATS = ("kserve-v1", "open-inference", "torchserve", "template")
_DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64"}
_SCORE_KEYS = ("scores", "probabilities", "probs", "logits", "confidences", "output", "outputs", "predictions", "prediction", "data", "result")
_CLASS_KEYS = ("class_id", "class", "classes", "label", "labels", "class_index", "predicted_class", "category", "top_class", "index", "id")


# -- PNG ------------------------------------------------------------------------------------------


def _check_png_task(task: TaskConfig) -> tuple[int, int, int]:
    if task.domain != "image" or task.levels != 256 or len(task.input_shape) != 3 or task.input_shape[0] not in (1, 3):
        raise ConfigError(
            "PNG input needs an image task with input_shape [1 or 3, height, width] on an 8-bit grid (task.levels = 256)",
            hint="use a format that sends tensors (kserve-v1, open-inference, template with $INPUT)",
        )
    c, h, w = task.input_shape
    return c, h, w


def encode_png(x: np.ndarray, task: TaskConfig) -> bytes:
    """One input [C, H, W] in [low, high] as an 8-bit grayscale or RGB PNG (lossless on the 8-bit grid)."""
    from PIL import Image

    c, _, _ = _check_png_task(task)
    low, high = task.bounds()
    v = (np.asarray(x, dtype=np.float64).reshape(task.input_shape) - low) / (high - low) * 255.0
    pix = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    img = Image.fromarray(pix[0], mode="L") if c == 1 else Image.fromarray(np.ascontiguousarray(pix.transpose(1, 2, 0)), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, task: TaskConfig) -> np.ndarray:
    """The inverse of :func:`encode_png` (used by test servers): [C, H, W] in the task's dtype."""
    from PIL import Image

    c, h, w = _check_png_task(task)
    img = Image.open(io.BytesIO(data)).convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        raise ValueError(f"image is {img.size[0]}x{img.size[1]}, expected {w}x{h}")
    arr = np.asarray(img, dtype=np.float64)
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    low, high = task.bounds()
    return (low + (high - low) * (arr / 255.0)).astype(task.input_dtype)


# -- reading answers --------------------------------------------------------------------------------


def follow_path(doc: Any, path: str) -> Any:
    """``a.b.0.c``: dict keys and list indices (negative allowed); raises ResponseError naming the missing step."""
    cur = doc
    walked: list[str] = []
    for part in [p for p in path.split(".") if p != ""]:
        if isinstance(cur, dict):
            if part not in cur:
                have = ", ".join(map(str, list(cur)[:8]))
                raise ResponseError(f"answer has no {'.'.join(walked + [part])!r} (keys there: {have or 'none'})", hint="check --response-path")
            cur = cur[part]
        elif isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError) as exc:
                raise ResponseError(f"answer has no element {'.'.join(walked + [part])!r} (a list of {len(cur)})", hint="check --response-path") from exc
        else:
            raise ResponseError(f"answer path {'.'.join(walked + [part])!r} goes into a {type(cur).__name__}", hint="check --response-path")
        walked.append(part)
    return cur


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label_index(label: str, num_classes: int, label_map: dict[str, int] | None) -> int:
    if label_map is not None and label in label_map:
        return label_map[label]
    s = label.strip()
    if label_map is not None and s in label_map:
        return label_map[s]
    if s.lstrip("+-").isdigit():
        idx = int(s)
        if 0 <= idx < num_classes:
            return idx
    raise ResponseError(
        f"answer label {label!r} is not a known class" + ("" if label_map else " (no --label-map given)"),
        hint="pass --label-map FILE mapping the API's labels to class indices",
    )


def interpret(value: Any, num_classes: int, label_map: dict[str, int] | None = None) -> int:
    """The class index an answer value stands for; raises ResponseError when it fits no known shape."""
    if isinstance(value, bool) or value is None:
        raise ResponseError(f"answer {_describe(value)} is not a class")
    if _is_number(value):
        if not math.isfinite(value) or float(value) != int(value):
            raise ResponseError(f"answer {_describe(value)} is not a class index", hint="give --response-path to a class index, a label or a score vector")
        idx = int(value)
        if not 0 <= idx < num_classes:
            raise ResponseError(f"answer class {idx} is outside 0..{num_classes - 1}")
        return idx
    if isinstance(value, str):
        return _label_index(value, num_classes, label_map)
    if isinstance(value, list):
        if len(value) == 1:
            return interpret(value[0], num_classes, label_map)
        if len(value) == num_classes and all(_is_number(v) for v in value):
            scores = np.asarray(value, dtype=np.float64)
            if not np.all(np.isfinite(scores)):
                raise ResponseError("answer scores are not finite")
            return int(np.argmax(scores))
        if value and all(isinstance(v, dict) for v in value):  # e.g. [{"label": "3", "score": 0.9}, ...]: best score
            best = max(value, key=lambda d: d.get("score", d.get("probability", -math.inf)) if _is_number(d.get("score", d.get("probability"))) else -math.inf)
            return interpret(best, num_classes, label_map)
        raise ResponseError(f"answer {_describe(value)} has {len(value)} values; expected one class or {num_classes} scores")
    if isinstance(value, dict):
        for key in _CLASS_KEYS:
            if key in value and not isinstance(value[key], dict):
                return interpret(value[key], num_classes, label_map)
        for key in _SCORE_KEYS:
            if key in value:
                return interpret(value[key], num_classes, label_map)
        if value and all(_is_number(v) for v in value.values()):  # {label: score}
            best_label = max(value, key=lambda k: value[k])
            return _label_index(str(best_label), num_classes, label_map)
        raise ResponseError(f"answer object {_describe(value)} holds no class, label or scores", hint="give --response-path")
    raise ResponseError(f"answer {_describe(value)} is not a class")


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def load_label_map(path: Path, num_classes: int) -> dict[str, int]:
    """A JSON object {label: index}, a JSON list of labels (index = position), or one label per line."""
    text = _read_text(path, "label map")
    try:
        doc = loads_bounded(text)
    except ValueError:
        doc = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(doc, list):
        mapping = {str(label): i for i, label in enumerate(doc)}
    elif isinstance(doc, dict):
        mapping = {}
        for k, v in doc.items():
            if isinstance(v, int) and not isinstance(v, bool):
                mapping[str(k)] = v
            elif isinstance(k, str) and k.strip().isdigit() and isinstance(v, str):  # {"0": "zero"}: index -> label
                mapping[v] = int(k)
            else:
                raise ConfigError(f"label map {Path(path).name}: entry {k!r} is not label -> class index")
    else:
        raise ConfigError(f"label map {Path(path).name} must be a JSON object, a JSON list or one label per line")
    bad = [k for k, v in mapping.items() if not 0 <= v < num_classes]
    if bad:
        raise ConfigError(f"label map {Path(path).name}: label {bad[0]!r} maps outside 0..{num_classes - 1}")
    return mapping


def load_template(path: Path) -> Any:
    text = _read_text(path, "request template")
    try:
        doc = loads_bounded(text)
    except ValueError as exc:
        raise ConfigError(f"request template {Path(path).name} is not JSON: {exc}") from exc
    if "$INPUT" not in text:
        raise ConfigError(f"request template {Path(path).name} contains neither \"$INPUT\" nor $INPUT_PNG_B64")
    return doc


# -- formats ----------------------------------------------------------------------------------------


@dataclass
class Request:
    content: bytes
    headers: dict[str, str]


@dataclass
class WireFormat:
    """How to talk to one endpoint: build a request for an input, read the class from an answer."""

    name: str
    task: TaskConfig
    response_path: str | None = None
    label_map: dict[str, int] | None = None
    template: Any = None
    input_name: str = "input"
    input_encoding: str = "tensor"  # kserve-v1: "tensor" (nested lists) or "png" ({"b64": ...})

    def __post_init__(self) -> None:
        if self.name not in FORMATS:
            raise ConfigError(f"unknown format {self.name!r}", hint=f"choose one of {', '.join(FORMATS)}")
        if self.input_encoding not in ("tensor", "png"):
            raise ConfigError("input encoding must be 'tensor' or 'png'")
        if self.name == "template" and self.template is None:
            raise ConfigError("--format template needs --request-template FILE")
        if self.name == "torchserve" or (self.name == "kserve-v1" and self.input_encoding == "png"):
            _check_png_task(self.task)
        if self.name == "template" and "$INPUT_PNG_B64" in json.dumps(self.template):
            _check_png_task(self.task)

    def describe(self) -> dict[str, Any]:
        """What the journal records about the format (never header values: they may hold credentials)."""
        d: dict[str, Any] = {"format": self.name, "response_path": self.response_path,
                             "label_map": bool(self.label_map), "input_encoding": self.input_encoding}
        if self.name == "open-inference":
            d["input_name"] = self.input_name
        return d

    # requests

    def _tensor(self, x: np.ndarray) -> list:
        return np.asarray(x, dtype=self.task.input_dtype).reshape(self.task.input_shape).tolist()

    def _png_b64(self, x: np.ndarray) -> str:
        return base64.b64encode(encode_png(x, self.task)).decode("ascii")

    def build(self, x: np.ndarray) -> Request:
        js = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.name == "kserve-v1":
            inst: Any = {"b64": self._png_b64(x)} if self.input_encoding == "png" else self._tensor(x)
            return Request(json.dumps({"instances": [inst]}).encode(), js)
        if self.name == "open-inference":
            arr = np.asarray(x, dtype=self.task.input_dtype).reshape(self.task.input_shape)
            body = {"inputs": [{"name": self.input_name, "shape": [1, *self.task.input_shape],
                                "datatype": _DATATYPES[self.task.input_dtype], "data": arr.reshape(-1).tolist()}]}
            return Request(json.dumps(body).encode(), js)
        if self.name == "torchserve":
            return Request(encode_png(x, self.task), {"Content-Type": "image/png", "Accept": "application/json"})
        # template
        tensor: list | None = None
        b64: str | None = None

        def fill(node: Any) -> Any:
            nonlocal tensor, b64
            if isinstance(node, str):
                if node == "$INPUT":
                    tensor = tensor if tensor is not None else self._tensor(x)
                    return tensor
                if "$INPUT_PNG_B64" in node:
                    b64 = b64 if b64 is not None else self._png_b64(x)
                    return node.replace("$INPUT_PNG_B64", b64)
                return node
            if isinstance(node, list):
                return [fill(v) for v in node]
            if isinstance(node, dict):
                return {k: fill(v) for k, v in node.items()}
            return node

        return Request(json.dumps(fill(copy.deepcopy(self.template))).encode(), js)

    # answers

    def decode(self, body: bytes, content_type: str | None) -> Any:
        """The raw answer: parsed JSON, or the text of a non-JSON body. Raises MalformedResponse."""
        ctype = (content_type or "").split(";")[0].strip().lower()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedResponse(f"answer is not UTF-8 text ({len(body)} bytes)") from exc
        if not text.strip():
            raise MalformedResponse("answer body is empty")
        try:
            return loads_bounded(text)
        except ValueError as exc:
            if ctype.endswith("json") or text.lstrip()[:1] in ("{", "["):
                raise MalformedResponse(f"answer is not valid JSON: {text[:60]!r}") from exc
            return text.strip()  # text/plain label

    def extract(self, raw: Any) -> Any:
        """The part of the raw answer that holds the class."""
        if self.response_path:
            return follow_path(raw, self.response_path)
        if self.name == "kserve-v1":
            if isinstance(raw, dict) and "predictions" in raw:
                preds = raw["predictions"]
                if isinstance(preds, list):
                    if len(preds) != 1:
                        raise ResponseError(f"answer has {len(preds)} predictions for one instance")
                    return preds[0]
                return preds
            if isinstance(raw, dict) and "error" in raw:
                raise ResponseError(f"endpoint answered an error: {_describe(raw['error'])}")
            raise ResponseError(f"answer {_describe(raw)} has no \"predictions\"", hint="is this a kserve-v1 / TF Serving endpoint? else give --response-path")
        if self.name == "open-inference":
            outs = raw.get("outputs") if isinstance(raw, dict) else None
            if not isinstance(outs, list) or not outs or not isinstance(outs[0], dict) or "data" not in outs[0]:
                if isinstance(raw, dict) and "error" in raw:
                    raise ResponseError(f"endpoint answered an error: {_describe(raw['error'])}")
                raise ResponseError(f"answer {_describe(raw)} has no \"outputs\" with data",
                                    hint="is this an open-inference (KServe v2) endpoint? else give --response-path")
            data = outs[0]["data"]
            shape = outs[0].get("shape")
            if isinstance(data, list) and isinstance(shape, list) and shape and shape[0] not in (1, None, -1) and len(shape) > 1:
                raise ResponseError(f"answer output has batch {shape[0]} for one input")
            return data
        return raw  # torchserve and template without a path: the whole body

    def classify(self, raw: Any) -> int:
        return interpret(self.extract(raw), self.task.num_classes, self.label_map)

    def scores(self, raw: Any) -> np.ndarray | None:
        """The answer's C finite scores (logits or probabilities), or None when it holds a class only.

        What the rank code is read from (`tracer probe --rank-code`); a key probe notes whether
        an endpoint answers this way, to say when that read is open to it.
        """
        try:
            value = self.extract(raw)
        except ResponseError:  # the client already classified this answer; only scores matter here
            return None
        c = self.task.num_classes
        if isinstance(value, list) and len(value) == c and all(_is_number(v) for v in value):
            out = np.asarray(value, dtype=np.float64)
            return out if np.all(np.isfinite(out)) else None
        return None


def make_format(
    name: str,
    task: TaskConfig,
    *,
    request_template: Path | None = None,
    response_path: str | None = None,
    label_map: Path | None = None,
    input_name: str | None = None,
    input_encoding: str = "tensor",
) -> WireFormat:
    """Build a :class:`WireFormat` from command-line style options (files are read here)."""
    if name not in FORMATS:
        raise ConfigError(f"unknown --format {name!r}", hint=f"choose one of {', '.join(FORMATS)}")
    if request_template is not None and name != "template":
        raise ConfigError("--request-template only applies to --format template")
    template = load_template(request_template) if request_template is not None else None
    lm = load_label_map(label_map, task.num_classes) if label_map is not None else None
    return WireFormat(name=name, task=task, response_path=response_path or None, label_map=lm, template=template,
                      input_name=input_name or "input", input_encoding=input_encoding)
