"""A self-contained HTML report of an evaluation: tables and inline SVG charts, no scripts, no downloads.

It uses the same page shell as the identification report (:mod:`tracer.report._page`: the
Content-Security-Policy, the CSS, escaping, one p-value format) and the same charts module.
Identification inside an evaluation is `tracer identify`'s own: exact binomial p-values and
Holm's step-down over every issued customer (:mod:`.suite`, :mod:`.false_accusation`).
"""

from __future__ import annotations

import math
from pathlib import Path

from .._files import atomic_write_bytes
from ..report import charts
from ..report._page import escape, format_alpha, format_p, kv_table, num, page
from .evaluation import Evaluation
from .false_accusation import FalseAccusationResult
from .suite import VERDICTS, AttackResult, SuiteResult
from .tables import separation_cells

__all__ = ["write_html", "render_html"]

_COLORS = {"survives": "#2e7d32", "partly survives": "#9e9d24", "erased": "#c62828", "not a valid attack": "#9e9e9e",
           "FALSE ACCUSATION": "#6a1b9a", "skipped": "#bdbdbd", "error": "#ef6c00"}

_e = escape


def _p_of_log(log10_p: float) -> str:
    return format_p(10 ** log10_p, log10_p)


def _level(s: SuiteResult) -> float:
    """alpha / N: the p-value below which a customer is named for certain (Holm's strictest step)."""
    return s.alpha / max(s.issued_customers, 1)


def _facts(ev: Evaluation) -> str:
    s = ev.suite
    base = "-" if s.base_accuracy is None else f"{s.base_accuracy:.4f}"
    rows = [
        ("Copy", f"<code>{_e(s.model_path)}</code>"),
        ("SHA-256", f'<span class="hash">{_e(s.model_sha256)}</span>'),
        ("Clean accuracy", f"{num(f'{s.copy_accuracy:.4f}')} (base model {num(base)}) on {num(s.validation_size)} held-out inputs"),
        ("Attacker share", f"{_e(s.attacker_data)}; {num(s.attacker_size)} inputs"),
        *([("Key separation", f"AUC {num(f'{s.key_separation:.3f}')} at issuance: how well a filter on the copy's own features "
                              "told its keys from real inputs (0.5: not at all"
                              + ("" if s.key_separation_limit is None else f"; the issuance gate allows {num(f'{s.key_separation_limit:g}')}") + ")")]
          if s.key_separation is not None else []),
        ("Identification", f"exact binomial p-values, Holm's step-down over {num(s.issued_customers)} issued customers at "
                           f"alpha {num(format_alpha(s.alpha))}: a customer is named for certain when its p-value is below "
                           f"alpha / {s.issued_customers} = {num(format_p(_level(s), math.log10(_level(s))))}. Where the copy carries a rank "
                           "code and the attacked model gives scores, the p-value combines the keys' with the rank code's "
                           "(twice the smaller; rank code: pairs of wrong classes ordered as the customer's code)"),
        ("Ledger entry", num(ev.ledger_entry if ev.ledger_entry is not None else "-")),
    ]
    return kv_table(rows)


def _attack_charts(s: SuiteResult) -> str:
    rows = [s.reference] + s.attacks
    level = _level(s)
    evidence = [(a.name, -a.log10_p, f"p = {format_p(a.p_value, a.log10_p)}", _COLORS.get(a.verdict, "#777"))
                for a in rows if a.log10_p is not None]
    drops = [(a.name, 100 * (a.accuracy_drop or 0.0), f"{100 * (a.accuracy_drop or 0.0):+.1f} points",
              "#c62828" if (a.accuracy_drop or 0) > s.budget else "#1565c0") for a in rows if a.accuracy_drop is not None]
    ev_svg = charts.bar_chart(
        evidence, threshold=-math.log10(level), threshold_label=f"named for certain below p = {format_p(level, math.log10(level))}",
        title="Evidence against the attacked customer after each attack",
        xlabel="longer bar = smaller p-value (bars drawn to scale of -log10 p)")
    drop_svg = charts.bar_chart(drops, threshold=100 * s.budget, threshold_label=f"validity budget: {100 * s.budget:g} points",
                                title="Clean-accuracy cost of each attack", xlabel="accuracy points lost (negative: none lost)")
    return (f"<figure>{ev_svg}<figcaption>Each bar is the p-value of the attacked customer after the attack: green, the "
            "watermark survives; red, erased; grey, not a valid attack. Past the dashed line the customer is named whatever "
            "the other customers score (Holm may also name a customer a little short of it).</figcaption></figure>"
            f"<figure>{drop_svg}<figcaption>How many points of clean accuracy each attack cost. An attack that costs more "
            "than the budget ruins what the leaker wanted to steal, so it does not count as a valid attack.</figcaption></figure>")


def _attack_row(a: AttackResult) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in a.params.items())
    verdict = f'<td style="color:{_COLORS.get(a.verdict, "#777")};font-weight:600">{_e(a.verdict)}</td>'
    head = f"<tr><td><code>{_e(a.name)}</code></td><td>{_e(a.description)}</td><td>{_e(settings)}</td>"
    if a.clean_accuracy is None:
        return head + f"<td colspan=6>{_e(a.note)}</td>{verdict}</tr>"
    rank = "-" if a.rank_pairs is None else f"{a.rank_concordant}/{a.rank_pairs}"
    return (head + f"<td class=n>{a.clean_accuracy:.4f}</td><td class=n>{100 * (a.accuracy_drop or 0):+.1f}</td>"
            f"<td class=n>{a.matches}/{a.trials}</td><td class=n>{_e(rank)}</td><td class=n>{_e(format_p(a.p_value, a.log10_p))}</td>"
            f"<td>{_e(', '.join(a.named) or '-')}</td>{verdict}</tr>")


def _attacks(ev: Evaluation) -> str:
    s, summary = ev.suite, ev.suite.to_json()["summary"]
    table = ('<div class="scroll"><table class="grid"><tr><th>attack</th><th>what the leaker did</th><th>settings</th>'
             "<th>clean acc</th><th>drop (pts)</th><th>agreement</th><th>rank code</th><th>p-value</th><th>named</th><th>verdict</th></tr>"
             + "".join(_attack_row(a) for a in [s.reference] + s.attacks) + "</table></div>")
    verdicts = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in VERDICTS.items())
    return ("<h2>Attacks</h2>"
            f"<p>Valid attacks: {summary['valid']} of {summary['attacks']}; the watermark survived {summary['survived']}. "
            f"Erased by: {_e(', '.join(summary['erased']) or 'none')}. Not valid (cost more than {100 * s.budget:g} accuracy "
            f"points): {_e(', '.join(summary['not_valid']) or 'none')}.</p>"
            + _attack_charts(s) + table + f'<h3 class="keep">What the verdicts mean</h3><dl class="appendix">{verdicts}</dl>')


def _probe_cell(p: dict | None) -> str:
    if not p:
        return "<td>not run</td><td class=n>-</td>"
    if p.get("verdict") == "error":
        return f"<td>error: {_e(p.get('error', ''))}</td><td class=n>{_e(p.get('requests', '-'))}</td>"
    named = f" ({_e(', '.join(p['named']))})" if p.get("named") else ""
    return f"<td>{_e(p['verdict'])}{named}</td><td class=n>{_e(p.get('trigger_queries'))} / {_e(p.get('requests'))}</td>"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _evasion_row(a: AttackResult) -> str:
    e = a.evasion or {}
    auc, sep, band = separation_cells(e)
    agreement = "-" if a.matches is None else f"{a.matches}/{a.trials}"
    return (f"<tr><td><code>{_e(a.name)}</code></td><td>{_e(e.get('detector'))}</td><td>{_e(e.get('answer'))}</td><td class=n>{auc}</td>"
            f"<td class=n>{sep}</td><td class=n>{band}</td>"
            f"<td class=n>{_share(e.get('keys_flagged'))} of {_e(e.get('keys', 0))}</td>"
            f"<td class=n>{_share(e.get('decoys_flagged'))} of {_e(e.get('decoys', 0))}</td>"
            f"<td class=n>{agreement}</td>{_probe_cell(e.get('probe'))}{_probe_cell(e.get('rank_probe'))}</tr>")


def _evasion(s: SuiteResult) -> str:
    """The query filters: how well each tells keys from natural inputs, and what a real probe through it concluded."""
    rows = [a for a in s.attacks if a.evasion]
    if not rows:
        return ""
    body = "".join(_evasion_row(a) for a in rows)
    return ("<h2>Query filters</h2><p>The leaker serves the copy behind a filter fitted on its own share of the data: queries the filter "
            "flags as unusual are not answered honestly: they get the copy's runner-up class, or a random class. AUC 0.5: the filter cannot tell the "
            "secret keys from natural inputs (the vendor's validation inputs, which are also the probe's decoys); 1.0: it tells them apart "
            "every time; below 0.5, keys look <em>more</em> ordinary than natural inputs, which a leaker can also exploit by flagging the "
            "other tail, so the two-sided column, max(AUC, 1 &minus; AUC), is the separation that counts. Its 95 % interval (DeLong's, an approximation) "
            "says how far that figure could move with another draw of keys and natural inputs: with a few dozen natural inputs, about "
            "&plusmn;0.1. The probe is "
            "<code>tracer probe</code> with default options against a real loopback server running the filter, "
            "journaled on a scratch copy of the ledger so that the evaluation reveals none of the workspace's keys, against the filter answering "
            "class labels only. Where the copies carry a rank code, the last two columns are <code>tracer probe --rank-code</code> against the "
            "same filter answering with scores: it sends no key, only natural inputs, which the filter passes.</p>"
            '<div class="scroll"><table class="grid"><tr><th>attack</th><th>detector</th><th>flagged queries get</th><th>AUC keys / natural</th>'
            "<th>two-sided</th><th>95 %</th><th>keys flagged</th><th>decoys flagged</th><th>agreement</th><th>probe verdict</th><th>probe keys / requests</th>"
            "<th>rank-code read (scores)</th><th>keys / requests</th></tr>"
            + body + "</table></div>")


def _luck_text(f: FalseAccusationResult, fd: dict) -> str:
    """The per-model count below 0.05, read correctly: correlated models share one codeword's luck."""
    below, bound = fd["below_0.05"], fd["expected_below_0.05_at_most"]
    text = (f"{below} of {fd['models']} models had some customer with a p-value below 0.05. For one model this happens with "
            f"a chance of at most {fd['issued_customers']} customers × 0.05, so on average at most {bound:g} of "
            f"{fd['models']} would. ")
    if below <= bound:
        return text + "That is what chance predicts."
    closest = fd.get("closest_customer_counts", {})
    top = max(closest.items(), key=lambda kv: kv[1]) if closest else None
    text += ("More did here, and it is not a sign of a fault: that bound is an average over the random draw of the customers' "
             "secret answers, and these models are not independent draws. Trained on the same kind of data, they give largely "
             "the same answers to the secret probes, so if one customer's secret answers happen to resemble those natural "
             "answers, every model agrees with that customer a little more than average at once: they share one codeword's luck. ")
    if top is not None and top[1] > 1:
        text += f"Here {top[1]} of the {fd['models']} models were closest to the same customer, {_e(top[0])}. "
    reached = f"{fd['named']} of them reached it" if fd["named"] else "none of them reached it"
    return text + f"What protects customers is the naming bar, and {reached}."


def _false_accusations(f: FalseAccusationResult, s: SuiteResult) -> str:
    fd = f.to_json()
    level = _level(s)
    bars = [(m.label, -m.log10_smallest_p, f"p = {format_p(m.smallest_p, m.log10_smallest_p)}", "#c62828" if m.named else "#1565c0")
            for m in f.models]
    svg = charts.bar_chart(bars, threshold=-math.log10(level), threshold_label=f"naming bar: p = {format_p(level, math.log10(level))}",
                           title="Independent models: the smallest p-value over all customers",
                           xlabel="longer bar = smaller p-value (bars drawn to scale of -log10 p)")
    rows = "".join(
        f"<tr><td><code>{_e(m.label)}</code></td><td>{_e(m.architecture)}</td><td>{_e(m.data)}</td><td class=n>{m.clean_accuracy:.4f}</td>"
        f"<td>{_e(m.best_customer)}</td><td class=n>{m.matches}/{m.trials}</td><td class=n>{_e(format_p(m.smallest_p, m.log10_smallest_p))}</td>"
        f"<td>{_e(', '.join(m.named) or '-')}</td></tr>" for m in f.models)
    smallest = "-" if fd["log10_smallest_p"] is None else _p_of_log(fd["log10_smallest_p"])
    return ("<h2>False accusations</h2>"
            f"<p>{fd['models']} models that owe nothing to any issued copy (the base model and independently trained models: "
            f"{_e(', '.join(fd['architectures']))}; vendor or attacker data; several seeds) were identified like any suspect. "
            f"<b>{fd['named']}</b> of them named a customer. The smallest p-value any of them reached was {num(smallest)}; "
            f"a customer is named only below {num(format_p(level, math.log10(level)))} (alpha / {s.issued_customers} customers).</p>"
            f"<p>{_luck_text(f, fd)}</p>"
            f"<figure>{svg}</figure>"
            '<div class="scroll"><table class="grid"><tr><th>model</th><th>architecture</th><th>data</th><th>clean acc</th>'
            "<th>closest customer</th><th>matches</th><th>smallest p</th><th>named</th></tr>" + rows + "</table></div>")


_METHOD = (
    '<h2>Method</h2><p>Each issued copy answers a set of secret probe inputs with its customer\'s secret labels. A model not derived '
    "from a customer's copy agrees with that customer's labels on each probe with probability exactly 1/C (C classes), independently, "
    "so the number of agreements has an exact binomial distribution and its tail is a p-value that needs no calibration. "
    "Holm's step-down procedure over all issued customers bounds the chance of naming any innocent customer by alpha; "
    "its strictest step, alpha / N, is the dashed line in the evidence charts. "
    "The attacks use only what a leaker holds: the copy (and, for collusion, other copies) and its own share of data; "
    "where an attack has a strength setting, the strongest one that keeps the leaker's own accuracy estimate within budget is used.</p>"
)


def render_html(ev: Evaluation) -> str:
    """The whole page (pure)."""
    s = ev.suite
    body = ["<h1>Watermark robustness and false-accusation evaluation</h1>",
            f'<p class="box"><b>In one sentence:</b> the copy issued to {_e(s.display_name)} (<code>{_e(s.customer)}</code>) '
            f"{_e(ev.verdict())}; innocent customers named anywhere: {ev.false_accusations}.</p>",
            _facts(ev), _attacks(ev), _evasion(s)]
    if ev.false_accusation is not None:
        body.append(_false_accusations(ev.false_accusation, s))
    body.append(_METHOD)
    return page(f"tracer evaluation: {s.customer}", "".join(body), wide=True,
                footer="Identification: exact binomial test with Holm's correction, as in <code>tracer identify</code>.")


def write_html(ev: Evaluation, path: Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, render_html(ev).encode("utf-8"))
    return path
