"""The probe's HTTP client, unit level (httpx.MockTransport): retries, backoff, 429, budget, rate, errors."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import numpy as np
import pytest

from tracer.config import TaskConfig
from tracer.errors import EndpointError
from tracer.probing.client import ClientOptions, ProbeClient, parse_header
from tracer.probing.formats import WireFormat

TASK = TaskConfig(num_classes=10, input_shape=(1, 8, 8))
X = np.zeros((1, 8, 8), np.float32)
FAST = dict(backoff_base=0.001, backoff_cap=0.004, timeout=2.0)


def ok(cls: int = 3) -> httpx.Response:
    return httpx.Response(200, json={"predictions": [cls]})


def run(script, *, n: int = 1, **opts):
    """Send ``n`` queries through a client whose transport answers with ``script(call_number, request)``."""
    calls: list[tuple[float, httpx.Request]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((time.monotonic(), request))
        return script(len(calls), request)

    options = ClientOptions(**{**FAST, **opts})

    async def main():
        async with ProbeClient("http://api.test/v1/models/m:predict", WireFormat("kserve-v1", TASK), options,
                               transport=httpx.MockTransport(handler)) as client:
            outs = await asyncio.gather(*(client.query(X) for _ in range(n)))
            return outs, client

    outs, client = asyncio.run(main())
    return outs, calls, client


def test_answer_on_first_try() -> None:
    (out,), calls, client = run(lambda i, r: ok(7))
    assert out.ok and out.answer == 7 and out.requests == 1 and not out.failures and client.used == 1
    assert calls[0][1].headers["content-type"] == "application/json"


def test_transient_faults_are_retried() -> None:
    def script(i, request):
        if i == 1:
            return httpx.Response(500, text="boom")
        if i == 2:
            raise httpx.ReadTimeout("slow", request=request)
        if i == 3:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if i == 4:
            return httpx.Response(200, content=b'{"predictions": [', headers={"content-type": "application/json"})
        if i == 5:
            raise httpx.ConnectError("refused", request=request)
        return ok(2)

    (out,), calls, client = run(script, max_retries=5)
    assert out.ok and out.answer == 2 and out.requests == 6 == len(calls) == client.used
    errors = [f.error for f in out.failures]
    assert errors[0] == "server error 500" and "timeout" in errors[1] and "RemoteProtocolError" in errors[2]
    assert "not valid JSON" in errors[3] and out.failures[3].response == '{"predictions": ['
    assert "ConnectError" in errors[4]
    waits = client.sleeps  # exponential backoff with equal jitter: within [d/2, d], d = min(cap, base * 2^a)
    for a, w in enumerate(waits):
        d = min(FAST["backoff_cap"], FAST["backoff_base"] * 2**a)
        assert d / 2 <= w <= d


def test_retries_run_out() -> None:
    (out,), calls, _ = run(lambda i, r: httpx.Response(503), max_retries=2)
    assert not out.ok and not out.fatal and out.requests == 3 == len(calls) and "no answer after 3 requests" in out.error


def test_429_honours_retry_after() -> None:
    t0 = time.monotonic()
    (out,), calls, client = run(lambda i, r: httpx.Response(429, headers={"Retry-After": "0.3"}) if i == 1 else ok(1))
    assert out.ok and len(calls) == 2 and client.sleeps == [0.3]
    assert calls[1][0] - calls[0][0] >= 0.3 - 0.01 and time.monotonic() - t0 >= 0.3


def test_429_pauses_every_worker() -> None:
    """Two workers, three queries each: after one 429 with Retry-After 0.3, neither starts a request for 0.3 s."""
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(429, headers={"Retry-After": "0.3"}) if len(calls) == 1 else ok(1)

    async def main():
        async with ProbeClient("http://api.test/p", WireFormat("kserve-v1", TASK), ClientOptions(**FAST),
                               transport=httpx.MockTransport(handler)) as client:
            async def worker():
                return [await client.query(X) for _ in range(3)]

            return await asyncio.gather(worker(), worker())

    outs = [o for w in asyncio.run(main()) for o in w]
    assert all(o.ok for o in outs) and len(calls) == 7
    assert all(t - calls[0] >= 0.3 - 0.01 for t in calls[2:])  # only the other worker's first request beat the 429


def test_retry_after_forms() -> None:
    soon = email.utils.format_datetime(__import__("datetime").datetime.now(__import__("datetime").timezone.utc), usegmt=True)
    assert ProbeClient._retry_after(httpx.Response(429, headers={"Retry-After": "2"})) == 2.0
    assert 0 <= ProbeClient._retry_after(httpx.Response(429, headers={"Retry-After": soon})) <= 1.0
    assert ProbeClient._retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert ProbeClient._retry_after(httpx.Response(429)) is None


def test_429_asking_for_too_long_a_wait_stops() -> None:
    (out,), calls, _ = run(lambda i, r: httpx.Response(429, headers={"Retry-After": "3600"}))
    assert out.fatal and len(calls) == 1 and "3600" in out.error


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    (out,), calls, _ = run(lambda i, r: httpx.Response(status, text="nope"))
    assert out.fatal and len(calls) == 1 and f"HTTP {status}" in out.error


def test_wrong_shape_is_fatal_at_once() -> None:
    (out,), calls, _ = run(lambda i, r: httpx.Response(200, json={"predictions": [[0.2, 0.8]]}))
    assert out.fatal and len(calls) == 1 and "2 values" in out.error


def test_budget_counts_every_request_and_is_never_exceeded() -> None:
    outs, calls, client = run(lambda i, r: httpx.Response(500), n=4, budget=7, max_retries=5, concurrency=4)
    assert len(calls) == 7 == client.used
    assert sum(o.requests for o in outs) == 7 and all(not o.ok for o in outs)
    assert any(o.budget_spent for o in outs)


def test_rate_limit_spaces_requests() -> None:
    rate = 20.0
    outs, calls, _ = run(lambda i, r: ok(), n=10, rate=rate, concurrency=4)
    assert all(o.ok for o in outs)
    times = sorted(t for t, _ in calls)
    gaps = np.diff(times)
    assert gaps.min() >= 1 / rate - 0.01, gaps
    assert times[-1] - times[0] >= 9 / rate - 0.02


def test_headers_are_sent() -> None:
    name, value = parse_header("Authorization: Bearer s3cret")
    (out,), calls, _ = run(lambda i, r: ok() if r.headers.get("authorization") == "Bearer s3cret" else httpx.Response(401),
                           headers={name: value})
    assert out.ok
    for bad in ("no colon", ": value", "Bad Name: x", "X: a\r\nInjected: b"):
        with pytest.raises(EndpointError):
            parse_header(bad)


# -- hostile servers on loopback: size cap, decompression cap, whole-request deadline --------------


def query_real(url: str, **opts):
    """One query through a real client against a real loopback server."""
    options = ClientOptions(**{**FAST, **opts})

    async def main():
        async with ProbeClient(url, WireFormat("kserve-v1", TASK), options) as client:
            return await client.query(X), client

    return asyncio.run(main())


def settled(srv, n: int) -> None:
    """Wait (bounded: a hang fails the test, nothing is timed) until the server has finished ``n`` answers."""
    for _ in range(600):
        if len(srv.written) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server finished {len(srv.written)} of {n} answers")


def test_a_huge_body_is_cut_off_at_the_cap() -> None:
    from tests.servers import HostileServer

    with HostileServer("huge", body_bytes=96 << 20) as srv:
        out, client = query_real(srv.url, max_response_bytes=64 << 10, max_retries=1)
        settled(srv, 2)
    assert not out.ok and out.requests == 2 == client.used == srv.requests
    assert all("max-response-bytes 65536" in f.error for f in out.failures), out.failures
    assert srv.closed_early == 2 and max(srv.written) < 24 << 20  # the client hung up; socket buffers hold a few MiB


def test_a_gzip_bomb_is_not_inflated() -> None:
    import tracemalloc

    from tests.servers import HostileServer

    with HostileServer("bomb", body_bytes=64 << 20) as srv:
        tracemalloc.start()
        try:
            out, _ = query_real(srv.url, max_response_bytes=1 << 20, max_retries=0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert not out.ok and out.requests == 1 and "decompresses to more than --max-response-bytes" in out.failures[0].error
    assert peak < 16 << 20, peak  # the 64 MiB of zeros were never held


def test_timeout_is_a_deadline_for_the_whole_request() -> None:
    from tests.servers import HostileServer

    # one byte every 0.1 s never leaves a 0.5 s gap between bytes: only a deadline ends it
    with HostileServer("drip", body_bytes=100, drip_interval=0.1) as srv:
        out, _ = query_real(srv.url, timeout=0.5, max_retries=1)
        settled(srv, 2)
    assert not out.ok and out.requests == 2 and all(f.error.startswith("deadline") for f in out.failures), out.failures
    assert srv.closed_early == 2 and max(srv.written) <= 30, srv.written  # ~5 bytes in 0.5 s; 100 if it had waited


def test_explicit_authorization_header_wins_over_url_userinfo() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(1)

    async def main(headers):
        async with ProbeClient("http://user:PASS@api.test/v1/models/m:predict?api_key=KEY", WireFormat("kserve-v1", TASK),
                               ClientOptions(**FAST, headers=headers), transport=httpx.MockTransport(handler)) as client:
            return await client.query(X)

    assert asyncio.run(main({"Authorization": "Bearer tok"})).ok
    assert asyncio.run(main({})).ok
    explicit, implicit = seen
    assert explicit.headers["authorization"] == "Bearer tok" and explicit.url.userinfo == b""
    assert implicit.headers["authorization"] == "Basic " + __import__("base64").b64encode(b"user:PASS").decode()
    assert explicit.url.params["api_key"] == "KEY"  # the query string is sent as given


def test_error_texts_are_scrubbed_of_url_secrets() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text="bad api_key KEY123 for user PASS456 at " + str(request.url))

    async def main():
        async with ProbeClient("http://user:PASS456@api.test/p?api_key=KEY123", WireFormat("kserve-v1", TASK), ClientOptions(**FAST),
                               transport=httpx.MockTransport(handler)) as client:
            return await client.query(X)

    out = asyncio.run(main())
    text = out.error + repr([f.to_json() for f in out.failures])
    assert out.fatal and "HTTP 403" in out.error
    assert "KEY123" not in text and "PASS456" not in text and "REDACTED" in text
