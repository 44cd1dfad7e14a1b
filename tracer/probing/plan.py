"""What a probe session is, fixed once (:class:`SessionPlan`), and what its journal says happened (:class:`JournalState`).

A new session draws its plan (probe set, seed, schedule, budget, alpha, the
customers whose copies carry the set) and journals it in ``probe-start``. A
resumed session rebuilds the same plan from that entry, checks that the
inputs are still the same bytes, and merges the command line: options left
unset (``None``) take the session's values; options that decide what is sent
(format, input encoding, input name, decoys, probe set, alpha) must agree
with the session (else :class:`~tracer.errors.UsageError`); options that only
read answers or pace requests (response path, label map, budget, client
settings) may change. :meth:`JournalState.replay` then rebuilds the counts
from the session's ledger entries.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import TaskConfig
from ..errors import ConfigError, TracerError, UsageError
from ..fingerprint import ProbeSet, probe_set_ids
from ..fingerprint.cache import cached_codewords
from ..fingerprint.keysets import is_pool, set_style, style_pool_id
from ..fingerprint.pool import KeyPool
from ..fingerprint.revelation import PoolUsage, draw_keys, pool_usage
from ..identify.identify import carried_key_sets
from ..identify.result import RANK_MODE
from ..identify.scoring import IssuedCustomer, issued_customers
from ..keys.keyring import Keyring
from ..ledger import Ledger
from ..workspace import Workspace
from .client import ClientOptions
from .formats import WireFormat, make_format
from .sequential import FUTILITY_BASE, FUTILITY_Z, METHOD
from .urls import Endpoint, url_hmac

__all__ = ["ProbeOptions", "FormatChoice", "SessionPlan", "JournalState", "resolve_format", "new_plan", "resumed_plan",
           "make_schedule", "input_sha256", "revealed_probe_sets", "find_session"]


@dataclass
class ProbeOptions:
    """Options of one run; ``None`` means "the default" for a new session and "the session's" on resume."""

    alpha: float | None = None  # default: identify.alpha of tracer.toml
    budget: int | None = None  # default: twice the schedule length (room for retries)
    decoys_per_trigger: int | None = None  # default: 1
    probe_set: str | None = None  # default: the first probe set not yet revealed
    max_failed_in_a_row: int = 3  # abandoned queries in a row before the endpoint is declared failing
    client: ClientOptions = field(default_factory=ClientOptions)


@dataclass(frozen=True)
class FormatChoice:
    """The wire-format options as given on the command line; ``None`` = not given."""

    name: str | None = None
    request_template: Path | None = None
    response_path: str | None = None
    label_map: Path | None = None
    input_name: str | None = None
    input_encoding: str | None = None


def resolve_format(choice: FormatChoice, task: TaskConfig, recorded: dict[str, Any] | None = None) -> WireFormat:
    """The wire format for a new session (``recorded`` None) or for continuing one."""
    if recorded is None:
        if choice.name is None:
            raise UsageError("give --format (kserve-v1, open-inference, torchserve or template)")
        return _make(choice, task, choice.response_path, choice.input_name, choice.input_encoding or "tensor")
    name = recorded["format"]
    for flag, given, was in (("--format", choice.name, name),
                             ("--input-encoding", choice.input_encoding, recorded.get("input_encoding", "tensor")),
                             ("--input-name", choice.input_name, recorded.get("input_name") if name == "open-inference" else None)):
        if given is not None and was is not None and given != was:
            raise UsageError(f"this session was started with {flag} {was}, not {given}", hint=f"drop {flag} or start a new probe")
    if recorded.get("label_map") and choice.label_map is None:
        raise UsageError("this session was started with --label-map; give the same --label-map FILE again")
    return _make(FormatChoice(name, choice.request_template, choice.response_path, choice.label_map), task,
                 choice.response_path or recorded.get("response_path"), choice.input_name or recorded.get("input_name"),
                 choice.input_encoding or recorded.get("input_encoding", "tensor"))


def _make(choice: FormatChoice, task: TaskConfig, response_path: str | None, input_name: str | None, encoding: str) -> WireFormat:
    assert choice.name is not None
    if (choice.name == "template") != (choice.request_template is not None):
        raise UsageError("--format template needs --request-template FILE" if choice.name == "template"
                         else "--request-template only applies to --format template")
    return make_format(choice.name, task, request_template=choice.request_template, response_path=response_path,
                       label_map=choice.label_map, input_name=input_name, input_encoding=encoding)


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


# -- the ledger, read ----------------------------------------------------------------------------


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


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionPlan:
    """Everything fixed for the life of a session; built once, by :func:`new_plan` or :func:`resumed_plan`."""

    session: str
    endpoint: Endpoint
    fmt: WireFormat
    probe_set: ProbeSet
    seed: bytes
    schedule: tuple[tuple[str, int], ...]
    hashes: tuple[str, ...]  # SHA-256 of each scheduled input
    digest: str  # over the schedule and the hashes: a resumed session checks its inputs against it
    decoys_per_trigger: int
    budget: int
    alpha: float
    members: tuple[IssuedCustomer, ...]  # customers whose copies carry the probe set: the family
    others: tuple[IssuedCustomer, ...]
    codewords: np.ndarray  # [members, probes]
    x_val: np.ndarray
    y_val: np.ndarray
    options: ProbeOptions
    endpoint_hmac: str | None  # HMAC of the full URL (None for sessions journaled before it existed)
    keys: tuple[int, ...] | None = None  # natural-mix: the pool index of each trigger j (probe_set.inputs[j] is pool key keys[j])
    label_choices: int = 0  # a match's chance denominator: the pool's label-set size, or the classes (noise probe sets)
    pool_left: PoolUsage | None = None  # natural-mix: what is left of the pool once this session's keys are taken
    label_sets: np.ndarray | None = None  # natural-mix: S_i of each trigger j ([triggers, k])
    futility_z: float | None = None  # key pools: the early-futility rule's z (None: only the plain rule; sessions journaled before it)
    futility_base: int = FUTILITY_BASE  # ... and the plain rule's answers it never stops before

    @property
    def threshold(self) -> float:
        return len(self.members) / self.alpha

    def is_trigger(self, idx: int) -> bool:
        return self.schedule[idx][0] == "t"

    def input(self, idx: int) -> np.ndarray:
        kind, j = self.schedule[idx]
        return self.probe_set.inputs[j] if kind == "t" else self.x_val[j]

    def start_payload(self) -> dict[str, Any]:
        """The ``probe-start`` entry: credentials never, the URL's keyed hash instead."""
        c = self.options.client
        return {
            "subject": self.endpoint.public, "session": self.session, "endpoint": self.endpoint.public,
            "endpoint_hmac": self.endpoint_hmac, "endpoint_has_credentials": self.endpoint.has_credentials,
            "format": self.fmt.describe(), "probe_set": self.probe_set.id, "probe_set_digest": self.probe_set.digest(),
            "schedule_seed": self.seed.hex(), "schedule": [[k, i] for k, i in self.schedule], "schedule_sha256": self.digest,
            "decoys_per_trigger": self.decoys_per_trigger, "budget": self.budget,
            "budget_counts": "HTTP requests, retries included", "sends_journaled": True,
            "alpha": self.alpha, "customers": len(self.members), "threshold": self.threshold,
            "client": {"timeout": c.timeout, "rate": c.rate, "concurrency": c.concurrency, "max_retries": c.max_retries,
                       "max_response_bytes": c.max_response_bytes, "header_names": sorted(c.headers)},
            "method": METHOD, "tracer_version": __version__,
            **({"key_style": set_style(self.probe_set.id), "keys": list(self.keys), "label_choices": self.label_choices} if self.keys is not None else {}),
            **({"futility": {"rule": "wilson-upper", "z": self.futility_z, "base": self.futility_base}} if self.futility_z is not None else {}),
        }

    def scored(self, j: int, answer: int) -> bool:
        """Whether the answer to trigger ``j`` is a trial (a pool key: only inside its label set; see KeyPool.scored)."""
        if self.keys is None or self.label_sets is None:
            return True
        return bool((self.label_sets[j] == answer).any())

    def key_of(self, idx: int) -> int | None:
        """The pool key schedule item ``idx`` shows (None for decoys and noise probe sets)."""
        kind, j = self.schedule[idx]
        return self.keys[j] if self.keys is not None and kind == "t" else None


@dataclass(frozen=True)
class _Common:
    members: tuple[IssuedCustomer, ...]
    others: tuple[IssuedCustomer, ...]
    probe_set: ProbeSet  # a noise probe set, or the whole key pool (the session's keys are drawn from it)
    x_val: np.ndarray
    y_val: np.ndarray


def _common(ws: Workspace, keyring: Keyring, ledger: Ledger, probe_set_id: str, decoys: int) -> _Common:
    cfg, task = ws.config, ws.config.task
    customers = list(issued_customers(ledger, master=keyring.master, cache_dir=ws.cache_dir))
    members = tuple(c for c in customers if probe_set_id in c.probe_sets)
    if not members:
        raise TracerError(f"no issued copy embeds probe set {probe_set_id}", hint="issue copies first (`tracer issue`)")
    x_val = np.zeros((0, *task.input_shape), dtype=task.input_dtype)
    y_val = np.zeros(0, dtype=np.int64)
    if decoys > 0:
        from ..data import load_dataset

        data = load_dataset(cfg)
        x_val, y_val = data.x_val, data.y_val
    key_set = carried_key_sets(ws, keyring, ledger, [probe_set_id])[0]
    return _Common(members, tuple(c for c in customers if probe_set_id not in c.probe_sets), key_set, x_val, y_val)


def _inputs_digest(common: _Common, schedule: list[tuple[str, int]], dtype: str) -> tuple[tuple[str, ...], str]:
    hashes = tuple(input_sha256(common.probe_set.inputs[j] if k == "t" else common.x_val[j], dtype) for k, j in schedule)
    digest = hashlib.sha256("\n".join(f"{k}:{j}:{h}" for (k, j), h in zip(schedule, hashes)).encode()).hexdigest()
    return hashes, digest


def _finish(ws: Workspace, keyring: Keyring, common: _Common, *, keys: list[int] | None = None, **fields: Any) -> SessionPlan:
    """The plan over ``common``'s set (a pool: only its ``keys``, in that order): input hashes, the family's codewords."""
    task = ws.config.task
    schedule = fields["schedule"]
    if fields["budget"] < 1:
        raise ConfigError("--budget must be at least 1")
    key_set, bound = common.probe_set, common.probe_set.bound(task.num_classes)
    index = cached_codewords(keyring.master, [c.customer_id for c in common.members], key_set.id, key_set.size, bound, folder=ws.cache_dir)
    if keys is not None:
        chosen = np.asarray(keys, dtype=np.int64)
        cw = key_set.labels(index[:, chosen], keys=chosen)
        label_sets = key_set.label_sets[chosen] if isinstance(key_set, KeyPool) else None
        common = replace(common, probe_set=ProbeSet(key_set.id, key_set.inputs[chosen]))
    else:
        cw, label_sets = key_set.labels(index), None
    hashes, digest = _inputs_digest(common, schedule, task.input_dtype)
    return SessionPlan(probe_set=common.probe_set, hashes=hashes, digest=digest, members=common.members, others=common.others,
                       codewords=cw, x_val=common.x_val, y_val=common.y_val, keys=None if keys is None else tuple(keys),
                       label_choices=bound, label_sets=label_sets, **{**fields, "schedule": tuple(schedule)})


def _pick_probe_set(ws: Workspace, keyring: Keyring, ledger: Ledger, wanted: str | None) -> str:
    """The key set a new session draws from: ``--probe-set``, else the pool when copies carry it, else the first unrevealed probe set."""
    ids = probe_set_ids(ws.config.fingerprint.probe_sets)
    pools = [i for i in issued_customers(ledger, master=keyring.master, cache_dir=ws.cache_dir).carried_sets() if is_pool(i)]
    if wanted is not None:
        if wanted not in ids and wanted not in pools:
            raise ConfigError(f"unknown probe set {wanted!r}", hint=f"this workspace has {', '.join(pools + ids)}")
        return wanted
    if pools:  # the configured style's pool first, where copies of both natural styles were issued here
        own = style_pool_id(ws.config.fingerprint.style)
        return own if own in pools else pools[0]
    shown = set(revealed_probe_sets(ledger))
    fresh = [i for i in ids if i not in shown]
    if not fresh:
        raise TracerError(
            f"all {len(ids)} probe sets were already revealed to endpoints",
            hint="pass --probe-set ID to reuse one (still a valid test, but that endpoint may have learned its triggers), "
                 "or add probe sets before issuing more copies")
    return fresh[0]


def new_plan(ws: Workspace, keyring: Keyring, ledger: Ledger, url: str, fmt: WireFormat, opt: ProbeOptions) -> SessionPlan:
    """Draw a new session: probe set, seed, schedule, budget (journal it with :meth:`SessionPlan.start_payload`)."""
    alpha = float(ws.config.alpha if opt.alpha is None else opt.alpha)
    if not 0 < alpha < 1:
        raise ConfigError("--alpha must be in (0, 1)")
    decoys = 1 if opt.decoys_per_trigger is None else opt.decoys_per_trigger
    if decoys < 0:
        raise ConfigError("--decoys-per-trigger must be >= 0")
    common = _common(ws, keyring, ledger, _pick_probe_set(ws, keyring, ledger, opt.probe_set), decoys)
    seed = secrets.token_bytes(32)
    keys, left = None, None
    if isinstance(common.probe_set, KeyPool):
        keys, left = draw_keys(ledger, common.probe_set, seed, ws.config.fingerprint.keys_per_probe)
    schedule = make_schedule(seed, common.probe_set.size if keys is None else len(keys), len(common.x_val), decoys)
    budget = int(opt.budget if opt.budget is not None else 2 * len(schedule))
    return replace(_finish(ws, keyring, common, session=f"probe-{secrets.token_hex(8)}", endpoint=Endpoint.parse(url), fmt=fmt,
                           seed=seed, schedule=schedule, decoys_per_trigger=decoys, budget=budget, alpha=alpha, options=opt,
                           endpoint_hmac=url_hmac(keyring.master, url), keys=keys), pool_left=left,
                   futility_z=FUTILITY_Z if keys is not None else None)


def _resume_endpoint(keyring: Keyring, start: dict[str, Any], url: str | None, session: str) -> tuple[Endpoint, str | None]:
    recorded = start.get("endpoint_hmac")
    if url is None:
        if start.get("endpoint_has_credentials"):
            raise UsageError(f"probe session {session} probed a URL with credentials, which the ledger does not keep",
                             hint="pass the same URL again: tracer probe URL --resume " + session)
        if recorded is None and not start["endpoint"].lower().startswith(("http://", "https://")):
            raise UsageError(f"probe session {session} has no usable URL in the ledger", hint="pass the URL")
        url = start["endpoint"]
    ok = recorded == url_hmac(keyring.master, url) if recorded else start["endpoint"] == url
    if not ok:
        raise UsageError(f"probe session {session} probed {start['endpoint']}, not {Endpoint.parse(url).public}",
                         hint="pass the session's URL, or none")
    return Endpoint.parse(url), recorded


def resumed_plan(ws: Workspace, keyring: Keyring, ledger: Ledger, session: str, url: str | None,
                 fmt: WireFormat | FormatChoice | None, opt: ProbeOptions) -> SessionPlan:
    """The plan of an existing session, the command line merged in (see the module docstring)."""
    start = find_session(ledger, session)
    if start.get("mode") == RANK_MODE:
        raise UsageError(f"probe session {session} was a --rank-code read, which is not resumed",
                         hint="it sent no key: run `tracer probe URL --rank-code` again")
    endpoint, recorded_hmac = _resume_endpoint(keyring, start, url, session)
    if isinstance(fmt, WireFormat):
        if fmt.name != start["format"]["format"]:
            raise UsageError(f"probe session {session} used --format {start['format']['format']}, not {fmt.name}")
    else:
        fmt = resolve_format(fmt or FormatChoice(), ws.config.task, start["format"])
    alpha, decoys = float(start["alpha"]), int(start["decoys_per_trigger"])
    for flag, given, was in (("--alpha", opt.alpha, alpha), ("--decoys-per-trigger", opt.decoys_per_trigger, decoys),
                             ("--probe-set", opt.probe_set, start["probe_set"])):
        if given is not None and given != was:
            raise UsageError(f"probe session {session} was started with {flag} {was}, not {given}",
                             hint=f"drop {flag} to continue it, or start a new probe")
    common = _common(ws, keyring, ledger, start["probe_set"], decoys)
    keys = [int(k) for k in start["keys"]] if "keys" in start else None
    left = pool_usage(ledger, common.probe_set.id, common.probe_set.size, ws.config.fingerprint.keys_per_probe)[0] if isinstance(common.probe_set, KeyPool) else None
    plan = _finish(ws, keyring, common, keys=keys, session=session, endpoint=endpoint, fmt=fmt, seed=bytes.fromhex(start["schedule_seed"]),
                   schedule=[(k, int(i)) for k, i in start["schedule"]], decoys_per_trigger=decoys,
                   budget=int(opt.budget if opt.budget is not None else start["budget"]), alpha=alpha, options=opt,
                   endpoint_hmac=recorded_hmac or url_hmac(keyring.master, endpoint.url))
    if plan.digest != start["schedule_sha256"]:
        raise TracerError(f"the inputs of probe session {session} changed since it started (validation data or keys differ)",
                          hint="resume from the same workspace and dataset, or start a new probe")
    if start["probe_set_digest"] != plan.probe_set.digest():
        raise TracerError(f"probe set {plan.probe_set.id} no longer matches session {session}")
    rule = start.get("futility") or {}
    return replace(plan, pool_left=left, futility_z=rule.get("z"), futility_base=int(rule.get("base", FUTILITY_BASE)))


# -- the journal, replayed -----------------------------------------------------------------------


@dataclass
class JournalState:
    """What happened so far in a session: answers, failures, requests sent, whether the set was revealed."""

    answered: dict[int, int] = field(default_factory=dict)  # schedule index -> class (first answer)
    failed: set[int] = field(default_factory=set)
    sent: set[int] = field(default_factory=set)  # schedule indices ever sent
    used: int = 0  # HTTP requests ever sent in this session (charged before going out)
    revealed: bool = False
    finished: bool = False  # a probe-result exists

    @classmethod
    def replay(cls, entries: dict[str, list[dict[str, Any]]]) -> JournalState:
        """Rebuild the state from :meth:`Ledger.session_journal` (payloads by kind, in ledger order).

        Requests are counted by their ``probe-sent`` entries (journaled before
        sending, so a killed run's in-flight requests count); answers and
        failures journaled before those entries existed count their ``requests``.
        """
        st = cls()
        for p in entries.get("probe-sent", []):
            st.used += 1
            st.sent.add(int(p["idx"]))
        for kind in ("probe-query", "probe-failed"):
            for p in entries.get(kind, []):
                idx = int(p["idx"])
                st.sent.add(idx)
                if not p.get("sends_journaled"):
                    st.used += int(p.get("requests", 1))
                if kind == "probe-failed":
                    st.failed.add(idx)
                elif idx not in st.answered:
                    st.answered[idx] = int(p["answer"])
        st.revealed = bool(entries.get("probe-set-revealed"))
        st.finished = bool(entries.get("probe-result"))
        return st
