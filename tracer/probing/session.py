"""One probe of a prediction API: schedule, queries, journal, sequential decision, resume.

Schedule
    Natural-mix copies: ``keys_per_probe`` keys of the pool that no endpoint
    was shown and no unfinished session holds, drawn by the session's fresh
    seed (:mod:`tracer.fingerprint.revelation`; each ``probe-sent`` entry
    names its key, so revelation is recorded per key). Noise copies: the
    triggers of ONE probe set (by default the first one no earlier probe
    revealed). Either way interleaved with decoys, i.e. ordinary validation inputs
    (``--decoys-per-trigger``, default 1), in an order drawn from a fresh
    32-byte CSPRNG seed: item j goes at the rank of SHA-256(seed || j), and the
    decoys are the validation inputs ranked first by SHA-256(seed || "decoy" || i).
    The endpoint cannot tell triggers from decoys by their position. The seed
    and the schedule (and a digest of every input's SHA-256) are journaled in
    the ``probe-start`` entry, so ``--resume`` replays the same order and
    checks that the inputs are still the same bytes (:mod:`tracer.probing.plan`).

Journal (the ledger, as it goes)
    ``probe-start``            session, endpoint (redacted) and its keyed hash, format, probe set, seed, schedule, budget, alpha
    ``probe-sent``             one per HTTP request, written before the request goes out (idx, try)
    ``probe-set-revealed``     when the first trigger's bytes actually leave (never for an unreachable endpoint)
    ``probe-query``            one per answered query: idx, kind, input_sha256, raw response, class, requests
    ``probe-failed``           one per query abandoned after its retries (errors and malformed bodies kept)
    ``probe-result``           the verdict, p-values and counts (as ``identification``)
    Decoy answers are journaled but never scored. An interrupted session is
    continued with ``--resume SESSION``: answered queries are not sent again;
    abandoned ones are retried; every request ever sent counts against the budget.

Counting: ``queries`` is the number of requests sent in the whole session. When
the probe decides, queries in flight are not cancelled (the server may or may
not have seen a cancelled one) but finish their current try, unretried, and are
journaled; so the count is exactly what the server received.

URLs: only :func:`tracer.probing.urls.redact_url`'s form is written anywhere.

Decision: :mod:`tracer.probing.sequential` (anytime-valid, Bonferroni over the
customers whose copies embed the probe set). The probe stops as soon as a
customer is named, or no customer can be named any more within the schedule
and the budget.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._jsonable import jsonable
from ..errors import BudgetExhausted, ConfigError, EndpointError, TracerError, UsageError
from ..fingerprint import rankcode
from ..identify.identify import record_identification
from ..identify.result import EPROCESS_RULE, IdentificationResult, build_result
from ..identify.scoring import issued_customers
from ..keys.keyring import Keyring
from ..ledger import Ledger
from ..workspace import Workspace
from .client import ClientOptions, Outcome, ProbeClient
from .formats import WireFormat
from .plan import (
    FormatChoice,
    JournalState,
    ProbeOptions,
    find_session,
    input_sha256,
    make_schedule,
    new_plan,
    resolve_format,
    resumed_plan,
    revealed_probe_sets,
)
from .sequential import METHOD, EProcess

__all__ = ["ProbeOptions", "FormatChoice", "ProbeSession", "probe_endpoint", "make_schedule", "revealed_probe_sets",
           "find_session", "input_sha256"]

_MAX_STORED_RESPONSE = 64 * 1024
#: ``rank_code_probe`` of a result that named no one, from an endpoint that answers with scores while some
#: issued copy carries the rank code: the read that still can (a copy behind a query filter that answers
#: keys wrongly, or a soft-label student of one, is named that way: bench/results/probe_rank_digits.txt).
RANK_CODE_HINT = {
    "command": "tracer probe URL --rank-code",
    "why": "the endpoint answers with scores and issued copies carry the rank code: that read sends only the vendor's "
           "validation inputs, which a query filter cannot single out, and names a copy whose keys are filtered or distilled away",
}


def _stored(raw: Any) -> Any:
    safe = jsonable(raw, raw=True)  # what a server answered: keep its information
    text = json.dumps(safe)
    if len(text) > _MAX_STORED_RESPONSE:
        return {"truncated": text[:_MAX_STORED_RESPONSE], "sha256": hashlib.sha256(text.encode()).hexdigest(), "length": len(text)}
    return safe


@dataclass
class _Batch:
    """The queries that finished together, journaled as one ledger transaction."""

    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fatal: str | None = None
    spent: bool = False


class ProbeSession:
    """Probe ``url`` (new session) or continue ``resume``; :meth:`run` returns the result.

    ``fmt`` is a built :class:`WireFormat`, or a :class:`FormatChoice` (the command
    line's options, unset ones ``None``) resolved here; on resume, ``url`` and
    ``fmt`` may be None: the session's are used.
    """

    def __init__(
        self,
        ws: Workspace,
        keyring: Keyring,
        url: str | None,
        fmt: WireFormat | FormatChoice | None,
        options: ProbeOptions | None = None,
        *,
        resume: str | None = None,
        transport=None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> None:
        if resume is None and url is None:
            raise UsageError("give the endpoint URL (or --resume SESSION)")
        self.ws, self.keyring = ws, keyring
        self.url, self.fmt, self.resume = url, fmt, resume
        self.opt = options or ProbeOptions()
        self.transport = transport
        self.on_progress, self.on_start = on_progress, on_start
        if self.opt.decoys_per_trigger is not None and self.opt.decoys_per_trigger < 0:
            raise ConfigError("--decoys-per-trigger must be >= 0")

    # -- set-up ------------------------------------------------------------------------------------

    def _prepare(self, ledger: Ledger) -> None:
        """Build the plan (new or resumed) and replay what the journal says happened."""
        if self.resume:
            plan = resumed_plan(self.ws, self.keyring, ledger, self.resume, self.url, self.fmt, self.opt)
            self.state = JournalState.replay(ledger.session_journal(self.resume))
            if self.state.finished:
                raise TracerError(f"probe session {self.resume} already reached its verdict",
                                 hint="`tracer ledger list --kind probe-result` shows it; start a new probe instead")
        else:
            fmt = self.fmt if isinstance(self.fmt, WireFormat) else resolve_format(self.fmt or FormatChoice(), self.ws.config.task)
            assert self.url is not None
            plan = new_plan(self.ws, self.keyring, ledger, self.url, fmt, self.opt)
            ledger.append("probe-start", plan.start_payload(), key=self.keyring.signing_key)
            self.state = JournalState()
        self.plan = plan
        journaled = ledger.session_journal(self.resume).get("probe-query", []) if self.resume else []
        self.scores_seen = any(plan.fmt.scores(q.get("response")) is not None for q in journaled)
        self.test = EProcess(plan.label_choices or self.ws.config.task.num_classes, len(plan.members), plan.alpha, futility_z=plan.futility_z,
                             futility_base=plan.futility_base)
        self.decoys_right = self.decoys_answered = 0
        for idx in sorted(self.state.answered):
            self._score(idx, self.state.answered[idx])

    def _score(self, idx: int, answer: int) -> None:
        kind, j = self.plan.schedule[idx]
        if kind == "t":
            if self.plan.scored(j, answer):  # a pool key answered outside its label set carries no evidence
                self.test.update(self.plan.codewords[:, j] == answer)
        else:
            self.decoys_answered += 1
            self.decoys_right += int(answer == int(self.plan.y_val[j]))

    # -- journal -----------------------------------------------------------------------------------

    def _journal_sent(self, ledger: Ledger, idx: int, attempt: int) -> None:  # on_send(attempt), idx bound
        """Before a request goes out: on disk first, so a killed run still counts it."""
        key = self.plan.key_of(idx)
        extra = {} if key is None else {"pool": self.plan.probe_set.id, "key": key}  # revelation per key, before it leaves
        ledger.append("probe-sent", {"session": self.plan.session, "idx": idx, "try": attempt, **extra}, key=self.keyring.signing_key)
        self.state.used += 1
        self.state.sent.add(idx)

    def _reveal(self, ledger: Ledger, idx: int) -> None:
        """When a trigger's bytes actually leave: the probe set is now known to the endpoint."""
        if self.state.revealed or not self.plan.is_trigger(idx):
            return
        self.state.revealed = True
        p = self.plan
        ledger.append("probe-set-revealed", {"subject": p.endpoint.public, "probe_set": p.probe_set.id, "session": p.session,
                                             "probe_set_digest": p.probe_set.digest()}, key=self.keyring.signing_key)

    def _entry(self, idx: int, out: Outcome) -> tuple[str, dict[str, Any]]:
        p = self.plan
        base = {"session": p.session, "idx": idx, "kind": "trigger" if p.is_trigger(idx) else "decoy",
                "input_sha256": p.hashes[idx], "requests": out.requests, "sends_journaled": True}
        if out.failures:
            base["failures"] = [f.to_json() for f in out.failures]
        if out.ok:
            return "probe-query", {**base, "response": _stored(out.raw), "answer": out.answer, "status": out.status}
        if out.stopped:  # a try in flight when the probe decided or stopped: sent, not retried
            base["stopped"] = True
        return "probe-failed", {**base, "subject": p.endpoint.public, "error": out.error}

    def _absorb(self, outcomes: list[tuple[int, Outcome]], pending: deque) -> _Batch:
        """Score and journal finished queries; unsent ones go back to the front of the queue."""
        batch = _Batch()
        for idx, out in outcomes:
            if out.requests == 0:  # never sent: the budget ran out, or the probe decided, first
                pending.appendleft(idx)
                batch.spent = batch.spent or out.budget_spent
                continue
            batch.items.append(self._entry(idx, out))
            if out.ok:
                self.failed_in_a_row = 0
                self.scores_seen = self.scores_seen or self.plan.fmt.scores(out.raw) is not None
                if idx not in self.state.answered:
                    self.state.answered[idx] = int(out.answer)  # type: ignore[arg-type]
                    self._score(idx, int(out.answer))  # type: ignore[arg-type]
            elif out.budget_spent or out.stopped:
                batch.spent = batch.spent or out.budget_spent
                pending.appendleft(idx)
            else:
                self.state.failed.add(idx)
                self.failed_in_a_row += 1
                if out.fatal and batch.fatal is None:
                    batch.fatal = out.error
        return batch

    def _progress(self, stage: str) -> None:
        if self.on_progress is None:
            return
        best = float(self.test.log10_p().min()) if self.test.customers else 0.0
        self.on_progress({"stage": stage, "queries": self.state.used, "answered": len(self.state.answered),
                          "trigger_answers": self.test.t, "triggers_sent": sum(1 for i in self.state.sent if self.plan.is_trigger(i)),
                          "best_log10_p": best, "schedule": len(self.plan.schedule), "session": self.plan.session})

    # -- the loop ----------------------------------------------------------------------------------

    def _reachable(self, pending: deque, in_flight: dict, budget_left: int) -> int:
        """Trigger answers still possible: in flight, plus triggers among the next pending items the budget allows."""
        flying = sum(1 for i in in_flight if self.plan.is_trigger(i))
        ahead = sum(1 for n, i in enumerate(pending) if n < budget_left and self.plan.is_trigger(i))
        return flying + ahead

    def _failure(self, batch: _Batch) -> EndpointError | None:
        """The error that stops the probe when the endpoint refused for good or keeps failing, else None."""
        s = self.plan.session
        if batch.fatal is not None:
            return EndpointError(batch.fatal, hint=f"answered queries are journaled; fix the options and continue with --resume {s}")
        if self.failed_in_a_row >= self.opt.max_failed_in_a_row:
            last = next(p for k, p in reversed(batch.items) if k == "probe-failed")
            why = last["failures"][-1]["error"] if last.get("failures") else last["error"]
            return EndpointError(
                f"the endpoint failed {self.failed_in_a_row} queries in a row, each after {self.opt.client.max_retries + 1} tries (last: {why})",
                hint=f"check the URL, --format and --header; answered queries are journaled, continue with --resume {s}")
        return None

    def _dispatch(self, ledger: Ledger, client: ProbeClient, pending: deque, in_flight: dict[int, asyncio.Task]) -> None:
        while pending and len(in_flight) < max(1, self.opt.client.concurrency) and client.budget_left > 0:
            idx = pending.popleft()
            in_flight[idx] = asyncio.ensure_future(client.query(
                self.plan.input(idx), on_send=functools.partial(self._journal_sent, ledger, idx),
                on_wire=functools.partial(self._reveal, ledger, idx)))

    async def _finish_in_flight(self, ledger: Ledger, client: ProbeClient, pending: deque, in_flight: dict) -> None:
        """At a decision: let queries in flight end their current try (no retry), and journal them."""
        client.stop_new()
        if in_flight:
            await asyncio.wait(in_flight.values())
            batch = self._absorb([(i, t.result()) for i, t in sorted(in_flight.items())], pending)
            in_flight.clear()
            if batch.items:
                ledger.append_many(batch.items, key=self.keyring.signing_key)

    async def _loop(self, ledger: Ledger) -> str:
        """Query until decided; returns the stop reason."""
        p = self.plan
        pending = deque(i for i in range(len(p.schedule)) if i not in self.state.answered)
        in_flight: dict[int, asyncio.Task] = {}
        self.failed_in_a_row = 0
        async with ProbeClient(p.endpoint, p.fmt, ClientOptions(**{**self.opt.client.__dict__, "budget": p.budget}),
                               used=self.state.used, transport=self.transport) as client:
            try:
                while True:
                    verdict = self.test.decided(self._reachable(pending, in_flight, client.budget_left))
                    if verdict is not None:
                        reason = "named" if verdict == "match" else "futility"
                        break
                    self._dispatch(ledger, client, pending, in_flight)
                    if not in_flight:
                        reason = "budget spent" if pending else "schedule exhausted"
                        break
                    done, _ = await asyncio.wait(in_flight.values(), return_when=asyncio.FIRST_COMPLETED)
                    batch = self._absorb([(i, in_flight.pop(i).result()) for i in sorted(i for i, t in in_flight.items() if t in done)], pending)
                    if batch.items:
                        ledger.append_many(batch.items, key=self.keyring.signing_key)
                    self._progress("querying")
                    error = self._failure(batch)
                    if error is not None:
                        await self._finish_in_flight(ledger, client, pending, in_flight)
                        raise error
                    if batch.spent and not in_flight:
                        reason = "budget spent"
                        break
                await self._finish_in_flight(ledger, client, pending, in_flight)
            finally:  # an exception (Ctrl-C): requests in flight were journaled as sent before they went out
                for task in in_flight.values():
                    task.cancel()
                if in_flight:
                    await asyncio.gather(*in_flight.values(), return_exceptions=True)
        return "named" if self.test.named.any() else reason

    # -- result ------------------------------------------------------------------------------------

    def _rank_read_open(self, ledger: Ledger, reason: str) -> bool:
        """Whether a --rank-code read could still name a copy this probe did not: no one named, the endpoint
        answered with scores, and some issued copy carries the code (said in the result; never part of the test)."""
        return (reason != "named" and self.scores_seen and rankcode.applicable(self.ws.config.task.num_classes)
                and bool(issued_customers(ledger, master=self.keyring.master, cache_dir=self.ws.cache_dir).members(rankcode.RANK_CODE_STYLE).any()))

    def _result(self, reason: str, ledger: Ledger) -> IdentificationResult:
        p, test, st = self.plan, self.test, self.state
        n, m = len(p.members), len(p.others)
        extra = {
            "endpoint": p.endpoint.public, "endpoint_hmac": p.endpoint_hmac, "session": p.session, "format": p.fmt.name,
            "trigger_queries": sum(1 for i in st.sent if p.is_trigger(i)),
            "decoy_queries": sum(1 for i in st.sent if not p.is_trigger(i)),
            "trigger_answers": int(test.t), "decoy_answers": self.decoys_answered,
            "decoy_accuracy": round(self.decoys_right / self.decoys_answered, 4) if self.decoys_answered else None,
            "failed_queries": len(st.failed), "budget": p.budget, "stopped": reason, "threshold_e_value": p.threshold,
            **({"key_pool": p.pool_left.to_json(),  # answers outside a key's label set are not trials (KeyPool.scored)
                "trigger_answers_outside_label_sets": sum(1 for i in st.answered if p.is_trigger(i)) - int(test.t)}
               if p.pool_left is not None else {}),
            **({"rank_code_probe": RANK_CODE_HINT} if self._rank_read_open(ledger, reason) else {}),
        }
        return build_result(
            ids=[c.customer_id for c in p.members + p.others], names=[c.display_name for c in p.members + p.others],
            matches=np.concatenate([test.k, np.zeros(m, np.int64)]), trials=np.array([test.t] * n + [0] * m, dtype=np.int64),
            p_values=np.concatenate([test.p_values(), np.ones(m)]), log10_p=np.concatenate([test.log10_p(), np.zeros(m)]),
            named=np.concatenate([test.named, np.zeros(m, bool)]), alpha=p.alpha, queries=st.used, model_sha256=None,
            num_classes=self.ws.config.task.num_classes, probe_sets=[p.probe_set.id], method=METHOD + f" ({n} customers)",
            decision_rule=EPROCESS_RULE, family_size=n, threshold=p.threshold, extra=extra, label_choices=p.label_choices)

    def _decide(self, ledger: Ledger) -> str:
        """Run the loop unless the journal alone decides; raise when no trigger could be scored."""
        p, test = self.plan, self.test
        pending = deque(i for i in range(len(p.schedule)) if i not in self.state.answered)
        if test.t == 0 and not test.can_reach(p.probe_set.size).any():
            raise ConfigError(
                f"even a perfect copy could not be named with the {p.probe_set.size} triggers of probe set {p.probe_set.id} "
                f"at alpha {p.alpha:g} over {len(p.members)} customers", hint="raise --alpha or use more probes per set")
        verdict = test.decided(self._reachable(pending, {}, max(0, p.budget - self.state.used)))
        if verdict == "no_match" and test.t == 0:
            need = test.triggers_needed(1.0)
            raise BudgetExhausted(
                f"a budget of {p.budget} requests cannot reach a verdict: even a perfect copy needs {need} trigger answers "
                f"(about {need * (1 + p.decoys_per_trigger)} requests with {p.decoys_per_trigger} decoy(s) per trigger)"
                + (f"; {self.state.used} were already sent" if self.state.used else ""),
                hint=f"raise --budget (continue this session with --resume {p.session} --budget N)")
        if verdict is not None:  # decided by the journal alone (interrupted right before the result)
            reason = "named" if verdict == "match" else "futility"
        elif p.budget - self.state.used <= 0:
            reason = "budget spent"
        else:
            reason = asyncio.run(self._loop(ledger))
        if test.t == 0:
            if reason == "budget spent":
                raise BudgetExhausted(f"the query budget ({p.budget} requests) was spent before any trigger was answered",
                                      hint=f"raise --budget and continue with --resume {p.session}")
            raise EndpointError("no trigger query was answered", hint=f"check the endpoint; continue with --resume {p.session}")
        return reason

    def run(self) -> IdentificationResult:
        with self.ws.ledger() as ledger:
            self._prepare(ledger)
            if self.on_start is not None:
                self.on_start(self.plan.session)
            self._progress("start")
            reason = self._decide(ledger)
            result = self._result(reason, ledger)
        x = result.extra
        record_identification(self.ws, self.keyring, result, kind="probe-result", subject=self.plan.endpoint.public,
                              details={"session": x["session"], "endpoint": x["endpoint"], "endpoint_hmac": x["endpoint_hmac"],
                                       "probe_set": self.plan.probe_set.id, "trigger_queries": x["trigger_queries"],
                                       "decoy_queries": x["decoy_queries"], "trigger_answers": x["trigger_answers"],
                                       "stopped": reason, "requests": result.queries})
        return result


def probe_endpoint(ws: Workspace, keyring: Keyring, url: str | None, fmt: WireFormat | FormatChoice | None,
                   options: ProbeOptions | None = None, **kwargs: Any) -> IdentificationResult:
    """Probe ``url`` with the workspace's customers and record the outcome; see :class:`ProbeSession`."""
    return ProbeSession(ws, keyring, url, fmt, options, **kwargs).run()
