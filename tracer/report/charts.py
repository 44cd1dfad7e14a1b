"""Hand-drawn inline SVG charts for the report: no JavaScript, no external files, no plotting library.

* :func:`null_chart`: the null distribution Binomial(n, 1/C) of an unrelated model's match
  count as grey bars, every issued customer's match count as a dot below the axis (named
  customers in red and labelled), the count expected by chance and the naming threshold.
* :func:`strength_chart`: how unlikely each top customer's agreement is by chance
  (-log10 p, horizontal bars) against the naming threshold.

Every piece of text is escaped; the SVG carries a <title> and <desc> for screen readers.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

from ..identify.result import Candidate

__all__ = ["null_chart", "strength_chart", "binomial_pmf", "threshold_count", "format_p", "odds_text", "superscript"]

NAMED = "#b3261e"
OTHER = "#2f4858"
BAR = "#b8c2cc"
GRID = "#e3e7eb"
TEXT = "#1f2933"
MUTED = "#616e7c"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif"

_SUP = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def superscript(n: int) -> str:
    return str(n).translate(_SUP)


def format_p(p: float, log10_p: float) -> str:
    """A p-value for people: '0.404', '3.1 × 10⁻⁹', exact even where the float underflowed."""
    if p >= 1e-3:
        return f"{p:.3g}"
    if not math.isfinite(log10_p):
        return "0"
    e = math.floor(log10_p)
    m = 10 ** (log10_p - e)
    if round(m, 1) >= 10:
        m, e = 1.0, e + 1
    return f"{m:.1f} × 10{superscript(e)}"


def odds_text(p: float, log10_p: float) -> str:
    """'about 1 in 2,481' or 'about 1 in 10¹²⁸' (p = 1: 'certain')."""
    if p >= 0.5:
        return f"about {p * 100:.0f} in 100"
    if -log10_p < 6:
        return f"about 1 in {round(1 / p):,}"
    return f"about 1 in 10{superscript(math.floor(-log10_p))}"


def binomial_pmf(n: int, num_classes: int) -> list[float]:
    """P[Binomial(n, 1/C) = k] for k = 0..n (log-space, accurate for plotting)."""
    q = 1.0 / num_classes
    lq, l1q = math.log(q), math.log1p(-q)
    lg = math.lgamma
    return [math.exp(lg(n + 1) - lg(k + 1) - lg(n - k + 1) + k * lq + (n - k) * l1q) for k in range(n + 1)]


def threshold_count(tails: Sequence[float], level: float) -> int | None:
    """Smallest match count m with P[X >= m] <= level, or None if even n matches are not enough."""
    for m, t in enumerate(tails):
        if t <= level and m < len(tails) - 1:
            return m
    return None


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for f in (1, 2, 2.5, 5, 10):
        if raw <= f * mag:
            return f * mag
    return 10 * mag


def _t(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start", fill: str = TEXT, weight: str = "normal",
       halo: bool = False) -> str:
    extra = ' stroke="#fff" stroke-width="3" paint-order="stroke" stroke-linejoin="round"' if halo else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}"{extra}>{escape(text)}</text>')


def _svg(width: int, height: int, title: str, desc: str, body: list[str]) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" style="max-width:{width}px;{FONT}" '
        f'aria-labelledby="t d"><title>{escape(title)}</title><desc>{escape(desc)}</desc>'
        + "".join(body) + "</svg>"
    )


def null_chart(
    n: int,
    num_classes: int,
    candidates: Sequence[Candidate],
    *,
    threshold: int | None,
    threshold_label: str,
    width: int = 760,
) -> str:
    """Bar chart of the null pmf with every customer's match count as a dot (named ones red)."""
    pmf = binomial_pmf(n, num_classes)
    named = [c for c in candidates if c.named]
    label_rows = min(len(named), 4)
    left, right = 84, 24
    top = 34 + 14 * label_rows
    bars_h = 190
    base = top + bars_h
    max_stack = 8
    by_count: dict[int, list[Candidate]] = {}
    for c in candidates:
        by_count.setdefault(c.matches, []).append(c)
    stack = min(max((len(v) for v in by_count.values()), default=1), max_stack)
    strip_top = base + 36
    row_h = 11
    strip_h = stack * row_h + 8
    legend_y = strip_top + strip_h + 22
    height = legend_y + 16
    plot_w = width - left - right
    bw = plot_w / (n + 1)

    def x_of(m: float) -> float:
        return left + (m + 0.5) * bw

    ymax_raw = max(pmf) * 1.1
    ystep = _nice_step(ymax_raw, 4)
    ymax = math.ceil(ymax_raw / ystep) * ystep
    body: list[str] = []
    # y grid and labels (percent)
    k = 0
    while k * ystep <= ymax + 1e-12:
        v = k * ystep
        y = base - v / ymax * bars_h
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(_t(left - 6, y + 4, f"{100 * v:.0f}%" if ystep >= 0.01 else f"{100 * v:.1f}%", size=11, anchor="end", fill=MUTED))
        k += 1
    body.append(f'<text transform="translate(16 {top + bars_h / 2:.1f}) rotate(-90)" font-size="11" text-anchor="middle" '
                f'fill="{MUTED}">chance (unrelated model)</text>')
    # bars of the null distribution
    gap = 0.12 * bw if bw > 3 else 0
    for m, pr in enumerate(pmf):
        h = pr / ymax * bars_h
        if h < 0.05:
            continue
        body.append(f'<rect x="{left + m * bw + gap / 2:.2f}" y="{base - h:.2f}" width="{max(bw - gap, 0.6):.2f}" '
                    f'height="{h:.2f}" fill="{BAR}"><title>{escape(f"{m} matches: chance {100 * pr:.2g}%")}</title></rect>')
    # x axis, ticks
    body.append(f'<line x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" stroke="{TEXT}"/>')
    step = max(1, int(_nice_step(n, 10)))
    ticks = list(range(0, n + 1, step))
    if n - ticks[-1] <= step * 0.5 and ticks[-1] != n and len(ticks) > 1:
        ticks[-1] = n
    elif ticks[-1] != n:
        ticks.append(n)
    for m in ticks:
        x = x_of(m)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}" stroke="{TEXT}"/>')
        body.append(_t(x, base + 16, str(m), size=11, anchor="middle", fill=MUTED))
    body.append(_t(left + plot_w / 2, base + 30, f"matches out of {n} secret probes", size=11, anchor="middle", fill=MUTED))
    # expected count under the null
    mean = n / num_classes
    xm = x_of(mean)
    body.append(f'<line x1="{xm:.1f}" x2="{xm:.1f}" y1="{top - 6}" y2="{base}" stroke="{MUTED}" stroke-dasharray="2 3"/>')
    body.append(_t(xm + 4, top + 4, f"expected by chance: {mean:.1f}", size=11, fill=MUTED, halo=True))
    # naming threshold
    if threshold is not None:
        xt = left + threshold * bw
        body.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{top + 10}" y2="{strip_top + strip_h}" stroke="{NAMED}" '
                    f'stroke-width="1.5" stroke-dasharray="6 4"/>')
        anchor, dx = ("end", -4) if xt > left + plot_w * 0.6 else ("start", 4)
        body.append(_t(xt + dx, top + 24, f"{threshold_label} (≥ {threshold} matches)", size=11, anchor=anchor, fill=NAMED, halo=True))
    # customers below the axis: one dot each, or a histogram when the stacks get too tall
    histogram = max((len(v) for v in by_count.values()), default=0) > max_stack
    body.append(_t(left - 6, strip_top + 8, "customers", size=11, anchor="end", fill=MUTED))
    r = max(2.2, min(4.5, bw * 0.45))
    if histogram:
        counts = {m: sum(1 for c in group if not c.named) for m, group in by_count.items()}
        peak = max(counts.values())
        hist_h = strip_h - 6
        body.append(_t(left - 6, strip_top + 21, f"(max {peak:,})", size=10, anchor="end", fill=MUTED))
        for m, k in sorted(counts.items()):
            if not k:
                continue
            h = max(k / peak * hist_h, 1.0)
            body.append(f'<rect x="{left + m * bw + gap / 2:.2f}" y="{strip_top + 2:.1f}" width="{max(bw - gap, 0.6):.2f}" '
                        f'height="{h:.2f}" fill="{OTHER}" opacity="0.8"><title>{escape(f"{k:,} customers with {m} matches")}</title></rect>')
    for m, group in sorted(by_count.items()):
        group = sorted(group, key=lambda c: not c.named)
        if histogram:
            group = [c for c in group if c.named]
        shown = group if len(group) <= max_stack else group[: max_stack - 1]
        x = x_of(m)
        for i, c in enumerate(shown):
            y = strip_top + 4 + i * row_h + r
            fill = NAMED if c.named else OTHER
            tip = f"{c.display_name} ({c.customer}): {c.matches} of {c.trials} match" + (", named" if c.named else "")
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r + (1 if c.named else 0):.1f}" fill="{fill}">'
                        f'<title>{escape(tip)}</title></circle>')
        if len(group) > len(shown):
            y = strip_top + 4 + len(shown) * row_h + r + 4
            body.append(_t(x, y, f"+{len(group) - len(shown)}", size=10, anchor="middle", fill=NAMED))
    # labels of the named customers, above the plot, ordered so that no guide line crosses a label
    labelled = named[:label_rows]
    end_anchor = bool(labelled) and sum(x_of(c.matches) for c in labelled) / len(labelled) > left + plot_w * 0.55
    labelled = sorted(labelled, key=lambda c: -c.matches if end_anchor else c.matches)
    for i, c in enumerate(labelled):
        x = x_of(c.matches)
        y = 16 + 14 * i
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 4}" y2="{strip_top + 2}" stroke="{NAMED}" stroke-width="0.8" opacity="0.6"/>')
        anchor, dx = ("end", -5) if end_anchor else ("start", 5)
        body.append(_t(x + dx, y + 4, f"{c.display_name}: {c.matches} of {c.trials}", size=12, anchor=anchor, fill=NAMED, weight="bold", halo=True))
    if len(named) > label_rows:
        body.append(_t(width - right, 16 + 14 * label_rows, f"and {len(named) - label_rows} more named", size=11, anchor="end", fill=NAMED))
    # legend
    lx = left
    body.append(f'<rect x="{lx}" y="{legend_y - 9}" width="12" height="10" fill="{BAR}"/>')
    body.append(_t(lx + 17, legend_y, "chance of each count for a model not derived from the customer", size=11, fill=MUTED))
    lx2 = left + 420
    body.append(f'<circle cx="{lx2 + 5}" cy="{legend_y - 4}" r="4" fill="{OTHER}"/>')
    body.append(_t(lx2 + 13, legend_y, "customers" if histogram else "customer", size=11, fill=MUTED))
    body.append(f'<circle cx="{lx2 + 85}" cy="{legend_y - 4}" r="5" fill="{NAMED}"/>')
    body.append(_t(lx2 + 94, legend_y, "named customer", size=11, fill=MUTED))
    desc = (f"Grey bars: the chance that a model not derived from a given customer's copy agrees with that customer's "
            f"secret answers on exactly k of {n} probes, Binomial({n}, 1/{num_classes}). Below the axis: the {len(candidates)} issued "
            f"customers' actual match counts" + (" (bars count customers)." if histogram else " (one dot each).") + (f" Named: {', '.join(c.display_name for c in named)}." if named else " No customer named."))
    return _svg(width, height, "Each customer's match count against chance", desc, body)


def _p_label(s: float) -> str:
    """Axis label for -log10 p = s."""
    if s == 0:
        return "1"
    if s <= 3:
        return f"{10 ** -s:.2g}"
    if float(s).is_integer():
        return f"10{superscript(-int(s))}"
    return format_p(10 ** -s, -s)


def strength_chart(candidates: Sequence[Candidate], *, threshold_log10: float | None, threshold_label: str, width: int = 760) -> str:
    """Horizontal bars of -log10 p for the given (top) customers, with the naming threshold."""
    rows = list(candidates)
    left, right, top, row_h = 210, 150, 28, 24
    height = top + row_h * len(rows) + 44
    plot_w = width - left - right
    strengths = [max(0.0, -c.log10_p) for c in rows]
    xmax = max([*strengths, threshold_log10 or 0.0, 1.0]) * 1.08
    step = _nice_step(xmax, 6)

    def x_of(s: float) -> float:
        return left + s / xmax * plot_w

    body: list[str] = []
    base = top + row_h * len(rows)
    k = 0
    while k * step <= xmax + 1e-9:
        s = k * step
        x = x_of(s)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{base}" stroke="{GRID}"/>')
        label = _p_label(s)
        body.append(_t(x, base + 16, label, size=11, anchor="middle", fill=MUTED))
        k += 1
    body.append(_t(left + plot_w / 2, base + 32, "chance of agreeing this much by coincidence (further right = less likely)", size=11, anchor="middle", fill=MUTED))
    for i, (c, s) in enumerate(zip(rows, strengths)):
        y = top + i * row_h
        fill = NAMED if c.named else OTHER
        name = c.display_name if len(c.display_name) <= 26 else c.display_name[:25] + "…"
        body.append(_t(left - 8, y + row_h / 2 + 4, name, size=12, anchor="end", fill=fill, weight="bold" if c.named else "normal"))
        w = max(s / xmax * plot_w, 1.0)
        body.append(f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{fill}" opacity="{1 if c.named else 0.55}">'
                    f'<title>{escape(f"{c.display_name} ({c.customer}): p = {format_p(c.p_value, c.log10_p)}")}</title></rect>')
        tx = left + w + 6
        if threshold_log10 is not None and not c.named and tx < x_of(threshold_log10) + 6:
            tx = x_of(threshold_log10) + 6
        body.append(_t(tx, y + row_h / 2 + 4, f"p = {format_p(c.p_value, c.log10_p)}" + ("  named" if c.named else ""), size=11, fill=fill, halo=True))
    body.append(f'<line x1="{left}" x2="{left}" y1="{top - 4}" y2="{base}" stroke="{TEXT}"/>')
    if threshold_log10 is not None:
        xt = x_of(threshold_log10)
        body.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{top - 10}" y2="{base}" stroke="{NAMED}" stroke-width="1.5" stroke-dasharray="6 4"/>')
        anchor, dx = ("end", -4) if xt > left + plot_w * 0.6 else ("start", 4)
        body.append(_t(xt + dx, top - 12, threshold_label, size=11, anchor=anchor, fill=NAMED, halo=True))
    desc = ("Horizontal bars: for each of the closest customers, how unlikely its agreement with the suspect would be "
            "if the suspect were not derived from its copy (longer bar = stronger evidence). Dashed line: the naming threshold.")
    return _svg(width, height, "Strength of the evidence for the closest customers", desc, body)
