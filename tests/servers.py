"""Test servers: the loopback prediction servers live in :mod:`tracer.examples.servers` (the bench uses them
too); this module re-exports them, and adds :class:`HostileServer`, which only the hardening tests need.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tracer.examples.servers import (
    PATHS,
    TEMPLATE_PNG,
    TEMPLATE_TENSOR,
    Faults,
    LogRecord,
    ModelServer,
    _QuietServer,
)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch) -> None:
    """The loopback servers must be reached directly, whatever proxy the environment names (autouse where imported)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


# -- hostile servers --------------------------------------------------------------------------------


@dataclass
class HostileServer:
    """A loopback server whose every POST gets one hostile answer, counting what it wrote and when the client left.

    ``mode``:
      * ``"huge"``: 200 with a ``body_bytes`` JSON-ish body (no Content-Length: chunk after chunk until the client hangs up);
      * ``"bomb"``: 200, ``Content-Encoding: gzip``, a small body that inflates to ``body_bytes`` zeros;
      * ``"drip"``: 200 with Content-Length 10**6, then one byte every ``drip_interval`` s, at most ``body_bytes`` bytes;
      * ``"hang"``: reads the request, then answers nothing until :meth:`stop`.

    ``written`` holds, per request, the body bytes written before the client closed the connection
    (or all of them); ``closed_early`` the requests whose client hung up first.
    """

    mode: str
    body_bytes: int = 64 << 20
    drip_interval: float = 0.1
    written: list[int] = field(default_factory=list)
    closed_early: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._url: str | None = None
        self._bomb = b""
        if self.mode == "bomb":
            import gzip

            self._bomb = gzip.compress(b"\0" * self.body_bytes, compresslevel=9)

    @property
    def url(self) -> str:
        assert self._url is not None
        return self._url

    @property
    def requests(self) -> int:
        with self._lock:
            return self._count

    def start(self) -> HostileServer:
        server = self
        self._count = 0

        class Handler(_HostileHandler):
            owner = server

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host}:{port}{PATHS['kserve-v1']}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _done(self, n: int, early: bool) -> None:
        with self._lock:
            self.written.append(n)
            self.closed_early += int(early)


class _HostileHandler(BaseHTTPRequestHandler):
    owner: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        srv = self.owner
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with srv._lock:
            srv._count += 1
        self.close_connection = True
        if srv.mode == "hang":
            srv._stop.wait()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if srv.mode == "bomb":
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(srv._bomb)))
        elif srv.mode == "drip":
            self.send_header("Content-Length", str(10**6))
        self.send_header("Connection", "close")
        self.end_headers()
        written, early = 0, False
        try:
            if srv.mode == "bomb":
                self.wfile.write(srv._bomb)
                written = len(srv._bomb)
            elif srv.mode == "huge":
                chunk = b'{"predictions": [' + b"0, " * 21840 + b"0]}"
                while written < srv.body_bytes and not srv._stop.is_set():
                    self.wfile.write(chunk)
                    written += len(chunk)
            else:  # drip
                while written < srv.body_bytes and not srv._stop.is_set():
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    written += 1
                    srv._stop.wait(srv.drip_interval)
                if written >= srv.body_bytes:  # the client stayed: hold the connection until it leaves
                    early = self.rfile.read(1) == b""
        except OSError:  # the client hung up
            early = True
        srv._done(written, early)
