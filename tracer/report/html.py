"""The identification report: one self-contained HTML page for a non-engineer, and its signed evidence.

:func:`write_report` gathers what the page needs from the ledger (the named
customers' issuance records, the record of this identification), checks their
signatures with the workspace's public key, writes the signed evidence file
(:mod:`.evidence`) and then the page, both atomically.

The page has no script, no external stylesheet, font or image: the shared page shell
(:mod:`._page`: inline CSS, a Content-Security-Policy that forbids loading anything),
inline SVG charts (:mod:`.charts`). Every piece of text is escaped. It contains no
secret: no master secret, no codeword, no probe input.

The page describes the test that actually decided (:func:`decision_of`): the fixed-size
exact binomial test with Holm's correction for a model file, or the anytime-valid
e-process with Bonferroni at N / alpha for a probed service.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import __version__
from .._files import atomic_write_bytes, ensure_dir
from ..errors import LedgerError, TracerError
from ..fingerprint.keysets import is_pool, set_style
from ..fingerprint.stats import binomial_tails
from ..identify.result import EPROCESS_RULE, HOLM_RULE, RANK_MODE, Candidate, IdentificationResult
from ..keys.keyring import Keyring, load_public_key
from ..ledger.entries import Entry, utc_now
from ..workspace import Workspace
from . import charts
from ._page import escape, format_alpha, format_p, kv_table, num, odds_text, page, plain_count
from .evidence import EvidenceCheck, _check_entry, build_evidence, key_fingerprint, safe_extra

__all__ = ["write_report", "render_html", "evidence_path_for", "ReportData", "Decision", "decision_of"]

MAX_TABLE_ROWS = 20
MAX_STRENGTH_ROWS = 10


def evidence_path_for(html_path: Path) -> Path:
    """``report.html`` -> ``report.evidence.json`` (same folder, same stem)."""
    html_path = Path(html_path)
    return html_path.with_name(html_path.stem + ".evidence.json")


@dataclass
class CheckedEntry:
    entry: Entry
    valid: bool
    message: str


@dataclass
class ReportData:
    """Everything the page shows, gathered and checked beforehand (rendering is pure)."""

    result: IdentificationResult
    created: str
    issuances: list[CheckedEntry]
    identification: CheckedEntry | None
    ledger_status: tuple[bool, str]
    key_sha256: str
    evidence_name: str
    evidence_sha256: str


def _check(entry: Entry, key) -> CheckedEntry:
    c = EvidenceCheck()
    ok = _check_entry(entry.to_json(), key, "this record", c) is not None
    msg = "valid: the content matches its hash and it is signed by this workspace's key" if ok else c.failed[0]
    return CheckedEntry(entry, ok, msg)


def write_report(ws: Workspace, keyring: Keyring, result: IdentificationResult, html_path: Path) -> tuple[Path, Path]:
    """Write the HTML report at ``html_path`` and the signed evidence beside it; return both paths.

    Works for a model file (``tracer identify``), an API (``tracer probe``: ``result.extra`` may hold
    ``endpoint``, ``session``, ``trigger_queries``) and an evaluation run.
    """
    html_path = Path(html_path)
    evidence_path = evidence_path_for(html_path)
    try:
        ensure_dir(html_path.parent)
    except OSError as exc:
        raise TracerError(f"cannot create the report folder {html_path.parent}: {exc.strerror}") from exc
    try:
        public_key = load_public_key(ws.public_key_pem())
    except TracerError:
        public_key = keyring.public_key
    if public_key != keyring.public_key:
        raise TracerError("the workspace's public key file does not match its signing key (tampered?)")

    with ws.ledger() as ledger:
        issuances: list[Entry] = []
        for cid in result.customers:
            issuances.extend(ledger.issuances(cid))
        ident = ledger.get(result.ledger_entry) if result.ledger_entry is not None else None
        try:
            count, head = ledger.verify(public_key)
            ledger_status = (True, f"The whole ledger ({count} entries, head {head[:16]}…) was verified intact while this report was made: "
                                   "every entry's hash link and signature checked.")
        except LedgerError as exc:
            ledger_status = (False, f"The ledger did NOT verify while this report was made: {exc.message}")

    created = utc_now()
    evidence = build_evidence(result, issuances=issuances, identification_entry=ident,
                              signing_key=keyring.signing_key, created=created)
    data = (json.dumps(evidence, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        atomic_write_bytes(evidence_path, data)
    except OSError as exc:
        raise TracerError(f"cannot write evidence {evidence_path}: {exc.strerror}") from exc

    report = ReportData(
        result=result,
        created=created,
        issuances=[_check(e, public_key) for e in issuances],
        identification=_check(ident, public_key) if ident is not None else None,
        ledger_status=ledger_status,
        key_sha256=key_fingerprint(public_key),
        evidence_name=evidence_path.name,
        evidence_sha256=hashlib.sha256(data).hexdigest(),
    )
    page = render_html(report)
    try:
        atomic_write_bytes(html_path, page.encode("utf-8"))
    except OSError as exc:
        raise TracerError(f"cannot write report {html_path}: {exc.strerror}") from exc
    return html_path, evidence_path


# -- the decision rule -----------------------------------------------------------------------------

HOLM, EPROCESS = HOLM_RULE, EPROCESS_RULE


@dataclass(frozen=True)
class Decision:
    """The test that decided, as the page must describe it."""

    rule: str  # HOLM or EPROCESS
    family_size: int  # customers the correction runs over
    alpha: float
    threshold: float | None  # EPROCESS: the e-value a customer must reach (family_size / alpha)

    @property
    def sequential(self) -> bool:
        return self.rule == EPROCESS

    @property
    def level(self) -> float:
        """The p-value a customer must reach: alpha / N (Holm's strictest step; the whole Bonferroni rule)."""
        return self.alpha / max(self.family_size, 1)


def decision_of(r: IdentificationResult) -> Decision:
    """The rule and family behind ``r``, as the result records them."""
    if r.decision_rule == EPROCESS:
        threshold = r.threshold if r.threshold is not None else r.family_size / r.alpha
        return Decision(EPROCESS, r.family_size, r.alpha, float(threshold))
    return Decision(HOLM, r.family_size or len(r.candidates), r.alpha, None)


def rank_only(r: IdentificationResult) -> bool:
    """A `tracer probe --rank-code` read: the rank code was the only channel, and no secret probe was sent."""
    return r.extra.get("mode") == RANK_MODE


def _tested(r: IdentificationResult) -> list[Candidate]:
    """Customers the suspect was actually scored against (a probe skips copies without its probe set; a rank-code read, copies without the code)."""
    if rank_only(r):
        return [c for c in r.candidates if c.rank_pairs is not None]
    return [c for c in r.candidates if c.trials > 0]


def _untested(r: IdentificationResult) -> list[Candidate]:
    tested = {c.customer for c in _tested(r)}
    return [c for c in r.candidates if c.customer not in tested]


def _e_threshold_count(t: int, num_classes: int, threshold: float) -> int | None:
    """Smallest match count k out of t whose e-value reaches ``threshold`` (None: not even t of t)."""
    import numpy as np

    from ..probing.sequential import mixture_log_e

    ks = np.arange(t + 1)
    reached = mixture_log_e(ks, np.full(t + 1, t), num_classes) >= math.log(threshold) - 1e-12
    return int(ks[reached][0]) if reached.any() else None


# -- rendering -------------------------------------------------------------------------------------

_e = escape


def _date(iso: str) -> str:
    """'22 November 2026' from an ISO-8601 UTC time (the input itself if unparseable)."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%-d %B %Y")
    except ValueError:
        return iso


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%-d %B %Y, %H:%M:%S UTC")
    except ValueError:
        return iso


def _p(c: Candidate) -> str:
    return num(format_p(c.p_value, c.log10_p))


def _suspect(result: IdentificationResult, extra: dict[str, Any]) -> tuple[str, str, str]:
    """(subject phrase as HTML, verb phrase for a match, short kind) of the thing identified."""
    if extra.get("endpoint"):
        return (f"The prediction service at <code>{_e(extra['endpoint'])}</code>",
                "is serving a model derived from", "service")
    if result.model_sha256:
        return (f"The suspect model file (sha256 <span class=\"hash\">{_e(result.model_sha256)}</span>)",
                "was derived from", "file")
    subject = extra.get("subject") or extra.get("attack") or extra.get("model")
    if isinstance(subject, str) and subject:
        return f"The suspect model ({_e(subject)})", "was derived from", "model"
    return "The suspect model", "was derived from", "model"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _copy_phrase(c: Candidate, entries: list[Entry], suspect_sha: str | None) -> str:
    dates = [e for e in entries if e.payload.get("customer_id") == c.customer]
    exact = [e for e in dates if suspect_sha and e.payload.get("model_sha256") == suspect_sha]
    if exact:
        dates = exact
    who = f"{_e(c.display_name)} (customer <code>{_e(c.customer)}</code>)"
    if not dates:
        return f"the copy issued to {who}"
    when = " or ".join(_e(_date(e.time)) for e in dates)
    return f"the copy issued to {who} on {when}"


def _named_line(c: Candidate, r: IdentificationResult, dec: Decision) -> str:
    """One named customer's evidence in a sentence, worded for the test that decided."""
    if rank_only(r):
        return (f'<p class="small">{_e(c.display_name)}: {_rank_sentence(c, r)} No secret probe was sent: this is the whole '
                f"evidence (p = {_p(c)}).</p>")
    head = (f'<p class="small">{_e(c.display_name)}: the suspect gave that customer\'s secret answer on '
            f"<strong>{c.matches} of {c.trials}</strong> secret probes; a model not derived from its copy would "
            f"get {plain_count(c.trials / r.choices)} by chance. ")
    if dec.sequential:
        assert dec.threshold is not None  # the e-process always has one
        return head + (f"Its e-value (the evidence against chance, which starts at 1) reached "
                       f"{num(charts.format_e(-c.log10_p))}, at or above the naming threshold of {num(charts.format_e(math.log10(dec.threshold)))}. "
                       f"A model unrelated to its copy reaches that much evidence, at any point of a probe, with a chance of at most "
                       f"{_e(odds_text(c.p_value, c.log10_p))} (p = {_p(c)}).</p>")
    if c.rank_pairs is not None and c.key_log10_p is not None and c.rank_log10_p is not None:
        return head + (f"Matching {c.matches} or more by coincidence has a chance of {_e(_odds(c.key_log10_p))}. "
                       f"{_rank_sentence(c, r)} Together (twice the smaller of the two chances, so that looking at two "
                       f"fingerprints does not double the risk of a wrong name): {_e(odds_text(c.p_value, c.log10_p))} "
                       f"(p = {_p(c)}).</p>")
    return head + (f"Matching {c.matches} or more by coincidence has a chance of "
                   f"{_e(odds_text(c.p_value, c.log10_p))} (p = {_p(c)}).</p>")


def _odds(log10_p: float) -> str:
    return odds_text(10.0**log10_p, log10_p)


def _rank_sentence(c: Candidate, r: IdentificationResult) -> str:
    """The rank code's evidence for one customer, in words."""
    rc = r.extra.get("rank_code") or {}
    return (f"Its scores on {num(rc.get('queries', 0))} ordinary inputs of the vendor's also rank the wrong answers as that "
            f"customer's secret ranking does on <strong>{c.rank_concordant} of {c.rank_pairs}</strong> pairs, where an unrelated "
            f"model agrees on {plain_count((c.rank_pairs or 0) / 2)} on average; that much agreement by coincidence has a chance of "
            f"{_e(_odds(c.rank_log10_p or 0.0))}.")


def _verdict_match(d: ReportData, dec: Decision, subject: str, verb: str, kind: str) -> str:
    r = d.result
    entries = [ci.entry for ci in d.issuances]
    named = [c for c in r.candidates if c.named]
    copies = _join([_copy_phrase(c, entries, r.model_sha256) for c in named])
    lines = [f"<p><strong>{subject} {verb} {copies}.</strong></p>"] + [_named_line(c, r, dec) for c in named]
    if kind == "file":
        if any(ci.entry.payload.get("model_sha256") == r.model_sha256 for ci in d.issuances):
            lines.append('<p class="small">The suspect file is byte-for-byte identical to the issued copy.</p>')
        else:
            lines.append('<p class="small">The suspect file is not byte-for-byte identical to any issued copy: it was changed '
                         "after issuance (for example fine-tuned, pruned, converted or quantized) but still carries the "
                         "customer's fingerprint.</p>")
    if len(named) > 1:
        lines.append('<p class="small">Several customers are named: the suspect carries the fingerprint of each of their '
                     "copies (for example a model averaged or merged from several copies).</p>")
    return '<section class="verdict match">' + "".join(lines) + "</section>"


def _verdict(d: ReportData, extra: dict[str, Any], dec: Decision) -> str:
    r = d.result
    subject, verb, kind = _suspect(r, extra)
    if r.matched:
        return _verdict_match(d, dec, subject, verb, kind)
    tested = _tested(r)
    who = (f"{dec.family_size} customers whose copies carry the probe set used" if dec.sequential
           else f"{len(tested)} customers whose copies carry a rank code" if rank_only(r) else f"{len(r.candidates)} issued customers")
    lines = [f"<p><strong>No issued customer can be named: {subject[0].lower() + subject[1:]} does not match any of the "
             f"{who}' secret fingerprints more than chance explains at the chosen error bound "
             f"(alpha = {num(format_alpha(r.alpha))}).</strong></p>"]
    if tested and rank_only(r):
        best = tested[0]
        lines.append(f'<p class="small">The closest customer, {_e(best.display_name)} (<code>{_e(best.customer)}</code>): '
                     f"{_rank_sentence(best, r)} (p = {_p(best)}).</p>")
    elif tested:
        best = tested[0]
        lines.append(f'<p class="small">The closest customer, {_e(best.display_name)} (<code>{_e(best.customer)}</code>), '
                     f"matched {best.matches} of {best.trials} secret probes; chance alone gives {plain_count(best.trials / r.choices)} "
                     f"(p = {_p(best)}).</p>")
    lines.append('<p class="small">This does not prove the suspect is unrelated to an issued copy; see '
                 "“What this method cannot detect” below.</p>")
    return '<section class="verdict">' + "".join(lines) + "</section>"


_STOPPED = {
    "named": "a customer's evidence reached the naming threshold",
    "futility": "no customer could reach the naming threshold any more, even if every remaining secret probe matched",
    "budget spent": "the query budget was used up before a decision",
    "schedule exhausted": "every secret probe of the set had been asked",
}


def _extra_rows(extra: dict[str, Any], dec: Decision) -> list[tuple[str, str]]:
    """The probe's own facts, each with a plain explanation (the rest of ``extra`` as plain rows)."""
    explained: dict[str, tuple[str, Any]] = {
        "trigger_queries": ("Of which secret probes", lambda v: f"{num(v)}"),
        "decoy_queries": ("Of which decoys", lambda v: f"{num(v)}<span class=explain>ordinary inputs mixed in among the secret "
                          "probes so that the service cannot tell them apart; they are never scored</span>"),
        "decoy_accuracy": ("Decoy accuracy", lambda v: f"{num(f'{100 * float(v):.0f}%')}<span class=explain>the share of decoys "
                           "the service answered correctly: it shows the service really runs a model for this task</span>"),
        "failed_queries": ("Questions that failed", lambda v: f"{num(v)}<span class=explain>requests the service did not "
                           "answer, even after retrying; nothing is concluded from them</span>"),
        "budget": ("Query budget", lambda v: f"{num(v)}<span class=explain>the most requests this probe was allowed to send "
                   "to the service</span>"),
        "stopped": ("Why the probe stopped", lambda v: f"{_e(v)}<span class=explain>{_e(_STOPPED.get(str(v), ''))}</span>"),
        "endpoint_hmac": ("Endpoint fingerprint", lambda v: f"<span class=hash>{_e(v)}</span><span class=explain>a keyed hash "
                          "(HMAC-SHA256) of the full address probed, credentials included: the vendor can prove which "
                          "endpoint it was without the address's secrets ever being written down</span>"),
        "format": ("Wire format", lambda v: f"<code>{_e(v)}</code><span class=explain>how the questions were encoded for "
                   "the service's interface</span>"),
    }
    if dec.sequential:
        explained["family_size"] = ("Customers tested (family size)", lambda v: f"{num(v)}<span class=explain>the customers "
                                    "whose copies carry the probe set used; the error bound is shared among them</span>")
        explained["threshold_e_value"] = ("Naming threshold (e-value)", lambda v: f"{num(charts.format_e(math.log10(float(v))))}"
                                          f"<span class=explain>a customer is named once its evidence reaches family size / "
                                          f"alpha = {num(dec.family_size)} / {num(format_alpha(dec.alpha))}</span>")
    if dec.sequential:  # the decision's own figures, from the result's fields (older results carried them in extra)
        extra = {**extra, "family_size": dec.family_size, "threshold_e_value": dec.threshold}
    rows = []
    for key, value in extra.items():
        if key in ("endpoint", "session", "model_path", "subject") or isinstance(value, (dict, list)) or value is None:
            continue
        if key in explained:
            label, fmt = explained[key]
            rows.append((label, fmt(value)))
        elif key not in ("family_size", "threshold_e_value"):
            rows.append((_e(key.replace("_", " ").capitalize()), _e(value)))
    return rows


def _facts(d: ReportData, extra: dict[str, Any], dec: Decision) -> str:
    r = d.result
    rows: list[tuple[str, str]] = []
    if extra.get("endpoint"):
        rows.append(("Suspect prediction service", f"<code>{_e(extra['endpoint'])}</code>"))
        if extra.get("session"):
            rows.append(("Probe session", f"<code>{_e(extra['session'])}</code>"))
    if r.model_sha256:
        rows.append(("Suspect file SHA-256", f'<span class="hash">{_e(r.model_sha256)}</span>'))
    if isinstance(extra.get("model_path"), str):
        rows.append(("Suspect file name", f"<code>{_e(Path(extra['model_path']).name)}</code>"))
    rows.append(("Verdict", "match: " + _e(", ".join(r.customers)) if r.matched else "no match"))
    rows.append(("Questions sent to the suspect", num(f"{r.queries:,}")))
    counts = ("trigger_queries", "decoy_queries")
    if rank_only(r):
        rows.append(("Ordinary inputs sent", f"{num(extra.get('decoy_queries', 0))}<span class=explain>the vendor's own validation "
                     "inputs, nothing else: no secret probe was sent, so a service that filters unusual questions had nothing to "
                     "single out</span>"))
        rows.append(("Probe sets used", "none: the fingerprint was read from the service's scores (rank code)"))
    else:
        rows += _extra_rows({k: extra[k] for k in counts if k in extra}, dec)
        rows.append(("Probe sets used", _e(", ".join(f"{p} ({set_style(p)} key pool)" if is_pool(p) else p for p in r.probe_sets) or "none")))
    untested = _untested(r)
    checked = num(f"{len(r.candidates) - len(untested):,}")
    if untested:
        why = "carry no rank code" if rank_only(r) else "do not carry the probe set used"
        checked += f"<span class=explain>{len(untested):,} more issued customer(s) were not tested: their copies {why}</span>"
    rows.append(("Issued customers checked", checked))
    rows.append(("Possible answers per question (C)", num(r.choices)))
    rows.append(("Error bound alpha", f"{num(format_alpha(r.alpha))}: the chance that tracer names any innocent customer is at most alpha"))
    rows += _extra_rows({k: v for k, v in extra.items() if k not in counts and not (rank_only(r) and k in ("mode", "natural_answers"))}, dec)
    rows.append(("Report made", _e(_when(d.created))))
    return "<h2>The suspect</h2>" + kv_table(rows)


def _null_figure(r: IdentificationResult, dec: Decision, n: int, group: list[Candidate]) -> str:
    """One null chart (customers scored on ``n`` probes) and its caption, with this rule's threshold."""
    tails = binomial_tails(n, r.choices)
    if dec.sequential:
        m_star = _e_threshold_count(n, r.choices, dec.threshold or dec.family_size / r.alpha)
        label = "e-value reaches the threshold"
    else:
        m_star = charts.threshold_count(list(tails), dec.level)
        label = "named from here on"
    svg = charts.null_chart(n, r.choices, group, threshold=m_star, threshold_label=label)
    if m_star is None:
        thr = (f"With only {n} probes no customer could be named at alpha = {format_alpha(r.alpha)}: even {n} matches out of {n} "
               "would not be unlikely enough.")
    elif dec.sequential:
        thr = (f"The red dashed line marks {m_star} matches: after these {n} secret probes, a customer with {m_star} or more "
               f"has an e-value of at least {charts.format_e(math.log10(dec.threshold or 1))} (family size {dec.family_size} / alpha) "
               "and is named. The probe stopped as soon as one customer got there.")
    else:
        thr = (f"The red dashed line marks {m_star} matches: a customer with {m_star} or more is named for certain "
               f"(p ≤ alpha / {dec.family_size:,} customers). Holm's procedure may also name customers a little to its left once "
               "the stronger ones are named.")
    return (f"<figure>{svg}<figcaption>The grey bars show how many of the {n} secret probes a model that was "
            f"<em>not</em> derived from a given customer's copy would match, by pure chance: each answer agrees with "
            f"probability 1 in {r.choices}, so chance alone gives {plain_count(n / r.choices)}, and more than "
            f"{_q(tails, 1e-3)} almost never happen. Below the axis, every tested customer "
            f"({len(group):,} here) is placed at its actual match count (one dot each, or dark bars counting customers when "
            f"there are many); named customers are red. {thr}</figcaption></figure>")


def _charts(d: ReportData, dec: Decision) -> str:
    r = d.result
    tested = _tested(r)
    head = "<h2>Every customer against chance</h2>"
    if not tested:
        return head + "<p>No customer was scored against the suspect: nothing to compare.</p>"
    by_trials: dict[int, list[Candidate]] = {}
    for c in tested if not rank_only(r) else []:  # a rank-code read has no probe matches to draw against the binomial
        by_trials.setdefault(c.trials, []).append(c)
    parts = [_null_figure(r, dec, n, group) for n, group in sorted(by_trials.items(), key=lambda kv: -len(kv[1]))]
    top = tested[:MAX_STRENGTH_ROWS]
    if dec.sequential:
        thr = dec.threshold or dec.family_size / r.alpha
        svg = charts.strength_chart(top, threshold_log10=math.log10(thr), e_scale=True,
                                    threshold_label=f"naming threshold: e-value {charts.format_e(math.log10(thr))} = {dec.family_size} / alpha")
        cap = (f"The {len(top)} closest customers: for each, the largest e-value its match count reached during the probe. "
               "An e-value is a running measure of evidence that starts at 1 and stays small, whatever the service does, for "
               f"a customer whose copy it does not use. A customer is named once it crosses the dashed line, at {dec.family_size} "
               f"customers / alpha (Bonferroni's correction over the {dec.family_size} customers tested).")
    else:
        svg = charts.strength_chart(top, threshold_log10=-math.log10(dec.level),
                                    threshold_label=f"naming threshold (alpha / {dec.family_size:,})")
        cap = (f"The {len(top)} closest customers: for each, the chance that a model unrelated to its copy would agree with it "
               "this often. A customer is named only when this chance is below the dashed line (the strictest step of Holm's "
               "procedure), or below a slightly looser line once the stronger customers were named.")
    return head + "".join(parts) + f"<figure>{svg}<figcaption>{cap}</figcaption></figure>"


def _q(tails, level: float) -> int:
    """Smallest m with P[X >= m] <= level, minus one (the 'almost never more than' count)."""
    for m, t in enumerate(tails):
        if t <= level:
            return max(m - 1, 0)
    return len(tails) - 2


def _scores(d: ReportData) -> str:
    r = d.result
    tested = _tested(r)
    if not tested:
        return ""
    # best first: every named customer, then the closest others
    n_named = sum(1 for c in tested if c.named)
    shown = tested[: max(MAX_TABLE_ROWS, n_named)]
    rows = []
    ranks = rank_only(r)  # a rank-code read: pairs of wrong answers agreeing, not probe matches
    for i, c in enumerate(shown, start=1):
        cls = ' class="named"' if c.named else ""
        agree, chance = ((f"{c.rank_concordant} of {c.rank_pairs}", (c.rank_pairs or 0) / 2) if ranks
                         else (f"{c.matches} of {c.trials}", c.trials / r.choices))
        rows.append(
            f"<tr{cls}><td class=num>{i}</td><td><code>{_e(c.customer)}</code></td><td>{_e(c.display_name)}</td>"
            f"<td class=num>{agree}</td><td class=num>{chance:.1f}</td>"
            f"<td class=num>{_e(format_p(c.p_value, c.log10_p))}</td><td>{'named' if c.named else 'not named'}</td></tr>"
        )
    more = len(tested) - len(shown)
    note = f'<p class="note">{more:,} more customers, all less likely, are in the evidence file.</p>' if more > 0 else ""
    untested = _untested(r)
    if untested:
        names = ", ".join(_e(c.display_name) for c in untested[:10]) + (" and others" if len(untested) > 10 else "")
        why = "carry no rank code" if ranks else "do not carry the probe set used"
        note += (f'<p class="note">Not tested ({len(untested):,}): {names}. Their copies {why}, '
                 "so the suspect's answers say nothing about them either way.</p>")
    return ('<h2>Scores of the customers</h2><div class="scroll"><table class="grid"><tr><th>Rank</th><th>Customer</th><th>Name</th>'
            f"<th>{'Pairs agreeing' if ranks else 'Matches'}</th><th>Expected by chance</th><th>p-value</th><th>Decision</th></tr>"
            + "".join(rows) + "</table></div>" + note)
def _sig(ci: CheckedEntry) -> str:
    cls = "ok" if ci.valid else "bad"
    mark = "✔" if ci.valid else "✘ INVALID:"
    return f'<span class="{cls}">{mark} {_e(ci.message)}</span>'


def _records(d: ReportData) -> str:
    r = d.result
    parts = ["<h2>The issuance record</h2>" if len(d.issuances) <= 1 else "<h2>The issuance records</h2>"]
    if not d.issuances:
        parts.append("<p>No customer was named, so no issuance record is attached.</p>" if not r.matched else
                     '<p class="bad">No issuance record was found in the ledger for the named customer.</p>')
    for ci in d.issuances:
        e, p = ci.entry, ci.entry.payload
        same = r.model_sha256 is not None and p.get("model_sha256") == r.model_sha256
        rows = [
            ("Customer", f"<code>{_e(p.get('customer_id', '?'))}</code>"),
            ("Display name", _e(p.get("display_name", ""))),
            ("Issued on", _e(_when(e.time))),
            ("Issued copy's SHA-256", f'<span class="hash">{_e(p.get("model_sha256", "?"))}</span>'
             + (' <span class="ok">(identical to the suspect file)</span>' if same else "")),
            ("Ledger entry number", str(e.seq)),
            ("Ledger entry hash", f'<span class="hash">{_e(e.hash)}</span>'),
            ("Signature check", _sig(ci)),
        ]
        if p.get("issuance_number", 1) != 1:
            rows.insert(3, ("Copy number", _e(p["issuance_number"])))
        if p.get("base_model_sha256"):
            rows.append(("Base model SHA-256", f'<span class="hash">{_e(p["base_model_sha256"])}</span>'))
        if p.get("trigger_commitment"):
            rows.append(("Commitment to the secret fingerprint", f'<span class="hash">{_e(p["trigger_commitment"])}</span>'))
        if isinstance(p.get("rank_code"), dict) and p["rank_code"].get("commitment"):
            rows.append(("Commitment to the secret ranking of wrong answers",
                         f'<span class="hash">{_e(p["rank_code"]["commitment"])}</span>'))
        parts.append(f"<h3>{_e(p.get('display_name', p.get('customer_id', '')))}, {_e(_date(e.time))}</h3>"
                     f'<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    parts.append("<h3>This identification</h3>")
    if d.identification is None:
        parts.append("<p>This identification was not recorded in the ledger.</p>")
    else:
        ci = d.identification
        rows = [("Recorded on", _e(_when(ci.entry.time))), ("Ledger entry number", str(ci.entry.seq)),
                ("Ledger entry hash", f'<span class="hash">{_e(ci.entry.hash)}</span>'), ("Signature check", _sig(ci))]
        parts.append('<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    ok, text = d.ledger_status
    parts.append(f'<p class="{"ok" if ok else "bad"}">{_e(text)}</p>')
    return "".join(parts)


def _method_common(c: int, *, natural: bool = False) -> str:
    blends = (f"""<p>Each probe is a blend of two of the vendor's own inputs of different classes, so it looks like an ordinary
question; its {c} possible secret answers are the classes of the two inputs blended, fixed with the probe before any copy existed.
Only the probes the suspect answered with one of those classes are counted (an answer outside them cannot match).</p>"""
              if natural else "")
    return f"""<h2>How the decision was made, in plain words</h2>
<p>Every copy of the model that the vendor issues is slightly different: it was trained to give a secret, customer-specific
answer to a set of secret test inputs (<em>probes</em>) that only the vendor can produce. For each probe and each customer, that
secret answer was drawn at random among the {c} possible answers. The suspect was asked the probes, and for every
issued customer we counted on how many probes the suspect gave that customer's secret answer.</p>{blends}
<h3 class="keep">The question asked for each customer</h3>
<p>The starting assumption (the <em>null hypothesis</em>) is: “the suspect was <strong>not</strong> derived from this customer's
copy”. If that is true, the suspect knows nothing about the customer's secret answers. Because those answers were drawn at random,
the suspect then agrees with each of them with probability exactly 1 in {c}, independently of how the suspect was built, so
its match count follows the binomial distribution shown by the grey bars.</p>"""


def _method_holm(r: IdentificationResult, dec: Decision, *, what: str = "matching at least as many probes") -> str:
    n = dec.family_size
    return f"""<p>The <em>p-value</em> is the exact chance of {what} as observed under that assumption.
A tiny p-value means the assumption is not credible: the suspect must descend from that customer's copy.</p>
<h3 class="keep">What alpha means</h3>
<p>A customer is named only when the evidence clears a bar chosen so that <strong>the chance that tracer names any innocent
customer is at most alpha</strong> (here {num(format_alpha(r.alpha))}), however many customers were checked ({n:,} here). To achieve this,
the customers are sorted by p-value (Holm's correction): the smallest is compared with alpha / {n:,}, the next with
alpha / {max(n - 1, 1):,}, and so on, stopping at the first customer that does not clear its bar. Several customers can be
named, for example when a model was merged from several copies.</p>"""


def _method_eprocess(r: IdentificationResult, dec: Decision) -> str:
    n = dec.family_size
    thr = charts.format_e(math.log10(dec.threshold or n / r.alpha))
    return f"""<h3 class="keep">A test that may stop at any moment</h3>
<p>A prediction service is asked one secret probe at a time, and the probe stops as soon as the answer is clear. A fixed-size
test would not stay exact under such early stopping, so the service was judged by a <em>sequential</em> test. For each customer
it keeps an <em>e-value</em>: a running measure of evidence that starts at 1, grows with every answer that matches the customer's
secret answer and shrinks with every answer that does not. While the service is not derived from that customer's copy, the
chance that this e-value <strong>ever</strong> reaches a level L, however long the probe runs and whenever it stops, is at most
1 / L (Ville's inequality). The reported p-value, 1 / (largest e-value reached), keeps that meaning.</p>
<h3 class="keep">What alpha means</h3>
<p>A customer is named only when the evidence clears a bar chosen so that <strong>the chance that tracer names any innocent
customer is at most alpha</strong> (here {num(format_alpha(r.alpha))}). Only the {n:,} customers whose copies carry the probe set used
can be tested; the error bound is shared equally among them (Bonferroni's correction): a customer is named once its e-value
reaches {n:,} / alpha = {num(thr)}, the dashed line in the charts. Customers whose copies do not carry that probe set are not
tested and are never named.</p>"""


def _method_limits() -> str:
    return """<h3 class="keep">What the method relies on</h3>
<ul>
<li>The vendor's master secret stayed secret, so nobody else could know or compute the customers' secret answers.</li>
<li>Each issued copy was recorded in the signed ledger when it was issued, together with a commitment to its secret fingerprint,
so the fingerprint was fixed before the suspect was found and was not chosen to fit it.</li>
<li>The suspect's answers were recorded as it gave them; the calculation itself needs no assumption about how the suspect was
built, trained or modified.</li>
</ul>
<h3 class="keep">What this method cannot detect</h3>
<ul>
<li>A model trained independently, or rebuilt from scratch (for example by imitating a copy's answers on ordinary inputs only),
may carry no fingerprint; heavy retraining can also erase it. “No match” therefore means “not proven”, never “proven unrelated”.</li>
<li>A leak of the vendor's own original model (not a customer's copy) cannot be attributed to any customer.</li>
<li>The method identifies whose copy the suspect descends from, not who leaked it: a copy stolen from a customer is still that
customer's copy.</li>
</ul>"""


def _method_rank(r: IdentificationResult) -> str:
    """The rank code, where it was read: what it is, its null, and how it is combined with the probes."""
    rc = r.extra.get("rank_code") or {}
    if not rc.get("read"):
        return ""
    return f"""<h3 class="keep">A second fingerprint, in the suspect's scores</h3>
<p>Each copy was also trained to spread a small part of its confidence over the wrong answers in a secret, customer-specific
order: for inputs of each class, a ranking of the other classes drawn at random for that customer. The suspect's scores on
{num(rc.get("queries", 0))} of the vendor's ordinary inputs were read, and for each class we counted the pairs of wrong answers
it ranks the way the customer's secret ranking does ({num(rc.get("pairs", 0))} pairs in all). A model not derived from the
customer's copy knows nothing of that ranking, so it agrees on each class as a random ranking would; the exact chance of
agreeing on as many pairs as observed is computed from that. This fingerprint survives what the probes do not: a model
trained to imitate a copy's scores inherits it. The two chances of one customer are combined by taking twice the smaller one
(Bonferroni's rule for two tests), and that combined p-value is what the correction below uses.</p>"""


def _method_rank_only(r: IdentificationResult) -> str:
    """How a rank-code read decides: the code alone, from ordinary inputs, no probe sent."""
    rc = r.extra.get("rank_code") or {}
    return f"""<h2>How the decision was made, in plain words</h2>
<p>Every copy of the model that the vendor issues is slightly different: besides its answers to secret test inputs, it was
trained to spread a small part of its confidence over the wrong answers in a secret, customer-specific order (for inputs of
each class, a ranking of the other classes, drawn at random for that customer). This check sent the service <strong>no secret
input at all</strong>: only {num(rc.get("queries", 0))} of the vendor's ordinary inputs, the kind of questions any user asks. From
the scores the service returned, for each class we counted the pairs of wrong answers it ranks the way a customer's secret
ranking does ({num(rc.get("pairs", 0))} pairs in all).</p>
<h3 class="keep">The question asked for each customer</h3>
<p>The starting assumption (the <em>null hypothesis</em>) is: “the service does <strong>not</strong> run a model derived from this
customer's copy”. If that is true, it knows nothing of the customer's secret ranking, so it agrees with it on each class as a
random ranking would, and the exact chance of agreeing on at least as many pairs as observed (the <em>p-value</em>) is computed
from that. This fingerprint survives what the secret inputs do not: a model trained to imitate a copy's scores inherits it.</p>"""


def _method(d: ReportData, dec: Decision) -> str:
    r = d.result
    if rank_only(r):
        return _method_rank_only(r) + _method_holm(r, dec, what="agreeing on at least as many pairs") + _method_limits()
    rule = _method_eprocess(r, dec) if dec.sequential else _method_holm(r, dec)
    return (_method_common(r.choices, natural=any(is_pool(p) for p in r.probe_sets)) + _method_rank(r) + rule
            + _method_limits())


_GLOSSARY_COMMON = [
    ("Null hypothesis (H0)", "the assumption under test for one customer: “the suspect was not derived from this customer's copy”."),
    ("Codeword", "a customer's secret answers to the probes, drawn at random from the master secret; never shown in a report."),
    ("Family-wise error rate (FWER)", "the chance of naming at least one innocent customer among all those tested; it is kept "
     "at or below alpha."),
    ("Family size", "the number of customers the error bound alpha is shared among."),
]
_GLOSSARY_HOLM = [("Holm's step-down procedure", "compare the smallest p-value with alpha / N, the next with alpha / (N - 1), "
                   "and so on; it controls the family-wise error rate at alpha for any dependence between customers.")]
_GLOSSARY_EPROCESS = [
    ("E-value, e-process", "a running measure of evidence (here the average of likelihood ratios over a grid of possible match "
     "rates); under H0 it is a test martingale with mean 1, so by Ville's inequality it ever reaches L with chance at most 1 / L."),
    ("Threshold e-value", "family size / alpha: the e-value a customer must reach to be named (Bonferroni's correction)."),
    ("Budget", "the most requests the probe may send to the service."),
    ("Decoys, decoy accuracy", "ordinary inputs with known answers, mixed in at random so that the service cannot single out the "
     "secret probes; the share answered correctly shows it is a working classifier for the task. They are never scored."),
]


def _appendix(r: IdentificationResult, dec: Decision) -> str:
    """Technical terms and the exact method string, for an expert reader."""
    terms = _GLOSSARY_COMMON + (_GLOSSARY_EPROCESS if dec.sequential else _GLOSSARY_HOLM)
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in terms)
    rule = ("anytime-valid e-process, Bonferroni over the customers whose copies carry the probe set" if dec.sequential
            else "exact tail of the rank code's concordant pairs, Holm's step-down over all issued customers" if rank_only(r)
            else "exact binomial tail, Holm's step-down over all issued customers")
    return (f'<h2>Technical appendix</h2><p>Decision rule: <code>{_e(dec.rule)}</code> '
            f"({_e(rule)}); family size {num(dec.family_size)}"
            + (f"; threshold e-value {num(charts.format_e(math.log10(dec.threshold)))}" if dec.threshold else "")
            + f'.</p><dl class="appendix">{items}</dl><p class="note">Method, as recorded: {_e(r.method)}.</p>')
def _verify(d: ReportData) -> str:
    name = d.evidence_name
    return f"""<h2>How to check this evidence independently</h2>
<p>The file <code>{_e(name)}</code> next to this report holds the complete result (every customer's score), the signed ledger
records of the issuance(s) and of this identification, and a digital signature (Ed25519) over all of it. Anyone can check that
none of it was changed since it was made, without any secret and without the vendor's workspace:</p>
<pre>{_e("# the vendor publishes its public key (once):")}
tracer keys export-public &gt; key.pem

{_e("# anyone, on any machine with tracer installed:")}
tracer evidence verify {_e(name)} --public-key key.pem</pre>
<p>The check passes only if the file is unchanged and every signature was made with the private key matching
<code>key.pem</code>. Use the public key obtained from the vendor directly, not one taken from the evidence file.</p>
<table class="kv">
<tr><th>Signing key fingerprint (SHA-256)</th><td><span class="hash">{_e(d.key_sha256)}</span></td></tr>
<tr><th>Evidence file SHA-256</th><td><span class="hash">{_e(d.evidence_sha256)}</span></td></tr>
</table>
<p class="note">The match counts themselves can only be recomputed by someone holding the vendor's master secret, for example
by re-running the identification before an independent expert.</p>"""


def render_html(d: ReportData) -> str:
    """The whole page (pure: no file or ledger access)."""
    # materialize the candidates once (identification may hand over a lazy table of 10,000 rows)
    d = replace(d, result=replace(d.result, candidates=list(d.result.candidates)))
    r = d.result
    extra = safe_extra(r.extra)
    dec = decision_of(r)
    intro = (f"<h1>Identification report</h1><p class=\"sub\">Made by tracer {_e(__version__)} on {_e(_when(d.created))}"
             + (f", ledger entry {r.ledger_entry}" if r.ledger_entry is not None else "") + ".</p>")
    body = [intro, _verdict(d, extra, dec), _facts(d, extra, dec), _charts(d, dec), _records(d), _scores(d), _method(d, dec),
            _verify(d), _appendix(r, dec)]
    rule = ("sequential e-process with Bonferroni" if dec.sequential else "rank-code test with Holm's correction" if rank_only(r)
            else "exact binomial test with Holm's correction")
    return page("tracer identification report", "".join(body), footer=f"Decided by the {_e(rule)}; details in the technical appendix.")
