"""A minimal prediction API over loopback for the demo: KServe v1, label-only answers.

It plays the leaker's server: POST {"instances": [...]} -> {"predictions": [class, ...]}.
Standard library only; one thread per connection; binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

__all__ = ["LoopbackModelServer"]


class LoopbackModelServer:
    def __init__(self, onnx_path, input_dtype: str = "float32") -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.dtype = input_dtype
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the demo's output clean
                pass

            def do_POST(self) -> None:
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    x = np.asarray(body["instances"], dtype=server.dtype)
                    with server._lock:
                        server.requests += 1
                        scores = server.session.run(None, {server.input_name: x})[0]
                    payload, status = {"predictions": scores.argmax(1).tolist()}, 200
                except Exception as exc:  # a bad request is the client's problem
                    payload, status = {"error": type(exc).__name__}, 400
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1/models/leaked:predict"

    def __enter__(self) -> LoopbackModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
