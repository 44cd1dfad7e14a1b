"""Loopback prediction servers in the four wire formats `tracer probe` speaks (standard library + onnxruntime).

Rehearse a probe against one's own issued copy; the probe tests and the bench use them too.

``ModelServer(model, task, fmt)`` serves an ONNX model (a path or ONNX bytes)
on 127.0.0.1 in one wire format, in a background thread:

=================  ===========================  =============================================
format             path                         answers
=================  ===========================  =============================================
kserve-v1          /v1/models/m:predict         {"predictions": [scores]} or [class] (label-only)
open-inference     /v2/models/m/infer           {"outputs": [{"name", "shape", "datatype", "data"}]}
torchserve         /predictions/m               {label: probability} top 5, or "label" (label-only)
template           /api/classify                {"result": {"class_id", "label", "confidence"}}
=================  ===========================  =============================================

The template server takes ``{"data": {"pixels": [...]}}`` or
``{"image": "data:image/png;base64,..."}``. kserve-v1 takes nested lists or
``{"b64": PNG}``. ``labels`` makes the server answer with names instead of
indices (probe with ``--label-map``).

``faults`` (a :class:`Faults`) injects random 500s, 429 with Retry-After,
slow answers, dropped connections and malformed JSON, from a seeded RNG;
``fail_all`` answers 500 to everything; ``down`` (settable at run time)
answers 503 to everything. Every request is logged in ``log`` with the
SHA-256 of the input it carried (decoded as the model would see it), so a
test can count what was sent and when.

``FilterServer(model, task, fmt, flags=..., on_flag=...)`` is a leaker's API:
the same model behind a query filter (:mod:`tracer.evaluate.detectors`).
Each decoded query goes to ``flags`` (a fitted detector's ``flags``); flagged
queries are answered with the model's runner-up class or a random class,
the others with the model's answer. ``flagged`` counts the flagged queries.
``model`` may also be a predictor, a callable ``x[N, ...] -> scores[N, C]``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from tracer.config import TaskConfig
from tracer.probing.formats import decode_png

__all__ = ["ModelServer", "FilterServer", "Faults", "PATHS"]

PATHS = {
    "kserve-v1": "/v1/models/m:predict",
    "open-inference": "/v2/models/m/infer",
    "torchserve": "/predictions/m",
    "template": "/api/classify",
}

TEMPLATE_TENSOR = {"data": {"pixels": "$INPUT"}, "options": {"top_k": 1}}
TEMPLATE_PNG = {"image": "data:image/png;base64,$INPUT_PNG_B64"}


@dataclass
class Faults:
    p_500: float = 0.0
    p_429: float = 0.0
    retry_after: float = 0.05  # seconds, sent as "Retry-After: 0.05" (tracer accepts fractional seconds)
    p_slow: float = 0.0
    slow_seconds: float = 1.0
    p_drop: float = 0.0
    p_malformed: float = 0.0
    seed: int = 0

    def draw(self, rng: random.Random) -> str | None:
        u = rng.random()
        for name, p in (("500", self.p_500), ("429", self.p_429), ("slow", self.p_slow), ("drop", self.p_drop), ("malformed", self.p_malformed)):
            if u < p:
                return name
            u -= p
        return None


@dataclass
class LogRecord:
    time: float
    input_sha256: str | None
    outcome: str  # "ok" or the fault injected


@dataclass
class ModelServer:
    model: Any  # path to an ONNX file, ONNX bytes, or a predictor (x[N, ...] -> scores[N, C])
    task: TaskConfig
    fmt: str
    label_only: bool = False
    labels: list[str] | None = None  # answer with these names instead of class indices
    faults: Faults | None = None
    fail_all: bool = False
    down: bool = False
    wrong_shape: bool = False  # answer 3 scores instead of C
    required_headers: dict[str, str] = field(default_factory=dict)  # else 401
    down_after: int | None = None  # an outage (503 to everything) once this many requests were answered
    log: list[LogRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.session: Any = None
        self.input_name = "input"
        if not callable(self.model):
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            opts.intra_op_num_threads = 1
            src = self.model if isinstance(self.model, (bytes, bytearray)) else str(self.model)
            self.session = ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed if self.faults else 0)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint URL (stays valid as a name after :meth:`stop`)."""
        assert self._url is not None, "start the server first"
        return self._url

    def start(self) -> ModelServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host!s}:{port}{PATHS[self.fmt]}"  # host is a str for AF_INET
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping ---------------------------------------------------------------------------------

    def hashes(self, outcome: str | None = None) -> list[str]:
        with self._lock:
            return [r.input_sha256 for r in self.log if r.input_sha256 and (outcome is None or r.outcome == outcome)]

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.log)

    def _record(self, sha: str | None, outcome: str) -> None:
        with self._lock:
            self.log.append(LogRecord(time.monotonic(), sha, outcome))

    def _fault(self) -> str | None:
        if self.faults is None:
            return None
        with self._lock:
            return self.faults.draw(self._rng)

    # -- the model -----------------------------------------------------------------------------------

    def scores(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape((1, *self.task.input_shape))
        if self.session is None:
            return np.asarray(self.model(x), dtype=np.float64)[0]
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float64)[0]

    def parse_input(self, body: bytes, content_type: str) -> np.ndarray:
        task = self.task
        if self.fmt == "torchserve":
            return decode_png(body, task)
        doc = json.loads(body)
        if self.fmt == "kserve-v1":
            inst = doc["instances"]
            assert isinstance(inst, list) and len(inst) == 1, "one instance per request"
            inst = inst[0]
            if isinstance(inst, dict) and "b64" in inst:
                return decode_png(base64.b64decode(inst["b64"]), task)
            return np.asarray(inst, dtype=task.input_dtype).reshape(task.input_shape)
        if self.fmt == "open-inference":
            spec = doc["inputs"][0]
            assert spec["name"] == self.input_name, f"unknown input {spec['name']!r}"
            assert list(spec["shape"]) == [1, *task.input_shape], f"bad shape {spec['shape']}"
            return np.asarray(spec["data"], dtype=task.input_dtype).reshape(task.input_shape)
        # template
        if "image" in doc:
            prefix = "data:image/png;base64,"
            assert doc["image"].startswith(prefix)
            return decode_png(base64.b64decode(doc["image"][len(prefix):]), task)
        return np.asarray(doc["data"]["pixels"], dtype=task.input_dtype).reshape(task.input_shape)

    def answer(self, x: np.ndarray) -> tuple[bytes, str]:
        s = self.scores(x)
        cls = int(np.argmax(s))
        label: Any = self.labels[cls] if self.labels else cls
        probs = np.exp(s - s.max())
        probs = probs / probs.sum()
        if self.wrong_shape:
            return json.dumps({"predictions": [[0.1, 0.2, 0.7]], "outputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.7]}],
                               "result": {"scores": [0.1, 0.2, 0.7]}}).encode(), "application/json"
        if self.fmt == "kserve-v1":
            doc: Any = {"predictions": [label if self.label_only else s.tolist()]}
        elif self.fmt == "open-inference":
            if self.label_only:
                out = {"name": "label", "shape": [1, 1], "datatype": "BYTES" if self.labels else "INT64", "data": [label]}
            else:
                out = {"name": "logits", "shape": [1, len(s)], "datatype": "FP32", "data": s.tolist()}
            doc = {"model_name": "m", "model_version": "1", "outputs": [out]}
        elif self.fmt == "torchserve":
            if self.label_only:
                doc = label if isinstance(label, str) else str(label)
            else:
                top = np.argsort(-probs)[:5]
                doc = {(self.labels[i] if self.labels else str(int(i))): float(probs[i]) for i in top}
        else:
            doc = {"result": {"class_id": cls, "label": label, "confidence": float(probs[cls])}} if self.label_only or self.labels else \
                  {"result": {"class_id": cls, "scores": probs.tolist()}}
        return json.dumps(doc).encode(), "application/json"


@dataclass
class FilterServer(ModelServer):
    """A model behind a leaker's query filter: flagged queries get the runner-up (or a random) class, the others the model's answer."""

    flags: Any = None  # a fitted detector's flags: x[N, ...] -> bool[N]
    on_flag: str = "runner-up"  # the answer to a flagged query, or "random": see tracer.evaluate.detectors.filter_scores
    seed: int = 0  # of the random answers
    flagged: int = 0  # queries flagged so far

    def __post_init__(self) -> None:
        if self.flags is None:
            raise ValueError("FilterServer needs flags (a fitted detector's flags method)")
        super().__post_init__()

    def scores(self, x: np.ndarray) -> np.ndarray:
        from tracer.evaluate.detectors import filter_scores

        x = np.asarray(x, dtype=np.float32).reshape((1, *self.task.input_shape))
        flagged = np.asarray(self.flags(x), dtype=bool)
        with self._lock:
            self.flagged += int(flagged.sum())
        return filter_scores(x, super().scores(x)[None], flagged, answer=self.on_flag, seed=self.seed)[0].astype(np.float64)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (timeout, cancelled query) is normal here: no stderr noise."""


class _Handler(BaseHTTPRequestHandler):
    owner: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        srv = self.owner
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path.split("?", 1)[0] != PATHS[srv.fmt]:  # the query string may carry an api key
            srv._record(None, "404")
            self._send(404, b'{"error": "not found"}')
            return
        try:
            x = srv.parse_input(body, self.headers.get("Content-Type", ""))
            sha = hashlib.sha256(np.ascontiguousarray(x, dtype=srv.task.input_dtype).tobytes()).hexdigest()
        except Exception as exc:  # a malformed request: 400, as a real server would
            srv._record(None, "400")
            self._send(400, json.dumps({"error": f"bad request: {type(exc).__name__}: {exc}"}).encode())
            return
        if any(self.headers.get(k) != v for k, v in srv.required_headers.items()):
            srv._record(sha, "401")
            self._send(401, b'{"error": "unauthorized"}')
            return
        if srv.down or (srv.down_after is not None and len(srv.hashes("ok")) >= srv.down_after):
            srv._record(sha, "503")
            self._send(503, b'{"error": "service unavailable"}')
            return
        if srv.fail_all:
            srv._record(sha, "500")
            self._send(500, b'{"error": "internal error"}')
            return
        fault = srv._fault()
        srv._record(sha, fault or "ok")
        if fault == "500":
            self._send(500, b'{"error": "internal error"}')
        elif fault == "429":
            self._send(429, b'{"error": "too many requests"}', headers={"Retry-After": f"{srv.faults.retry_after:g}"})  # type: ignore[union-attr]
        elif fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif fault == "malformed":
            self._send(200, b'{"predictions": [[0.1, 0.2,')
        else:
            if fault == "slow":
                time.sleep(srv.faults.slow_seconds)  # type: ignore[union-attr]
            payload, ctype = srv.answer(x)
            try:
                self._send(200, payload, ctype)
            except OSError:  # the client gave up (timeout) and closed the connection
                self.close_connection = True
