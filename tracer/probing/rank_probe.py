"""`tracer probe --rank-code`: read the rank code through a prediction API, sending natural inputs only.

Why
    Keys, noise or natural, are inputs a leaker's query filter can try to single out, and a
    student distilled from a copy never learns them. The rank code (:mod:`tracer.fingerprint.rankcode`)
    lives in the copy's scores on ordinary inputs. This read sends nothing but the vendor's own
    validation inputs (the inputs `tracer identify` reads the code on, and the probe's decoys), so
    there is nothing for a filter to flag and no key is revealed; it needs an endpoint that returns
    scores (logits or probabilities), and copies that carry the code.

Test (fixed size, exact)
    Every input of the read set is sent once, in an order drawn from a fresh CSPRNG seed, up to
    ``--budget`` requests (default: the read set plus a quarter for retries). The answers' scores go
    through the same read as a file's (:func:`tracer.identify.rank_channel.read_rank_code`): per
    carrier, the concordant pairs of wrong classes, with the exact tail of a sum of independent
    Mahonian counts (:func:`tracer.fingerprint.stats.rank_code_tails`). Which inputs were answered
    can depend on the endpoint (failures, a spent budget) but never on any customer's code, so the
    tail stays exact for the inputs read. No key channel is read, so there is no Bonferroni factor:
    p is the rank code's own. Holm over every issued customer (those whose copies carry no code
    enter with p = 1: this read cannot name them) controls the chance of naming any innocent one at alpha.
    Like every probe session, this one's alpha bounds this session's claim.

Journal
    ``probe-start`` (``mode: rank-code``), ``probe-sent`` before each request leaves, ``probe-query``
    per answer (raw response kept), ``probe-failed`` per abandoned input, ``probe-result``. A read is
    not resumed (nothing secret was sent: run it again); ``--resume`` of one is refused.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data import load_dataset
from ..errors import BudgetExhausted, EndpointError, UsageError
from ..fingerprint import rankcode
from ..identify.identify import record_identification
from ..identify.rank_channel import read_outputs, read_set
from ..identify.result import RANK_MODE, IdentificationResult
from ..identify.scoring import issued_customers, score_answers
from ..keys.keyring import Keyring
from ..workspace import Workspace
from .client import ClientOptions, Outcome, ProbeClient
from .formats import WireFormat
from .plan import FormatChoice, ProbeOptions, input_sha256, resolve_format
from .session import _stored
from .urls import Endpoint, url_hmac

__all__ = ["probe_rank_code", "RANK_MODE"]

def _validation(cfg) -> tuple[np.ndarray, np.ndarray]:
    d = load_dataset(cfg)
    return d.x_val, d.y_val


def _order(seed: bytes, count: int) -> list[int]:
    """The read set's indices in the order they are sent: by SHA-256(seed || "read" || i)."""
    return sorted(range(count), key=lambda i: hashlib.sha256(seed + b"\0read/" + str(i).encode()).digest())


class _Read:
    """One read: its plan, its journal, and the scores gathered so far."""

    def __init__(self, ws: Workspace, keyring: Keyring, url: str, fmt: WireFormat, opt: ProbeOptions, *,
                 on_progress: Callable[[dict], None] | None) -> None:
        self.ws, self.keyring, self.fmt, self.opt, self.on_progress = ws, keyring, fmt, opt, on_progress
        cfg = ws.config
        self.num_classes = cfg.task.num_classes
        self.alpha = cfg.alpha if opt.alpha is None else opt.alpha
        self.endpoint = Endpoint.parse(url)
        self.endpoint_hmac = url_hmac(keyring.master, url)
        self.x_val, self.y_val = read_set(keyring.master, ws.cache_dir, functools.partial(_validation, cfg))
        self.session = f"probe-{secrets.token_hex(8)}"
        self.seed = secrets.token_bytes(32)
        self.order = _order(self.seed, len(self.x_val))
        self.budget = opt.budget if opt.budget is not None else len(self.order) + -(-len(self.order) // 4)
        self.scores: dict[int, np.ndarray] = {}
        self.labels_only = 0  # answers holding a class, not scores
        self.failed = 0
        self.sent = 0  # inputs with at least one request sent
        self.used = 0
        self.stopped: str | None = None  # why the read stopped before the whole read set, if it did

    def start_payload(self) -> dict[str, Any]:
        return {"subject": self.endpoint.public, "session": self.session, "mode": RANK_MODE, "endpoint": self.endpoint.public,
                "endpoint_hmac": self.endpoint_hmac, "endpoint_has_credentials": self.endpoint.has_credentials,
                "format": self.fmt.describe(), "schedule_seed": self.seed.hex(), "inputs": len(self.order), "budget": self.budget,
                "alpha": self.alpha, "rank_code": rankcode.RANK_CODE_STYLE}

    def _entry(self, idx: int, out: Outcome) -> tuple[str, dict[str, Any]]:
        base = {"session": self.session, "idx": idx, "kind": "natural", "requests": out.requests,
                "input_sha256": input_sha256(self.x_val[idx], self.ws.config.task.input_dtype)}
        if out.ok:
            return "probe-query", {**base, "response": _stored(out.raw), "class": out.answer}
        return "probe-failed", {**base, "error": out.error, "attempts": [a.to_json() for a in out.failures]}

    async def _run(self, ledger) -> str:
        opt = self.opt.client
        queue = list(self.order)
        async with ProbeClient(self.endpoint, self.fmt, ClientOptions(**{**opt.__dict__, "budget": self.budget})) as client:

            async def one(idx: int) -> tuple[int, Outcome]:
                def sent(attempt: int) -> None:
                    ledger.append("probe-sent", {"session": self.session, "idx": idx, "try": attempt}, key=self.keyring.signing_key)

                return idx, await client.query(self.x_val[idx], on_send=sent)

            in_flight: set[asyncio.Task] = set()
            try:
                await self._drain(ledger, client, queue, in_flight, one)
            finally:  # an error or Ctrl-C: what is in flight was journaled as sent before it went out
                for task in in_flight:
                    task.cancel()
                if in_flight:
                    await asyncio.gather(*in_flight, return_exceptions=True)
        return self.stopped or "read set sent"

    async def _drain(self, ledger, client: ProbeClient, queue: list[int], in_flight: set[asyncio.Task], one) -> None:
        """Send the queue ``concurrency`` at a time and absorb each answer, until it is empty or the read stops."""
        concurrency = max(1, self.opt.client.concurrency)
        failed_in_a_row = 0
        stop: str | None = None
        while queue or in_flight:
            while queue and stop is None and len(in_flight) < concurrency:
                in_flight.add(asyncio.ensure_future(one(queue.pop(0))))
            if not in_flight:
                break
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight -= done
            for task in sorted(done, key=lambda t: t.result()[0]):
                idx, out = task.result()
                self.sent += out.requests > 0
                if out.requests:
                    ledger.append(*self._entry(idx, out), key=self.keyring.signing_key)
                if out.ok:
                    failed_in_a_row = 0
                    vec = self.fmt.scores(out.raw)
                    if vec is None:
                        self.labels_only += 1
                        stop = stop or "labels only"  # decided on the endpoint's answer type, never on a code
                    else:
                        self.scores[idx] = vec
                elif out.budget_spent:
                    stop = stop or "budget spent"
                elif out.stopped:
                    pass  # in flight when the read stopped: its one try was journaled, it is not retried
                elif out.fatal:
                    raise EndpointError(f"the endpoint refused an input: {out.error}", hint="check --format, --header and the URL")
                else:
                    self.failed += 1
                    failed_in_a_row += 1
                    if failed_in_a_row >= self.opt.max_failed_in_a_row:
                        raise EndpointError(f"{failed_in_a_row} inputs in a row got no answer (last: {out.error})",
                                            hint="check the endpoint, or lower --concurrency / --rate")
            if stop is not None:
                client.stop_new()  # the queries in flight finish their current try, unretried, and are journaled
            self.used = self.budget - client.budget_left  # every request charged: exactly what was sent
            if self.on_progress is not None:
                self.on_progress({"queries": self.used, "answered": len(self.scores), "inputs": len(self.order)})
        self.stopped = stop

    def run(self) -> IdentificationResult:
        with self.ws.ledger() as ledger:
            customers = issued_customers(ledger, master=self.keyring.master, cache_dir=self.ws.cache_dir)
            if not rankcode.applicable(self.num_classes) or not customers.members(rankcode.RANK_CODE_STYLE).any():
                raise UsageError("no issued copy carries a rank code, so there is nothing for --rank-code to read",
                                 hint="probe with keys: tracer probe URL (without --rank-code)")
            ledger.append("probe-start", self.start_payload(), key=self.keyring.signing_key)
            stopped = asyncio.run(self._run(ledger))
        if self.labels_only and not self.scores:
            raise EndpointError("the endpoint answers class labels, not scores: the rank code is read from scores",
                                hint="probe it with keys instead: tracer probe URL (without --rank-code)")
        if not self.scores:
            raise BudgetExhausted(f"no input was answered within the budget of {self.budget} requests", hint="raise --budget")
        idx = np.array(sorted(self.scores))
        rank, rank_doc = read_outputs(self.keyring.master, customers, num_classes=self.num_classes, labels=self.y_val[idx],
                                      outputs=np.stack([self.scores[int(i)] for i in idx]), cache_dir=self.ws.cache_dir)
        extra = {"endpoint": self.endpoint.public, "endpoint_hmac": self.endpoint_hmac, "session": self.session, "format": self.fmt.name,
                 "mode": RANK_MODE, "trigger_queries": 0, "decoy_queries": self.sent, "natural_answers": len(self.scores), "failed_queries": self.failed, "budget": self.budget, "stopped": stopped,
                 **({"rank_code": rank_doc} if rank_doc is not None else {})}
        if rank is None:  # scores that are not C finite values per input, on every answer
            raise EndpointError("the endpoint's answers hold no usable scores", hint="check --response-path")
        result = score_answers(self.keyring.master, customers, [], {}, num_classes=self.num_classes, alpha=self.alpha,
                               queries=self.used, model_sha256=None, extra=extra, cache_dir=self.ws.cache_dir, rank=rank)
        record_identification(self.ws, self.keyring, result, kind="probe-result", subject=self.endpoint.public,
                              details={"session": self.session, "endpoint": self.endpoint.public, "endpoint_hmac": self.endpoint_hmac,
                                       "mode": RANK_MODE, "natural_answers": len(self.scores), "stopped": stopped, "requests": self.used})
        return result


def probe_rank_code(ws: Workspace, keyring: Keyring, url: str, fmt: WireFormat | FormatChoice, options: ProbeOptions | None = None,
                    *, on_progress: Callable[[dict], None] | None = None) -> IdentificationResult:
    """Read the rank code through ``url`` on the vendor's validation inputs only, and record the outcome (see the module)."""
    opt = options or ProbeOptions()
    if opt.probe_set is not None or opt.decoys_per_trigger is not None:
        raise UsageError("--rank-code sends no keys: --probe-set and --decoys-per-trigger do not apply")
    wire = fmt if isinstance(fmt, WireFormat) else resolve_format(fmt, ws.config.task)
    return _Read(ws, keyring, url, wire, opt, on_progress=on_progress).run()
