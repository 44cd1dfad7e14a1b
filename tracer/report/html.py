"""The identification report: one self-contained HTML page for a non-engineer, and its signed evidence.

:func:`write_report` gathers what the page needs from the ledger (the named
customers' issuance records, the record of this identification), checks their
signatures with the workspace's public key, writes the signed evidence file
(:mod:`.evidence`) and then the page, both atomically.

The page has no script, no external stylesheet, font or image: inline CSS, inline
SVG charts (:mod:`.charts`), and a Content-Security-Policy that forbids loading
anything. Every piece of text goes through :func:`html.escape`. It contains no
secret: no master secret, no codeword, no probe input.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from .. import __version__
from .._files import atomic_write_bytes, ensure_dir
from ..errors import LedgerError, TracerError
from ..fingerprint.stats import binomial_tails
from ..identify.result import Candidate, IdentificationResult
from ..keys.keyring import Keyring, load_public_key
from ..ledger.entries import Entry, utc_now
from ..workspace import Workspace
from . import charts
from .evidence import EvidenceCheck, _check_entry, build_evidence, key_fingerprint, safe_extra

__all__ = ["write_report", "render_html", "evidence_path_for", "ReportData"]

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
        raise TracerError(f"cannot create the report folder {html_path.parent}: {exc.strerror}") from None
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
        raise TracerError(f"cannot write evidence {evidence_path}: {exc.strerror}") from None

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
        raise TracerError(f"cannot write report {html_path}: {exc.strerror}") from None
    return html_path, evidence_path


# -- rendering -------------------------------------------------------------------------------------

_CSS = """
:root{color-scheme:light}
body{margin:0;background:#f5f7fa;color:#1f2933;font:16px/1.55 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif}
main{max-width:900px;margin:0 auto;padding:24px 20px 48px;background:#fff}
h1{font-size:1.5em;margin:0 0 4px}
h2{font-size:1.2em;margin:2em 0 .5em;padding-bottom:.2em;border-bottom:1px solid #e3e7eb}
h3{font-size:1.02em;margin:1.2em 0 .3em}
.sub{color:#616e7c;margin:0 0 18px;font-size:.92em}
.verdict{border-left:6px solid #616e7c;background:#f0f2f5;padding:14px 18px;margin:16px 0;font-size:1.18em}
.verdict.match{border-color:#b3261e;background:#fbeeed}
.verdict p{margin:.3em 0}
.verdict .small{font-size:.78em;color:#3e4c59}
code,.hash{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.86em;overflow-wrap:anywhere;word-break:break-all}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em;font-size:.93em}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e7eb;vertical-align:top}
th{color:#3e4c59;font-weight:600;white-space:nowrap}
table.kv th{width:30%}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.named td{background:#fbeeed;font-weight:600}
.ok{color:#1e7b34;font-weight:600}
.bad{color:#b3261e;font-weight:700}
.note{color:#616e7c;font-size:.9em}
figure{margin:1em 0}
figcaption{color:#3e4c59;font-size:.9em;margin-top:.4em}
pre{background:#1f2933;color:#f5f7fa;padding:12px 14px;border-radius:4px;overflow-x:auto;font-size:.88em}
ul{padding-left:1.3em}
li{margin:.25em 0}
footer{margin-top:3em;color:#616e7c;font-size:.85em}
@media print{body{background:#fff}main{padding:0}pre{background:#fff;color:#000;border:1px solid #999}}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


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


def _verdict(d: ReportData, extra: dict[str, Any]) -> str:
    r = d.result
    subject, verb, kind = _suspect(r, extra)
    entries = [ci.entry for ci in d.issuances]
    named = [c for c in r.candidates if c.named]
    n_cust = len(r.candidates)
    if r.matched:
        copies = _join([_copy_phrase(c, entries, r.model_sha256) for c in named])
        lines = [f"<p><strong>{subject} {verb} {copies}.</strong></p>"]
        for c in named:
            expected = c.trials / r.num_classes
            lines.append(
                f'<p class="small">{_e(c.display_name)}: the suspect gave that customer\'s secret answer on '
                f"<strong>{c.matches} of {c.trials}</strong> secret probes; a model not derived from its copy would "
                f"match about {expected:.1f} by chance. Matching {c.matches} or more by coincidence has a chance of "
                f"{_e(charts.odds_text(c.p_value, c.log10_p))} (p = {_e(charts.format_p(c.p_value, c.log10_p))}).</p>"
            )
        if kind == "file":
            identical = [ci.entry for ci in d.issuances if ci.entry.payload.get("model_sha256") == r.model_sha256]
            if identical:
                lines.append('<p class="small">The suspect file is byte-for-byte identical to the issued copy.</p>')
            else:
                lines.append('<p class="small">The suspect file is not byte-for-byte identical to any issued copy: it was changed '
                             "after issuance (for example fine-tuned, pruned, converted or quantized) but still carries the "
                             "customer's fingerprint.</p>")
        if len(named) > 1:
            lines.append('<p class="small">Several customers are named: the suspect carries the fingerprint of each of their '
                         "copies (for example a model averaged or merged from several copies).</p>")
        return '<section class="verdict match">' + "".join(lines) + "</section>"
    best = r.candidates[0] if r.candidates else None
    lines = [f"<p><strong>No issued customer can be named: {subject[0].lower() + subject[1:]} does not match any of the "
             f"{n_cust} issued customers' secret fingerprints more than chance explains at the chosen error bound "
             f"(alpha = {_e(f'{r.alpha:g}')}).</strong></p>"]
    if best is not None:
        expected = best.trials / r.num_classes
        lines.append(f'<p class="small">The closest customer, {_e(best.display_name)} (<code>{_e(best.customer)}</code>), '
                     f"matched {best.matches} of {best.trials} secret probes, where about {expected:.1f} are expected by "
                     f"chance (p = {_e(charts.format_p(best.p_value, best.log10_p))}).</p>")
    lines.append('<p class="small">This does not prove the suspect is unrelated to an issued copy; see '
                 "“What this method cannot detect” below.</p>")
    return '<section class="verdict">' + "".join(lines) + "</section>"


def _facts(d: ReportData, extra: dict[str, Any]) -> str:
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
    rows.append(("Questions sent to the suspect", f"{r.queries:,}"))
    if extra.get("trigger_queries") is not None:
        rows.append(("Of which secret probes", _e(extra["trigger_queries"])))
    rows.append(("Probe sets used", _e(", ".join(r.probe_sets) or "none")))
    rows.append(("Issued customers checked", f"{len(r.candidates):,}"))
    rows.append(("Possible answers per question (C)", str(r.num_classes)))
    rows.append(("Error bound alpha", f"{_e(f'{r.alpha:g}')}: the chance that tracer names any innocent customer is at most alpha"))
    for key, value in extra.items():
        if key in ("endpoint", "session", "model_path", "trigger_queries", "subject") or isinstance(value, (dict, list)):
            continue
        rows.append((key.replace("_", " ").capitalize(), _e(value)))
    rows.append(("Report made", _e(_when(d.created))))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<h2>The suspect</h2><table class="kv">{body}</table>'


def _charts(d: ReportData) -> str:
    r = d.result
    n_cust = len(r.candidates)
    if not n_cust:
        return "<h2>Every customer against chance</h2><p>No customer has been issued a copy yet: nothing to compare.</p>"
    level = r.alpha / n_cust
    parts = ["<h2>Every customer against chance</h2>"]
    by_trials: dict[int, list[Candidate]] = {}
    for c in r.candidates:
        if c.trials > 0:
            by_trials.setdefault(c.trials, []).append(c)
    for n, group in sorted(by_trials.items(), key=lambda kv: -len(kv[1])):
        tails = binomial_tails(n, r.num_classes)
        m_star = charts.threshold_count(list(tails), level)
        svg = charts.null_chart(n, r.num_classes, group, threshold=m_star, threshold_label="named from here on")
        if m_star is None:
            thr = (f"With only {n} probes no customer could be named at alpha = {r.alpha:g}: even {n} matches out of {n} "
                   "would not be unlikely enough.")
        else:
            thr = (f"The red dashed line marks {m_star} matches: a customer with {m_star} or more is named for certain "
                   f"(p ≤ alpha / {n_cust:,} customers). Holm's procedure may also name customers a little to its left once "
                   "the stronger ones are named.")
        parts.append(
            f"<figure>{svg}<figcaption>The grey bars show how many of the {n} secret probes a model that was "
            f"<em>not</em> derived from a given customer's copy would match, by pure chance: each answer agrees with "
            f"probability 1 in {r.num_classes}, so about {n / r.num_classes:.1f} matches are expected and more than "
            f"{_q(tails, 1e-3)} almost never happen. Below the axis, every issued customer "
            f"({len(group):,} here) is placed at its actual match count (one dot each, or dark bars counting customers when "
            f"there are many); named customers are red dots. {thr}</figcaption></figure>"
        )
    top = r.candidates[:MAX_STRENGTH_ROWS]
    thr_log = -math.log10(level) if level > 0 else None
    svg = charts.strength_chart(top, threshold_log10=thr_log, threshold_label=f"naming threshold (alpha / {n_cust:,})")
    parts.append(f"<figure>{svg}<figcaption>The {len(top)} closest customers: for each, the chance that a model unrelated to "
                 "its copy would agree with it this often. A customer is named only when this chance is below the dashed "
                 "line (the strictest step of Holm's procedure), or below a slightly looser line once the stronger "
                 "customers were named.</figcaption></figure>")
    return "".join(parts)


def _q(tails, level: float) -> int:
    """Smallest m with P[X >= m] <= level, minus one (the 'almost never more than' count)."""
    for m, t in enumerate(tails):
        if t <= level:
            return max(m - 1, 0)
    return len(tails) - 2


def _scores(d: ReportData) -> str:
    r = d.result
    if not r.candidates:
        return ""
    # best first: every named customer, then the closest others
    n_named = sum(1 for c in r.candidates if c.named)
    shown = list(r.candidates[: max(MAX_TABLE_ROWS, n_named)])
    rows = []
    for i, c in enumerate(shown, start=1):
        cls = ' class="named"' if c.named else ""
        rows.append(
            f"<tr{cls}><td class=num>{i}</td><td><code>{_e(c.customer)}</code></td><td>{_e(c.display_name)}</td>"
            f"<td class=num>{c.matches} of {c.trials}</td><td class=num>{c.trials / r.num_classes:.1f}</td>"
            f"<td class=num>{_e(charts.format_p(c.p_value, c.log10_p))}</td><td>{'named' if c.named else 'not named'}</td></tr>"
        )
    more = len(r.candidates) - len(shown)
    note = f'<p class="note">{more:,} more customers, all less likely, are in the evidence file.</p>' if more > 0 else ""
    return ("<h2>Scores of the customers</h2><table><tr><th>Rank</th><th>Customer</th><th>Name</th><th>Matches</th>"
            "<th>Expected by chance</th><th>p-value</th><th>Decision</th></tr>" + "".join(rows) + "</table>" + note)


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


def _method(d: ReportData) -> str:
    r = d.result
    c = r.num_classes
    n_cust = len(r.candidates)
    return f"""<h2>How tracer decided, in plain words</h2>
<p>Every copy of the model that the vendor issues is slightly different: it was trained to give a secret, customer-specific
answer to a set of secret test inputs (<em>probes</em>) that only the vendor can produce. For each probe and each customer, that
secret answer was drawn at random among the {c} possible answers. tracer asked the suspect the probes and counted, for every
issued customer, on how many probes the suspect gave that customer's secret answer.</p>
<h3>The question asked for each customer</h3>
<p>The starting assumption (the <em>null hypothesis</em>) is: “the suspect was <strong>not</strong> derived from this customer's
copy”. If that is true, the suspect knows nothing about the customer's secret answers. Because those answers were drawn at random,
the suspect then agrees with each of them with probability exactly 1 in {c}, independently of how the suspect was built, so
its match count follows the binomial distribution shown by the grey bars. The <em>p-value</em> is the exact chance of
matching at least as many probes as observed under that assumption. A tiny p-value means the assumption is not credible: the
suspect must descend from that customer's copy.</p>
<h3>What alpha means</h3>
<p>tracer names a customer only when the evidence clears a bar chosen so that <strong>the chance that tracer names any innocent
customer is at most alpha</strong> (here {_e(f"{r.alpha:g}")}), however many customers were checked ({n_cust:,} here). To achieve this it
uses Holm's correction: it sorts the customers by p-value and compares the smallest with alpha / {n_cust:,}, the next with
alpha / {max(n_cust - 1, 1):,}, and so on, stopping at the first customer that does not clear its bar. Several customers can be
named, for example when a model was merged from several copies.</p>
<h3>What the method relies on</h3>
<ul>
<li>The vendor's master secret stayed secret, so nobody else could know or compute the customers' secret answers.</li>
<li>Each issued copy was recorded in the signed ledger when it was issued, together with a commitment to its secret fingerprint,
so the fingerprint was fixed before the suspect was found and was not chosen to fit it.</li>
<li>The suspect's answers were recorded as it gave them; the calculation itself needs no assumption about how the suspect was
built, trained or modified.</li>
</ul>
<h3>What this method cannot detect</h3>
<ul>
<li>A model trained independently, or rebuilt from scratch (for example by imitating a copy's answers on ordinary inputs only),
may carry no fingerprint; heavy retraining can also erase it. “No match” therefore means “not proven”, never “proven unrelated”.</li>
<li>A leak of the vendor's own original model (not a customer's copy) cannot be attributed to any customer.</li>
<li>tracer identifies whose copy the suspect descends from, not who leaked it: a copy stolen from a customer is still that
customer's copy.</li>
</ul>"""


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
    title = "tracer identification report"
    head = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; img-src data:">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
    )
    intro = (f"<h1>Identification report</h1><p class=\"sub\">Made by tracer {_e(__version__)} on {_e(_when(d.created))}"
             + (f", ledger entry {r.ledger_entry}" if r.ledger_entry is not None else "") + ".</p>")
    body = [intro, _verdict(d, extra), _facts(d, extra), _charts(d), _records(d), _scores(d), _method(d), _verify(d)]
    footer = (f"<footer>Method: {_e(r.method)}.<br>This page is self-contained: it loads nothing from the network.</footer>")
    return head + "".join(body) + footer + "</main></body></html>\n"
