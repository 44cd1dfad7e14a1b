"""One probe of a prediction API: schedule, queries, journal, sequential decision, resume.

Schedule
    The triggers of ONE probe set (by default the first one no earlier probe
    revealed), interleaved with decoys, i.e. ordinary validation inputs
    (``--decoys-per-trigger``, default 1), in an order drawn from a fresh
    32-byte CSPRNG seed: item j goes at the rank of SHA-256(seed || j), and the
    decoys are the validation inputs ranked first by SHA-256(seed || "decoy" || i).
    The endpoint cannot tell triggers from decoys by their position. The seed
    and the schedule (and a digest of every input's SHA-256) are journaled in
    the ``probe-start`` entry, so ``--resume`` replays the same order and
    checks that the inputs are still the same bytes.

Journal (the ledger, as it goes)
    ``probe-start``            session, endpoint, format, probe set, seed, schedule, budget, alpha
    ``probe-set-revealed``     just before the first trigger is sent
    ``probe-query``            one per answered query: idx, kind, input_sha256, raw response, class, requests
    ``probe-failed``           one per query abandoned after its retries (errors and malformed bodies kept)
    ``probe-result``           the verdict, p-values and counts (as ``identification``)
    Decoy answers are journaled but never scored. An interrupted session is
    continued with ``--resume SESSION``: answered queries are not sent again;
    abandoned ones are retried.

Decision: :mod:`tracer.probing.sequential` (anytime-valid, Bonferroni over the
customers whose copies embed the probe set). The probe stops as soon as a
customer is named, or no customer can be named any more within the schedule
and the budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..errors import BudgetExhausted, ConfigError, EndpointError, TracerError
from ..fingerprint import ProbeSet, codewords, make_probe_set, probe_set_ids
from ..identify.identify import record_identification
from ..identify.result import Candidate, IdentificationResult
from ..identify.scoring import IssuedCustomer, issued_customers
from ..keys.keyring import Keyring
from ..ledger import Ledger
from ..workspace import Workspace
from .client import ClientOptions, Outcome, ProbeClient
from .formats import WireFormat
from .sequential import METHOD, EProcess

__all__ = ["ProbeOptions", "ProbeSession", "probe_endpoint", "make_schedule", "revealed_probe_sets", "find_session", "input_sha256"]

_MAX_STORED_RESPONSE = 64 * 1024


@dataclass
class ProbeOptions:
    alpha: float | None = None  # default: identify.alpha of tracer.toml
    budget: int | None = None  # default: twice the schedule length (room for retries)
    decoys_per_trigger: int = 1
    probe_set: str | None = None  # default: the first probe set not yet revealed
    max_failed_in_a_row: int = 3  # abandoned queries in a row before the endpoint is declared failing
    client: ClientOptions = field(default_factory=ClientOptions)


def input_sha256(x: np.ndarray, dtype: str) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x, dtype=dtype)).tobytes()).hexdigest()


def make_schedule(seed: bytes, probes: int, validation: int, decoys_per_trigger: int) -> list[tuple[str, int]]:
    """Items ``("t", probe index)`` and ``("d", validation index)`` in the order they are sent."""

    def rank(*parts: object) -> bytes:
        return hashlib.sha256(seed + b"\0" + "/".join(map(str, parts)).encode()).digest()

    n_dec = probes * decoys_per_trigger
    decoys: list[int] = []
    if n_dec:
        if validation <= 0:
            raise ConfigError("decoys need validation inputs, and the dataset has none", hint="pass --decoys-per-trigger 0")
        order = sorted(range(validation), key=lambda i: rank("decoy", i))
        decoys = [order[j % validation] for j in range(n_dec)]
    items = [("t", i) for i in range(probes)] + [("d", v) for v in decoys]
    return [item for _, item in sorted((rank("order", j), item) for j, item in enumerate(items))]


def _jsonable(value: Any) -> Any:
    """Raw answers as canonical-JSON-safe values (non-finite floats and huge ints become strings)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else str(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _stored(raw: Any) -> Any:
    safe = _jsonable(raw)
    text = json.dumps(safe)
    if len(text) > _MAX_STORED_RESPONSE:
        return {"truncated": text[:_MAX_STORED_RESPONSE], "sha256": hashlib.sha256(text.encode()).hexdigest(), "length": len(text)}
    return safe


def revealed_probe_sets(ledger: Ledger) -> list[str]:
    seen: list[str] = []
    for e in ledger.entries(kind="probe-set-revealed"):
        ps = e.payload.get("probe_set")
        if ps and ps not in seen:
            seen.append(ps)
    return seen


def find_session(ledger: Ledger, session: str) -> dict[str, Any]:
    for e in ledger.entries(kind="probe-start"):
        if e.payload.get("session") == session:
            return {**e.payload, "_entry": e.seq}
    raise TracerError(f"no probe session {session!r} in the ledger", hint="`tracer ledger list --kind probe-start` lists them")


def _session_entries(ledger: Ledger, session: str, kind: str) -> list[dict[str, Any]]:
    if kind == "probe-query":
        rows = ledger.db.query(
            "SELECT e.payload FROM probe_queries q JOIN entries e ON e.seq = q.entry WHERE q.session = ? ORDER BY q.entry", [session])
        return [json.loads(r["payload"]) for r in rows]
    return [e.payload for e in ledger.entries(kind=kind) if e.payload.get("session") == session]


class ProbeSession:
    """Probe ``url`` (new session) or continue ``resume``; :meth:`run` returns the result."""

    def __init__(
        self,
        ws: Workspace,
        keyring: Keyring,
        url: str,
        fmt: WireFormat,
        options: ProbeOptions | None = None,
        *,
        resume: str | None = None,
        transport=None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = ws
        self.keyring = keyring
        self.url = url
        self.fmt = fmt
        self.opt = options or ProbeOptions()
        self.resume = resume
        self.transport = transport
        self.on_progress = on_progress
        self.on_start = on_start
        self.cfg = ws.config
        if self.opt.decoys_per_trigger < 0:
            raise ConfigError("--decoys-per-trigger must be >= 0")

    # -- set-up ------------------------------------------------------------------------------------

    def _prepare(self, ledger: Ledger) -> None:
        cfg, task = self.cfg, self.cfg.task
        customers = issued_customers(ledger)
        if self.resume:
            start = find_session(ledger, self.resume)
            if any(e.payload.get("session") == self.resume for e in ledger.entries(kind="probe-result")):
                raise TracerError(f"probe session {self.resume} already reached its verdict", hint="`tracer ledger list --kind probe-result` shows it; start a new probe instead")
            if start["endpoint"] != self.url:
                raise TracerError(f"probe session {self.resume} probed {start['endpoint']}, not {self.url}", hint="pass the same URL to --resume")
            if start["format"]["format"] != self.fmt.name:
                raise TracerError(f"probe session {self.resume} used --format {start['format']['format']}, not {self.fmt.name}")
            self.session = self.resume
            self.probe_set_id = start["probe_set"]
            self.alpha = float(start["alpha"])
            self.budget = int(self.opt.budget if self.opt.budget is not None else start["budget"])
            self.seed = bytes.fromhex(start["schedule_seed"])
            self.schedule = [(k, int(i)) for k, i in start["schedule"]]
            self.decoys_per_trigger = int(start["decoys_per_trigger"])
        else:
            ids = probe_set_ids(cfg.fingerprint.probe_sets)
            if self.opt.probe_set is not None:
                if self.opt.probe_set not in ids:
                    raise ConfigError(f"unknown probe set {self.opt.probe_set!r}", hint=f"this workspace has {', '.join(ids)}")
                self.probe_set_id = self.opt.probe_set
            else:
                shown = set(revealed_probe_sets(ledger))
                fresh = [i for i in ids if i not in shown]
                if not fresh:
                    raise TracerError(
                        f"all {len(ids)} probe sets were already revealed to endpoints",
                        hint="pass --probe-set ID to reuse one (still a valid test, but that endpoint may have learned its triggers), or add probe sets before issuing more copies")
                self.probe_set_id = fresh[0]
            self.session = f"probe-{secrets.token_hex(8)}"
            self.alpha = float(self.cfg.alpha if self.opt.alpha is None else self.opt.alpha)
            if not 0 < self.alpha < 1:
                raise ConfigError("--alpha must be in (0, 1)")
            self.seed = secrets.token_bytes(32)
            self.decoys_per_trigger = self.opt.decoys_per_trigger
            self.schedule = []  # made once the validation set is known
            self.budget = 0
        self.members: list[IssuedCustomer] = [c for c in customers if self.probe_set_id in c.probe_sets]
        self.others: list[IssuedCustomer] = [c for c in customers if self.probe_set_id not in c.probe_sets]
        if not self.members:
            raise TracerError(f"no issued copy embeds probe set {self.probe_set_id}", hint="issue copies first (`tracer issue`)")
        self.probe_set: ProbeSet = make_probe_set(self.keyring.master, self.probe_set_id, task, cfg.probes_per_set)
        self.x_val = np.zeros((0, *task.input_shape), dtype=task.input_dtype)
        self.y_val = np.zeros(0, dtype=np.int64)
        if self.decoys_per_trigger > 0:
            from ..data import load_dataset

            data = load_dataset(cfg)
            self.x_val, self.y_val = data.x_val, data.y_val
        if not self.resume:
            self.schedule = make_schedule(self.seed, self.probe_set.size, len(self.x_val), self.decoys_per_trigger)
            self.budget = int(self.opt.budget if self.opt.budget is not None else 2 * len(self.schedule))
        if self.budget < 1:
            raise ConfigError("--budget must be at least 1")
        self.hashes = [input_sha256(self._input(i), task.input_dtype) for i in range(len(self.schedule))]
        digest = hashlib.sha256("\n".join(f"{k}:{j}:{h}" for (k, j), h in zip(self.schedule, self.hashes)).encode()).hexdigest()
        if self.resume:
            if digest != start["schedule_sha256"]:
                raise TracerError(f"the inputs of probe session {self.resume} changed since it started (validation data or keys differ)",
                                  hint="resume from the same workspace and dataset, or start a new probe")
            if start["probe_set_digest"] != self.probe_set.digest():
                raise TracerError(f"probe set {self.probe_set_id} no longer matches session {self.resume}")
        else:
            payload = {
                "subject": self.url,
                "session": self.session,
                "endpoint": self.url,
                "format": self.fmt.describe(),
                "probe_set": self.probe_set_id,
                "probe_set_digest": self.probe_set.digest(),
                "schedule_seed": self.seed.hex(),
                "schedule": [[k, i] for k, i in self.schedule],
                "schedule_sha256": digest,
                "decoys_per_trigger": self.decoys_per_trigger,
                "budget": self.budget,
                "budget_counts": "HTTP requests, retries included",
                "alpha": self.alpha,
                "customers": len(self.members),
                "threshold": len(self.members) / self.alpha,
                "client": {"timeout": self.opt.client.timeout, "rate": self.opt.client.rate, "concurrency": self.opt.client.concurrency,
                           "max_retries": self.opt.client.max_retries, "header_names": sorted(self.opt.client.headers)},
                "method": METHOD,
                "tracer_version": __version__,
            }
            ledger.append("probe-start", payload, key=self.keyring.signing_key)
        self.codewords = codewords(self.keyring.master, [c.customer_id for c in self.members], self.probe_set_id,
                                   self.probe_set.size, task.num_classes)
        self.test = EProcess(task.num_classes, len(self.members), self.alpha)
        # what earlier runs of this session did
        self.answered: dict[int, int] = {}
        self.failed: set[int] = set()
        self.sent: set[int] = set()
        self.used = 0
        self.decoys_right = 0
        self.decoys_answered = 0
        if self.resume:
            for p in _session_entries(ledger, self.session, "probe-query"):
                self.used += int(p.get("requests", 1))
                self.sent.add(int(p["idx"]))
                if int(p["idx"]) not in self.answered:
                    self.answered[int(p["idx"])] = int(p["answer"])
            for p in _session_entries(ledger, self.session, "probe-failed"):
                self.used += int(p.get("requests", 1))
                self.sent.add(int(p["idx"]))
            for idx in sorted(self.answered):
                self._score(idx, self.answered[idx])
        self.revealed = any(e.payload.get("session") == self.session for e in ledger.entries(kind="probe-set-revealed"))

    def _input(self, idx: int) -> np.ndarray:
        kind, j = self.schedule[idx]
        return self.probe_set.inputs[j] if kind == "t" else self.x_val[j]

    def _score(self, idx: int, answer: int) -> None:
        kind, j = self.schedule[idx]
        if kind == "t":
            self.test.update(self.codewords[:, j] == answer)
        else:
            self.decoys_answered += 1
            self.decoys_right += int(answer == int(self.y_val[j]))

    # -- the loop ----------------------------------------------------------------------------------

    def _reachable(self, pending: deque, in_flight: dict, budget_left: int) -> int:
        """Trigger answers still possible: in flight, plus triggers among the next pending items the budget allows."""
        flying = sum(1 for i in in_flight if self.schedule[i][0] == "t")
        ahead = sum(1 for n, i in enumerate(pending) if n < budget_left and self.schedule[i][0] == "t")
        return flying + ahead

    def _journal(self, ledger: Ledger, idx: int, out: Outcome) -> tuple[str, dict[str, Any]]:
        kind = "trigger" if self.schedule[idx][0] == "t" else "decoy"
        base = {"session": self.session, "idx": idx, "kind": kind, "input_sha256": self.hashes[idx], "requests": out.requests}
        if out.failures:
            base["failures"] = [f.to_json() for f in out.failures]
        if out.ok:
            return "probe-query", {**base, "response": _stored(out.raw), "answer": out.answer, "status": out.status}
        return "probe-failed", {**base, "subject": self.url, "error": out.error}

    def _progress(self, client: ProbeClient | None, stage: str) -> None:
        if self.on_progress is None:
            return
        best = float(self.test.log10_p().min()) if self.test.customers else 0.0
        self.on_progress({"stage": stage, "queries": client.used if client else self.used,
                          "answered": len(self.answered), "trigger_answers": self.test.t,
                          "triggers_sent": sum(1 for i in self.sent if self.schedule[i][0] == "t"),
                          "best_log10_p": best, "schedule": len(self.schedule), "session": self.session})

    async def _loop(self, ledger: Ledger) -> tuple[str, int]:
        """Query until decided; returns (stop reason, HTTP requests sent in this run)."""
        copt = self.opt.client
        pending = deque(i for i in range(len(self.schedule)) if i not in self.answered)
        in_flight: dict[int, asyncio.Task] = {}
        failed_in_a_row = 0
        reason = "schedule exhausted"
        async with ProbeClient(self.url, self.fmt, ClientOptions(**{**copt.__dict__, "budget": self.budget}),
                               used=self.used, transport=self.transport) as client:
            try:
                while True:
                    verdict = self.test.decided(self._reachable(pending, in_flight, client.budget_left))
                    if verdict is not None:
                        reason = "named" if verdict == "match" else "futility"
                        break
                    while pending and len(in_flight) < max(1, copt.concurrency) and client.budget_left > 0:
                        idx = pending.popleft()
                        if self.schedule[idx][0] == "t" and not self.revealed:
                            ledger.append("probe-set-revealed", {"subject": self.url, "probe_set": self.probe_set_id, "session": self.session,
                                                                 "probe_set_digest": self.probe_set.digest()}, key=self.keyring.signing_key)
                            self.revealed = True
                        self.sent.add(idx)
                        in_flight[idx] = asyncio.ensure_future(client.query(self._input(idx)))
                    if not in_flight:
                        reason = "budget spent" if pending else "schedule exhausted"
                        break
                    done, _ = await asyncio.wait(in_flight.values(), return_when=asyncio.FIRST_COMPLETED)
                    finished = sorted(i for i, t in in_flight.items() if t in done)
                    items, fatal, spent = [], None, False
                    for idx in finished:
                        out: Outcome = in_flight.pop(idx).result()
                        if out.requests == 0:  # never sent: the budget ran out first
                            self.sent.discard(idx)
                            pending.appendleft(idx)
                            spent = True
                            continue
                        items.append(self._journal(ledger, idx, out))
                        self.used += out.requests
                        if out.ok:
                            failed_in_a_row = 0
                            self.answered[idx] = int(out.answer)  # type: ignore[arg-type]
                            self._score(idx, int(out.answer))  # type: ignore[arg-type]
                        elif out.budget_spent:
                            spent = True
                            pending.appendleft(idx)
                        else:
                            self.failed.add(idx)
                            failed_in_a_row += 1
                            if out.fatal and fatal is None:
                                fatal = out.error
                    if items:
                        ledger.append_many(items, key=self.keyring.signing_key)
                    self._progress(client, "querying")
                    if fatal is not None:
                        raise EndpointError(f"{fatal}", hint=f"answered queries are journaled; fix the options and continue with --resume {self.session}")
                    if failed_in_a_row >= self.opt.max_failed_in_a_row:
                        last = next(p for k, p in reversed(items) if k == "probe-failed")
                        raise EndpointError(
                            f"the endpoint failed {failed_in_a_row} queries in a row, each after {copt.max_retries + 1} tries (last: {last['failures'][-1]['error'] if last.get('failures') else last['error']})",
                            hint=f"check the URL, --format and --header; answered queries are journaled, continue with --resume {self.session}")
                    if spent and not in_flight:
                        reason = "budget spent"
                        break
            finally:
                for task in in_flight.values():
                    task.cancel()
                if in_flight:
                    await asyncio.gather(*in_flight.values(), return_exceptions=True)
                    # requests already charged for cancelled queries count as sent
                self.total_requests = client.used
        return reason, client.sent_this_run

    # -- result ------------------------------------------------------------------------------------

    def _result(self, reason: str) -> IdentificationResult:
        test = self.test
        p, logp, named = test.p_values(), test.log10_p(), test.named
        ids = np.arange(len(self.members))
        order = sorted(ids, key=lambda i: (logp[i], -test.k[i]))
        cands = [Candidate(customer=self.members[i].customer_id, display_name=self.members[i].display_name, matches=int(test.k[i]),
                           trials=int(test.t), p_value=float(p[i]), log10_p=round(float(logp[i]), 4), named=bool(named[i])) for i in order]
        cands += [Candidate(customer=c.customer_id, display_name=c.display_name, matches=0, trials=0, p_value=1.0, log10_p=0.0, named=False)
                  for c in self.others]
        chosen = [c.customer for c in cands if c.named]
        triggers_sent = sum(1 for i in self.sent if self.schedule[i][0] == "t")
        decoys_sent = sum(1 for i in self.sent if self.schedule[i][0] == "d")
        extra = {
            "endpoint": self.url,
            "session": self.session,
            "format": self.fmt.name,
            "trigger_queries": triggers_sent,
            "decoy_queries": decoys_sent,
            "trigger_answers": int(test.t),
            "decoy_answers": self.decoys_answered,
            "decoy_accuracy": round(self.decoys_right / self.decoys_answered, 4) if self.decoys_answered else None,
            "failed_queries": len(self.failed),
            "budget": self.budget,
            "stopped": reason,
            "threshold_e_value": len(self.members) / self.alpha,
            "family_size": len(self.members),
        }
        return IdentificationResult(
            verdict="match" if chosen else "no_match", customers=chosen, alpha=self.alpha, queries=int(self.total_requests),
            model_sha256=None, candidates=cands, num_classes=self.cfg.task.num_classes, probe_sets=[self.probe_set_id],
            method=METHOD + f" ({len(self.members)} customers)", extra=extra,
        )

    def run(self) -> IdentificationResult:
        with self.ws.ledger() as ledger:
            self._prepare(ledger)
            if self.on_start is not None:
                self.on_start(self.session)
            self.total_requests = self.used
            self._progress(None, "start")
            pending = deque(i for i in range(len(self.schedule)) if i not in self.answered)
            if self.test.t == 0 and not self.test.can_reach(self.probe_set.size).any():
                raise ConfigError(
                    f"even a perfect copy could not be named with the {self.probe_set.size} triggers of probe set {self.probe_set_id} "
                    f"at alpha {self.alpha:g} over {len(self.members)} customers", hint="raise --alpha or use more probes per set")
            reason = None
            verdict = self.test.decided(self._reachable(pending, {}, max(0, self.budget - self.used)))
            if verdict == "no_match" and self.test.t == 0:
                per = 1 + self.decoys_per_trigger
                need = self.test.triggers_needed(1.0)
                raise BudgetExhausted(
                    f"a budget of {self.budget} requests cannot reach a verdict: even a perfect copy needs {need} trigger answers "
                    f"(about {need * per} requests with {self.decoys_per_trigger} decoy(s) per trigger)",
                    hint=f"raise --budget (continue this session with --resume {self.session} --budget N)")
            if verdict is not None:  # decided by the journal alone (interrupted right before the result)
                reason = "named" if verdict == "match" else "futility"
            elif self.budget - self.used <= 0:
                reason = "budget spent"
            else:
                reason, _ = asyncio.run(self._loop(ledger))
            if self.test.t == 0:
                if reason == "budget spent":
                    raise BudgetExhausted(f"the query budget ({self.budget} requests) was spent before any trigger was answered",
                                          hint=f"raise --budget and continue with --resume {self.session}")
                raise EndpointError("no trigger query was answered", hint=f"check the endpoint; continue with --resume {self.session}")
            result = self._result(reason)
        record_identification(self.ws, self.keyring, result, kind="probe-result", subject=self.url,
                              details={"session": self.session, "endpoint": self.url, "probe_set": self.probe_set_id,
                                       "trigger_queries": result.extra["trigger_queries"], "decoy_queries": result.extra["decoy_queries"],
                                       "trigger_answers": result.extra["trigger_answers"], "stopped": reason,
                                       "requests": result.queries})
        return result


def probe_endpoint(ws: Workspace, keyring: Keyring, url: str, fmt: WireFormat, options: ProbeOptions | None = None, **kwargs) -> IdentificationResult:
    """Probe ``url`` with the workspace's customers and record the outcome; see :class:`ProbeSession`."""
    return ProbeSession(ws, keyring, url, fmt, options, **kwargs).run()
