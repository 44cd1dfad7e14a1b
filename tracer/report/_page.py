"""The one page shell and text helpers shared by every HTML page tracer writes (identify, probe, evaluate).

A page has no script, no external stylesheet, font or image: inline CSS, inline
SVG, and a Content-Security-Policy that forbids loading anything. Every piece of
text goes through :func:`escape`. P-values are written one way everywhere
(:func:`format_p`: "0.404", "3.1 × 10⁻⁹"), in the pages and in the text tables.
"""

from __future__ import annotations

import math
from html import escape as _html_escape
from typing import Any

__all__ = ["format_alpha", "CSP", "CSS", "escape", "format_p", "odds_text", "superscript", "num", "kv_table", "page", "plain_count"]

#: Nothing may be loaded: inline styles and data: images only (the SVG charts are inline markup).
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
:root{color-scheme:light}
body{margin:0;background:#f5f7fa;color:#1f2933;font:16px/1.55 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif}
main{max-width:900px;margin:0 auto;padding:24px 20px 48px;background:#fff}
main.wide{max-width:1100px}
h1{font-size:1.5em;margin:0 0 4px}
h2{font-size:1.2em;margin:2em 0 .5em;padding-bottom:.2em;border-bottom:1px solid #e3e7eb}
h3{font-size:1.02em;margin:1.2em 0 .3em}
.sub{color:#616e7c;margin:0 0 18px;font-size:.92em}
.verdict{border-left:6px solid #616e7c;background:#f0f2f5;padding:14px 18px;margin:16px 0;font-size:1.18em}
.verdict.match{border-color:#b3261e;background:#fbeeed}
.verdict p{margin:.3em 0}
.verdict .small{font-size:.78em;color:#3e4c59}
.box{background:#f7f9fc;border:1px solid #dde4ee;padding:.8em 1em;border-radius:4px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.86em;overflow-wrap:anywhere}
.hash{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.86em;word-break:break-all}
.n,.num{white-space:nowrap;overflow-wrap:normal;word-break:keep-all;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em;font-size:.93em}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e7eb;vertical-align:top}
th{color:#3e4c59;font-weight:600}
table.kv th{width:30%}
table.grid{font-size:.86em}
table.grid th{white-space:nowrap}
table.grid code{white-space:nowrap;overflow-wrap:normal}
td.num,td.n{text-align:right}
tr.named td{background:#fbeeed;font-weight:600}
tr.untested td{color:#616e7c}
.ok{color:#1e7b34;font-weight:600}
.bad{color:#b3261e;font-weight:700}
.note{color:#616e7c;font-size:.9em}
.explain{display:block;color:#616e7c;font-size:.86em;font-weight:normal;margin-top:.15em}
figure{margin:1em 0;break-inside:avoid;page-break-inside:avoid}
figcaption{color:#3e4c59;font-size:.9em;margin-top:.4em}
svg{display:block;height:auto}
pre{background:#1f2933;color:#f5f7fa;padding:12px 14px;border-radius:4px;overflow-x:auto;font-size:.88em}
ul{padding-left:1.3em}
li{margin:.25em 0}
dl.appendix dt{font-weight:600;margin-top:.6em}
dl.appendix dd{margin:0 0 0 1.2em}
footer{margin-top:3em;color:#616e7c;font-size:.85em}
h1,h2,h3{break-after:avoid;page-break-after:avoid}
.keep{break-inside:avoid;page-break-inside:avoid}
@media print{body{background:#fff}main{padding:0;max-width:none}pre{background:#fff;color:#000;border:1px solid #999}
.scroll{overflow:visible}}
"""

_SUP = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def escape(value: Any) -> str:
    """HTML-escape any value's text, quotes included (safe in text and in attribute values)."""
    return _html_escape(str(value), quote=True)


def superscript(n: int) -> str:
    return str(n).translate(_SUP)


def format_p(p: float | None, log10_p: float | None) -> str:
    """A p-value for people: '0.404', '3.1 × 10⁻⁹', exact even where the float underflowed; '-' if none."""
    if p is None or log10_p is None:
        return "-"
    if p >= 1e-3:
        return f"{p:.3g}"
    if not math.isfinite(log10_p):
        return "0"
    return scientific(log10_p)


def scientific(log10_x: float) -> str:
    """'3.1 × 10⁻⁹' from log10 of the number, so neither underflow nor overflow can touch it."""
    e = math.floor(log10_x)
    m = 10 ** (log10_x - e)
    if round(m, 1) >= 10:
        m, e = 1.0, e + 1
    return f"{m:.1f} × 10{superscript(e)}"


def format_alpha(alpha: float) -> str:
    """An error bound for people: '10⁻⁶', '2.5 × 10⁻⁷', '0.05' (not Python's '1e-06')."""
    if alpha >= 1e-3:
        return f"{alpha:g}"
    e = math.floor(math.log10(alpha) + 1e-9)
    m = alpha / 10**e
    return f"10{superscript(e)}" if abs(m - 1) < 1e-9 else f"{m:.2g} × 10{superscript(e)}"


def odds_text(p: float, log10_p: float) -> str:
    """'about 1 in 2,481' or 'about 1 in 10¹²⁸' (p near 1: 'about 60 in 100')."""
    if p >= 0.5:
        return f"about {p * 100:.0f} in 100"
    if -log10_p < 6:
        return f"about 1 in {round(1 / p):,}"
    return f"about 1 in 10{superscript(math.floor(-log10_p))}"


def plain_count(x: float, unit: str = "match", units: str = "matches") -> str:
    """An expected count in words a reader takes at face value: 'about 13 matches', 'less than one match'."""
    if x < 0.95:
        return f"less than one {unit}"
    k = round(x)
    return f"about {k:,} {unit if k == 1 else units}"


def num(text: Any) -> str:
    """Escaped text that never breaks across lines (numbers, p-values, short codes)."""
    return f'<span class="n">{escape(text)}</span>'


def kv_table(rows: list[tuple[str, str]]) -> str:
    """A two-column table of (label HTML, value HTML) rows."""
    return '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def page(title: str, body: str, *, footer: str = "", wide: bool = False) -> str:
    """The whole document around ``body`` (HTML): head with the CSP and the shared CSS, then main."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<main{" class=wide" if wide else ""}>{body}'
        f"<footer>{footer}{'<br>' if footer else ''}This page is self-contained: it loads nothing from the network.</footer>"
        "</main></body></html>\n"
    )
