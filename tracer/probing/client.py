"""The HTTP side of a probe: an async httpx client with a budget, a rate limit, retries and backoff.

Accounting: the budget counts *HTTP requests*, every one that is sent:
first tries and retries, triggers and decoys alike. A request is charged
right before it goes out (after the rate limiter, with nothing in between),
so the budget is never exceeded; a request cancelled in flight when the
probe stops counts as sent. The rate limit spaces request *starts* at least
1/rate seconds apart (over all concurrent workers), so no window of length w
ever sees more than floor(w * rate) + 1 request starts.

Retries: connection errors, timeouts, dropped connections, 5xx answers and
undecodable bodies are retried with exponential backoff and "equal jitter"
(wait d/2 + U(0, d/2), d = min(cap, base * 2^attempt)). A 429 waits what its
Retry-After header says (seconds or an HTTP date; the backoff when absent),
up to ``max_retry_after``, and no other worker starts a request before then. Any other 4xx is a request the endpoint will never
accept (authentication, wrong format): no retry, the probe stops.

Proxies and CA bundles come from the environment (HTTPS_PROXY, NO_PROXY,
SSL_CERT_FILE), as for any httpx client.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import httpx

from ..errors import EndpointError
from .formats import MalformedResponse, ResponseError, WireFormat

__all__ = ["ClientOptions", "ProbeClient", "Outcome", "Attempt", "BudgetSpent", "parse_header"]


class BudgetSpent(Exception):
    """No request may be sent any more: the budget is used up."""


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` -> (name, value); raises EndpointError on a malformed header."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n") or any(c in value for c in "\r\n"):
        raise EndpointError(f"--header {name or text[:20]!r} is not of the form 'Name: value'")
    return name, value.strip()


@dataclass
class ClientOptions:
    timeout: float = 30.0  # seconds for each phase of a request (connect, write, wait for the answer, pool)
    rate: float | None = None  # requests per second over all workers; None: no limit
    concurrency: int = 4
    budget: int = 256  # HTTP requests in all, retries included
    max_retries: int = 4  # retries per query (so at most max_retries + 1 requests)
    backoff_base: float = 0.25  # seconds
    backoff_cap: float = 8.0
    max_retry_after: float = 120.0  # a 429 asking for a longer wait stops the probe
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


class ProbeClient:
    """Send queries to one endpoint; use as ``async with ProbeClient(...) as client``."""

    def __init__(self, url: str, fmt: WireFormat, options: ClientOptions, *, used: int = 0,
                 transport: httpx.AsyncBaseTransport | None = None, rng: random.Random | None = None) -> None:
        self.url = url
        self.fmt = fmt
        self.opt = options
        self.used = used  # requests charged so far (in this session, earlier runs included)
        self.sent_this_run = 0
        self._transport = transport
        self._rng = rng or random.Random()
        self._limiter = _RateLimiter(options.rate, time.monotonic)
        self._client: httpx.AsyncClient | None = None
        self.sleeps: list[float] = []  # backoff waits, for diagnostics and tests

    async def __aenter__(self) -> "ProbeClient":
        limits = httpx.Limits(max_connections=max(1, self.opt.concurrency), max_keepalive_connections=max(1, self.opt.concurrency))
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.opt.timeout), limits=limits, headers=self.opt.headers,
                                         transport=self._transport, follow_redirects=False)
        return self

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
        from datetime import datetime, timezone

        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(seconds)

    async def query(self, x) -> Outcome:
        """Send one input until it is answered, retries are used up, or the budget is spent."""
        assert self._client is not None, "use `async with`"
        req = self.fmt.build(x)
        failures: list[Attempt] = []
        requests = 0
        attempt = 0
        while True:
            if self.budget_left <= 0:
                return Outcome(requests, failures, error="query budget spent", budget_spent=True)
            await self._limiter.wait()
            try:
                self._charge()  # no await between the charge and the send: the budget is never exceeded
            except BudgetSpent:
                return Outcome(requests, failures, error="query budget spent", budget_spent=True)
            requests += 1
            wait: float | None = None
            try:
                resp = await self._client.post(self.url, content=req.content, headers=req.headers)
            except httpx.TimeoutException as exc:
                failures.append(Attempt(f"timeout ({type(exc).__name__}) after {self.opt.timeout:g}s"))
            except httpx.TransportError as exc:  # connect errors, dropped connections, protocol errors
                failures.append(Attempt(f"{type(exc).__name__}: {str(exc)[:120] or 'connection failed'}"))
            else:
                status = resp.status_code
                if status == 429:
                    wait = self._retry_after(resp)
                    failures.append(Attempt("rate limited (429)" + (f", Retry-After {wait:g}s" if wait is not None else ""), status))
                    if wait is not None and wait > self.opt.max_retry_after:
                        return Outcome(requests, failures, error=f"endpoint asks to wait {wait:.0f}s (429 Retry-After), more than {self.opt.max_retry_after:g}s", fatal=True, status=status)
                    if wait is not None:
                        self._limiter.pause(wait)  # the other workers hold off too
                elif status >= 500:
                    failures.append(Attempt(f"server error {status}", status, resp.text[:200] or None))
                elif status >= 400:
                    failures.append(Attempt(f"client error {status}", status, resp.text[:500] or None))
                    return Outcome(requests, failures, error=f"endpoint refused the request: HTTP {status} {resp.reason_phrase} {resp.text[:80]!r}".rstrip(), fatal=True, status=status)
                elif status >= 300:
                    failures.append(Attempt(f"redirect {status}", status))
                    return Outcome(requests, failures, error=f"endpoint answered a redirect (HTTP {status} to {resp.headers.get('location', '?')})", fatal=True, status=status)
                else:
                    try:
                        raw = self.fmt.decode(resp.content, resp.headers.get("content-type"))
                    except MalformedResponse as exc:
                        failures.append(Attempt(exc.message, status, resp.text[:1000]))
                    else:
                        try:
                            answer = self.fmt.classify(raw)
                        except ResponseError as exc:
                            failures.append(Attempt(exc.message, status, resp.text[:1000]))
                            return Outcome(requests, failures, raw=raw, error=exc.message, fatal=True, status=status)
                        return Outcome(requests, failures, raw=raw, answer=answer, status=status)
            if attempt >= self.opt.max_retries:
                return Outcome(requests, failures, error=f"no answer after {requests} requests (last: {failures[-1].error})")
            if self.budget_left <= 0:
                return Outcome(requests, failures, error="query budget spent", budget_spent=True)
            await self._sleep(wait if wait is not None else self._backoff(attempt))
            attempt += 1
