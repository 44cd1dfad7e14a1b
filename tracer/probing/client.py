"""The HTTP side of a probe: an async httpx client with a budget, a rate limit, retries and backoff.

Accounting: the budget counts *HTTP requests*, every one that is sent:
first tries and retries, triggers and decoys alike. A request is charged
right before it goes out (after the rate limiter, with nothing in between),
and the caller's ``on_send`` hook journals it there, synchronously, so a
request is on disk before it is on the wire: the budget is never exceeded,
even across a killed process and ``--resume``. The rate limit spaces request
*starts* at least 1/rate seconds apart (over all concurrent workers), so no
window of length w ever sees more than floor(w * rate) + 1 request starts.

Limits on each try (:meth:`ProbeClient.attempt`): ``timeout`` is a deadline
for the whole exchange, connect to last byte (a server dripping one byte a
second cannot hold it open); the body is streamed and refused once more than
``max_response_bytes`` arrive on the wire or come out of the decompressor
(gzip bombs). Both are failed tries, retried like a timeout, within the budget.

Retries: connection errors, deadlines, dropped connections, 5xx answers, oversize
and undecodable bodies are retried with exponential backoff and "equal jitter"
(wait d/2 + U(0, d/2), d = min(cap, base * 2^attempt)). A 429 waits what its
Retry-After header says (seconds or an HTTP date; the backoff when absent),
up to ``max_retry_after``, and no other worker starts a request before then. Any other 4xx is a request the endpoint will never
accept (authentication, wrong format): no retry, the probe stops.

Credentials: userinfo in the URL is never handed to httpx in the URL; it is
sent as basic auth only when no explicit ``Authorization`` header is given
(the header wins). Error texts are scrubbed of the URL's secrets.

Proxies and CA bundles come from the environment (HTTPS_PROXY, NO_PROXY,
SSL_CERT_FILE), as for any httpx client.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ..errors import BudgetSpent, EndpointError, MalformedResponse, ResponseError
from .formats import WireFormat
from .urls import Endpoint, redact_url

__all__ = ["ClientOptions", "ProbeClient", "Outcome", "Attempt", "BudgetSpent", "parse_header", "DEFAULT_MAX_RESPONSE_BYTES"]

DEFAULT_MAX_RESPONSE_BYTES = 1 << 20  # 1 MiB: a class answer is a few hundred bytes, a top-k dict a few KiB
_ERROR_BODY_BYTES = 4096  # what is read (at most) of a 4xx/5xx body, for the journal

def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` -> (name, value); raises EndpointError on a malformed header."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n") or any(c in value for c in "\r\n"):
        raise EndpointError(f"--header {name or text[:20]!r} is not of the form 'Name: value'")
    return name, value.strip()


@dataclass
class ClientOptions:
    timeout: float = 30.0  # deadline in seconds for one try, connect to last byte
    rate: float | None = None  # requests per second over all workers; None: no limit
    concurrency: int = 4
    budget: int = 256  # HTTP requests in all, retries included
    max_retries: int = 4  # retries per query (so at most max_retries + 1 requests)
    backoff_base: float = 0.25  # seconds
    backoff_cap: float = 8.0
    max_retry_after: float = 120.0  # a 429 asking for a longer wait stops the probe
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # on the wire and after decompression
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Attempt:
    """One failed HTTP attempt, as journaled."""

    error: str
    status: int | None = None
    response: str | None = None  # the (truncated) body of a malformed answer

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"error": self.error}
        if self.status is not None:
            d["status"] = self.status
        if self.response is not None:
            d["response"] = self.response
        return d


@dataclass
class Outcome:
    """The result of one query: an answer (raw JSON or text, and its class) or a failure."""

    requests: int  # HTTP requests this query cost
    failures: list[Attempt]
    raw: Any = None
    answer: int | None = None
    status: int | None = None
    error: str | None = None  # set when the query was abandoned
    fatal: bool = False  # retrying cannot help (4xx, wrong shape)
    budget_spent: bool = False
    stopped: bool = False  # not retried because the probe had decided (see ProbeClient.stop_new)

    @property
    def ok(self) -> bool:
        return self.error is None


class _RateLimiter:
    """Consecutive request starts at least 1/rate apart, measured when the request really starts.

    A start is granted only when the clock says so, right before the send (no await in between), so a
    stalled event loop cannot release a burst of requests whose turns have passed.
    """

    def __init__(self, rate: float | None, clock: Callable[[], float]) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.next = -float("inf")

    def pause(self, seconds: float) -> None:
        """No request starts for ``seconds`` (a 429 Retry-After applies to every worker)."""
        self.next = max(self.next, self.clock() + seconds)

    async def wait(self) -> None:
        while True:
            now = self.clock()
            if now >= self.next:
                self.next = now + self.interval
                return
            await asyncio.sleep(self.next - now)


class _BoundedDecoder:
    """Content-Encoding decoding that never produces more than the room it is given (no gzip bomb inflates)."""

    def __init__(self, encoding: str) -> None:
        enc = encoding.strip().lower()
        if enc in ("", "identity"):
            self._z = None
        elif enc in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._z = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise MalformedResponse(f"answer uses Content-Encoding {encoding[:40]!r}; tracer asks for gzip or deflate")
        self.encoding = enc

    def feed(self, data: bytes, room: int) -> bytes:
        """Decoded bytes of ``data``, at most ``room`` of them (more would exceed the cap anyway)."""
        if self._z is None:
            return data[:room]
        try:
            return self._z.decompress(data, max(1, room))
        except zlib.error as exc:
            raise MalformedResponse(f"answer is not valid {self.encoding} data") from exc


@dataclass
class _Try:
    """What one HTTP attempt gave: an answer, or a failure (retryable unless ``fatal``)."""

    failure: Attempt | None = None
    raw: Any = None
    answer: int | None = None
    status: int | None = None
    fatal: str | None = None  # the error, when retrying cannot help
    wait: float | None = None  # a 429's Retry-After


class ProbeClient:
    """Send queries to one endpoint; use as ``async with ProbeClient(...) as client``."""

    def __init__(self, url: str | Endpoint, fmt: WireFormat, options: ClientOptions, *, used: int = 0,
                 transport: httpx.AsyncBaseTransport | None = None, rng: random.Random | None = None) -> None:
        self.endpoint = url if isinstance(url, Endpoint) else Endpoint.parse(url)
        self.url = self.endpoint.request_url  # never with userinfo: httpx would send it instead of -H Authorization
        self.fmt = fmt
        self.opt = options
        self.used = used  # requests charged so far (in this session, earlier runs included)
        self.sent_this_run = 0
        self._transport = transport
        self._rng = rng or random.Random()
        self._limiter = _RateLimiter(options.rate, time.monotonic)
        self._client: httpx.AsyncClient | None = None
        self._stopping = False
        self.sleeps: list[float] = []  # backoff waits, for diagnostics and tests

    async def __aenter__(self) -> ProbeClient:
        limits = httpx.Limits(max_connections=max(1, self.opt.concurrency), max_keepalive_connections=max(1, self.opt.concurrency))
        headers = {"Accept-Encoding": "gzip, deflate", **self.opt.headers}
        explicit_auth = any(k.lower() == "authorization" for k in self.opt.headers)
        auth = httpx.BasicAuth(*self.endpoint.basic_auth) if self.endpoint.basic_auth and not explicit_auth else None
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.opt.timeout), limits=limits, headers=headers, auth=auth,
                                         transport=self._transport, follow_redirects=False)
        return self

    def stop_new(self) -> None:
        """Send nothing more: queries in flight finish their current try and are not retried."""
        self._stopping = True

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def budget_left(self) -> int:
        return max(0, self.opt.budget - self.used)

    def _charge(self) -> None:
        if self.used >= self.opt.budget:
            raise BudgetSpent
        self.used += 1
        self.sent_this_run += 1

    def _backoff(self, attempt: int) -> float:
        d = min(self.opt.backoff_cap, self.opt.backoff_base * (2**attempt))
        return d / 2 + self._rng.uniform(0, d / 2)

    @staticmethod
    def _retry_after(resp: httpx.Response) -> float | None:
        value = resp.headers.get("Retry-After")
        if value is None:
            return None
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        from datetime import datetime

        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(seconds)

    def _fail(self, error: str, status: int | None = None, body: bytes | str | None = None, limit: int = 1000) -> Attempt:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return Attempt(self.endpoint.scrub(error), status, self.endpoint.scrub(text[:limit]) if text else None)

    async def _read(self, resp: httpx.Response, cap: int, *, truncate: bool = False) -> bytes:
        """The decoded body, streamed; over ``cap`` bytes (wire or decoded) it is refused, or cut when ``truncate``."""
        declared = resp.headers.get("content-length", "")
        if not truncate and declared.strip().isdigit() and int(declared) > cap:
            raise MalformedResponse(f"answer is {int(declared)} bytes, more than --max-response-bytes {cap}")
        decoder = _BoundedDecoder(resp.headers.get("content-encoding", ""))
        out = bytearray()
        wire = 0
        async for chunk in self._raw_chunks(resp):
            wire += len(chunk)
            if wire > cap and not truncate:
                raise MalformedResponse(f"answer is more than --max-response-bytes {cap} on the wire")
            out += decoder.feed(chunk, cap + 1 - len(out))
            if len(out) > cap or wire > cap:
                if truncate:
                    return bytes(out[:cap])
                raise MalformedResponse(f"answer decompresses to more than --max-response-bytes {cap}")
        return bytes(out)

    @staticmethod
    async def _raw_chunks(resp: httpx.Response):
        if resp.is_stream_consumed:  # a response built in memory (httpx.MockTransport): already read
            yield resp.content
            return
        async for chunk in resp.aiter_raw():
            yield chunk

    async def _exchange(self, x_request, on_wire: Callable[[], None]) -> _Try:
        """One request and its answer, without the deadline (see :meth:`attempt`)."""
        assert self._client is not None, "use `async with`"

        async def trace(event: str, info: dict) -> None:
            if event.endswith("send_request_headers.started"):
                on_wire()  # the bytes go out now: a connection was made

        async with self._client.stream("POST", self.url, content=x_request.content, headers=x_request.headers,
                                       extensions={"trace": trace}) as resp:
            on_wire()  # transports that do not trace (tests) still reveal before the answer is used
            status = resp.status_code
            if status == 429:
                wait = self._retry_after(resp)
                failure = self._fail("rate limited (429)" + (f", Retry-After {wait:g}s" if wait is not None else ""), status)
                if wait is not None and wait > self.opt.max_retry_after:
                    return _Try(failure, status=status, wait=wait,
                                fatal=f"endpoint asks to wait {wait:.0f}s (429 Retry-After), more than {self.opt.max_retry_after:g}s")
                return _Try(failure, status=status, wait=wait)
            if status >= 300:
                body = await self._read(resp, _ERROR_BODY_BYTES, truncate=True)
                if status >= 500:
                    return _Try(self._fail(f"server error {status}", status, body, 200), status=status)
                if status >= 400:
                    text = self.endpoint.scrub(body.decode("utf-8", "replace")[:80])
                    return _Try(self._fail(f"client error {status}", status, body, 500), status=status,
                                fatal=f"endpoint refused the request: HTTP {status} {resp.reason_phrase} {text!r}".rstrip())
                where = redact_url(resp.headers.get("location", "?"))
                return _Try(self._fail(f"redirect {status}", status), status=status,
                            fatal=f"endpoint answered a redirect (HTTP {status} to {where})")
            body = await self._read(resp, self.opt.max_response_bytes)
        try:
            raw = self.fmt.decode(body, resp.headers.get("content-type"))
        except MalformedResponse as exc:
            return _Try(self._fail(exc.message, status, body), status=status)
        try:
            answer = self.fmt.classify(raw)
        except ResponseError as exc:
            return _Try(self._fail(exc.message, status, body), raw=raw, status=status, fatal=self.endpoint.scrub(exc.message))
        return _Try(raw=raw, answer=answer, status=status)

    async def attempt(self, x_request, on_wire: Callable[[], None] = lambda: None) -> _Try:
        """One try under the deadline: every failure becomes a journaled :class:`Attempt`, never an exception."""
        try:
            async with asyncio.timeout(self.opt.timeout):
                return await self._exchange(x_request, on_wire)
        except TimeoutError:
            return _Try(self._fail(f"deadline: no complete answer within {self.opt.timeout:g}s"))
        except httpx.TimeoutException as exc:
            return _Try(self._fail(f"timeout ({type(exc).__name__}) after {self.opt.timeout:g}s"))
        except httpx.TransportError as exc:  # connect errors, dropped connections, protocol errors
            return _Try(self._fail(f"{type(exc).__name__}: {str(exc)[:120] or 'connection failed'}"))
        except MalformedResponse as exc:  # undecodable or oversize body: transient, retried
            return _Try(self._fail(exc.message, 200, None))

    async def query(self, x, *, on_send: Callable[[int], None] | None = None,
                    on_wire: Callable[[], None] = lambda: None) -> Outcome:
        """Send one input until it is answered, retries are used up, the budget is spent or the probe stops.

        ``on_send(n)`` runs right before the n-th try (0-based) goes out, after it was charged;
        ``on_wire()`` when its first bytes leave (or its answer arrives, on transports that do not trace).
        """
        assert self._client is not None, "use `async with`"
        req = self.fmt.build(x)
        failures: list[Attempt] = []
        requests = 0
        while True:
            if self._stopping and requests:
                return Outcome(requests, failures, error="not retried: the probe had decided", stopped=True)
            await self._limiter.wait()
            try:
                if self._stopping:
                    raise BudgetSpent("the probe had decided")
                self._charge()  # no await between the charge, the journal and the send: the budget is never exceeded
            except BudgetSpent:
                return Outcome(requests, failures, error="query budget spent", budget_spent=True)
            if on_send is not None:
                on_send(requests)
            requests += 1
            got = await self.attempt(req, on_wire)
            if got.failure is None:
                return Outcome(requests, failures, raw=got.raw, answer=got.answer, status=got.status)
            failures.append(got.failure)
            if got.fatal is not None:
                return Outcome(requests, failures, raw=got.raw, error=got.fatal, fatal=True, status=got.status)
            if got.wait is not None:
                self._limiter.pause(got.wait)  # the other workers hold off too
            if requests > self.opt.max_retries:
                return Outcome(requests, failures, error=f"no answer after {requests} requests (last: {failures[-1].error})")
            if self.budget_left <= 0:
                return Outcome(requests, failures, error="query budget spent", budget_spent=True)
            if self._stopping:
                return Outcome(requests, failures, error="not retried: the probe had decided", stopped=True)
            await self._sleep(got.wait if got.wait is not None else self._backoff(requests - 1))
