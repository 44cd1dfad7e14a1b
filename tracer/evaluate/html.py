"""A self-contained HTML report of an evaluation: tables and inline SVG charts, no scripts, no downloads."""

from __future__ import annotations

import html
import math
from pathlib import Path

from .._files import atomic_write_bytes
from .evaluation import Evaluation
from .suite import VERDICTS
from .tables import format_p

__all__ = ["write_html", "render_html"]

_COLORS = {"survives": "#2e7d32", "partly survives": "#9e9d24", "erased": "#c62828", "not a valid attack": "#9e9e9e",
           "FALSE ACCUSATION": "#6a1b9a", "skipped": "#bdbdbd", "error": "#ef6c00"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.88em;margin:.8em 0}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}.verdict{font-weight:600}
.box{background:#f7f9fc;border:1px solid #dde4ee;padding:.8em 1em;border-radius:4px}code{font-size:.92em}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _bar_chart(items: list[tuple[str, float, str]], *, threshold: float | None, title: str, xlabel: str, cap: float) -> str:
    """Horizontal bars (label, value, colour) with an optional vertical threshold line."""
    row, left, width = 18, 150, 600
    h = row * len(items) + 50
    scale = width / cap if cap > 0 else 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{h}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="14" font-size="13" font-weight="600">{_e(title)}</text>']
    for i, (label, value, color) in enumerate(items):
        y = 24 + i * row
        v = max(0.0, min(value, cap))
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{_e(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{v * scale:.1f}" height="{row - 5}" fill="{color}"/>')
        shown = f"{value:.1f}" + ("+" if value > cap else "")
        parts.append(f'<text x="{left + v * scale + 4:.1f}" y="{y + 12}" font-size="10">{shown}</text>')
    if threshold is not None:
        x = left + min(threshold, cap) * scale
        parts.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{h - 22}" stroke="#000" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{left}" y="{h - 6}" font-size="11">{_e(xlabel)}</text></svg>')
    return "".join(parts)


def render_html(ev: Evaluation) -> str:
    s = ev.suite
    doc = ev.to_json()
    summary = doc["summary"]
    n = max(s.issued_customers, 1)
    threshold = -math.log10(s.alpha / n)  # Bonferroni bound: naming needs at least this much evidence
    cap = max(40.0, threshold * 2)
    rows = [s.reference] + s.attacks
    evidence = [(a.name, -(a.log10_p or 0.0), _COLORS.get(a.verdict, "#777")) for a in rows if a.log10_p is not None]
    drops = [(a.name, 100 * (a.accuracy_drop or 0.0), "#c62828" if (a.accuracy_drop or 0) > s.budget else "#1565c0")
             for a in rows if a.accuracy_drop is not None]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>tracer evaluation: {_e(s.customer)}</title><style>{_CSS}</style></head><body>",
        "<h1>Watermark robustness and false-accusation evaluation</h1>",
        f'<p class="box"><b>In one sentence:</b> the copy issued to {_e(s.display_name)} ({_e(s.customer)}) {_e(ev.verdict())}; '
        f"innocent customers named anywhere: {ev.false_accusations}.</p>",
        "<table>",
        f"<tr><th>copy</th><td>{_e(s.model_path)}</td></tr><tr><th>sha256</th><td><code>{_e(s.model_sha256)}</code></td></tr>",
        f"<tr><th>clean accuracy</th><td>{s.copy_accuracy:.4f} (base model {s.base_accuracy if s.base_accuracy is None else f'{s.base_accuracy:.4f}'}) on {s.validation_size} held-out inputs</td></tr>",
        f"<tr><th>attacker's data</th><td>{s.attacker_size} inputs: {_e(s.attacker_data)}</td></tr>",
        f"<tr><th>identification</th><td>exact binomial p-values, Holm over {s.issued_customers} issued customers at alpha {s.alpha:g}</td></tr>",
        f"<tr><th>ledger entry</th><td>{ev.ledger_entry if ev.ledger_entry is not None else '-'}</td></tr></table>",
        "<h2>Attacks</h2>",
        f"<p>Valid attacks: {summary['valid']} of {summary['attacks']}; the watermark survived {summary['survived']}. "
        f"Erased by: {_e(', '.join(summary['erased']) or 'none')}. Not valid (cost more than {100 * s.budget:.0f} accuracy points): "
        f"{_e(', '.join(summary['not_valid']) or 'none')}.</p>",
        _bar_chart(evidence, threshold=threshold, cap=cap, title="Evidence against the attacked customer: -log10 p-value",
                   xlabel=f"dashed line: the evidence needed to name a customer (alpha/{n}); bars: green survives, red erased, grey not a valid attack"),
        _bar_chart(drops, threshold=100 * s.budget, cap=max(10.0, max((d for _, d, _ in drops), default=0) + 1),
                   title="Clean-accuracy cost of each attack (points)", xlabel="dashed line: the 5-point validity budget"),
        "<table><tr><th>attack</th><th>what the leaker did</th><th>settings</th><th>clean acc</th><th>drop (pts)</th>"
        "<th>agreement</th><th>p-value</th><th>named</th><th>verdict</th></tr>",
    ]
    for a in rows:
        settings = ", ".join(f"{k}={v}" for k, v in a.params.items())
        if a.clean_accuracy is None:
            parts.append(f"<tr><td>{_e(a.name)}</td><td>{_e(a.description)}</td><td>{_e(settings)}</td><td colspan=5>{_e(a.note)}</td>"
                         f'<td class="verdict" style="color:{_COLORS.get(a.verdict)}">{_e(a.verdict)}</td></tr>')
            continue
        parts.append(
            f"<tr><td>{_e(a.name)}</td><td>{_e(a.description)}</td><td>{_e(settings)}</td><td class=n>{a.clean_accuracy:.4f}</td>"
            f"<td class=n>{100 * (a.accuracy_drop or 0):+.1f}</td><td class=n>{a.matches}/{a.trials}</td>"
            f"<td class=n>{_e(format_p(a.p_value, a.log10_p))}</td><td>{_e(', '.join(a.named) or '-')}</td>"
            f'<td class="verdict" style="color:{_COLORS.get(a.verdict)}">{_e(a.verdict)}</td></tr>')
    parts.append("</table><p>" + "<br>".join(f"<b>{_e(k)}</b>: {_e(v)}" for k, v in VERDICTS.items()) + "</p>")
    if ev.false_accusation is not None:
        f = ev.false_accusation
        fd = f.to_json()
        parts += [
            "<h2>False accusations</h2>",
            f"<p>{fd['models']} models that owe nothing to any issued copy (the base model and independently trained models: "
            f"{_e(', '.join(fd['architectures']))}; vendor or attacker data; several seeds) were identified like any suspect. "
            f"<b>{fd['named']}</b> of them named a customer. The smallest p-value any of them reached was "
            f"{_e(format_p(fd['smallest_p'], fd['log10_smallest_p']))}; naming needs about 1e{-threshold:.1f}.</p>",
            _bar_chart([(m.label, -m.log10_smallest_p, "#c62828" if m.named else "#1565c0") for m in f.models], threshold=threshold,
                       cap=max(threshold * 1.2, 3.0), title="Independent models: -log10 of the smallest p-value over all customers",
                       xlabel="dashed line: the evidence needed to name a customer"),
            "<table><tr><th>model</th><th>architecture</th><th>data</th><th>clean acc</th><th>closest customer</th><th>matches</th><th>smallest p</th><th>named</th></tr>",
        ]
        for m in f.models:
            parts.append(f"<tr><td>{_e(m.label)}</td><td>{_e(m.architecture)}</td><td>{_e(m.data)}</td><td class=n>{m.clean_accuracy:.4f}</td>"
                         f"<td>{_e(m.best_customer)}</td><td class=n>{m.matches}/{m.trials}</td><td class=n>{_e(format_p(m.smallest_p, m.log10_smallest_p))}</td>"
                         f"<td>{_e(', '.join(m.named) or '-')}</td></tr>")
        parts.append("</table>")
    parts.append(
        "<h2>Method</h2><p>Each issued copy answers a set of secret probe inputs with its customer's secret labels. A model not derived "
        "from a customer's copy agrees with that customer's labels on each probe with probability exactly 1/C (C classes), independently, "
        "so the number of agreements has an exact binomial distribution and its tail is a p-value that needs no calibration. "
        "Holm's procedure over all issued customers bounds the chance of naming any innocent customer by alpha. "
        "The attacks use only what a leaker holds: the copy (and, for collusion, other copies) and its own share of data; "
        "where an attack has a strength setting, the strongest one that keeps the leaker's own accuracy estimate within budget is used.</p>"
        "</body></html>")
    return "".join(parts)


def write_html(ev: Evaluation, path: Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, render_html(ev).encode("utf-8"))
    return path
