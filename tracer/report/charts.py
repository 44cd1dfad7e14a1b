"""Hand-drawn inline SVG charts for the report: no JavaScript, no external files, no plotting library.

* :func:`null_chart`: the null distribution Binomial(n, 1/C) of an unrelated model's match
  count as grey bars, every issued customer's match count as a dot below the axis (named
  customers in red and labelled), the count expected by chance and the naming threshold.
* :func:`strength_chart`: how unlikely each top customer's agreement is by chance
  (-log10 p, horizontal bars) against the naming threshold; on the e-value scale
  (log10 of the largest e-value reached) for a probe's sequential test.
* :func:`bar_chart`: plain horizontal bars with a threshold (the evaluation page).

Every piece of text is escaped; the SVG carries a <title> and <desc> for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..identify.result import Candidate
from ._page import escape, format_p, odds_text, scientific, superscript

__all__ = ["null_chart", "strength_chart", "bar_chart", "binomial_pmf", "threshold_count", "format_p", "odds_text",
           "superscript", "format_e"]

NAMED = "#b3261e"
OTHER = "#2f4858"
BAR = "#b8c2cc"
GRID = "#e3e7eb"
TEXT = "#1f2933"
MUTED = "#616e7c"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif"

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
        f'aria-label="{escape(title)}"><title>{escape(title)}</title><desc>{escape(desc)}</desc>'
        + "".join(body) + "</svg>"
    )


@dataclass
class _Frame:
    """Geometry of one null chart, shared by its parts."""

    n: int
    width: int
    left: int
    right: int
    top: float  # top of the bar area
    base: float  # the x axis
    bars_h: float
    strip_top: float  # top of the customers strip below the axis
    strip_h: float
    row_h: float
    legend_y: float
    height: float

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def bw(self) -> float:
        return self.plot_w / (self.n + 1)

    def x_of(self, m: float) -> float:
        return self.left + (m + 0.5) * self.bw


MAX_STACK = 8  # dots stacked per match count before the strip turns into a histogram
LABEL_ALL = 8  # up to this many customers, every one gets its own row and a name in the strip


def _frame(n: int, candidates: Sequence[Candidate], width: int, top_labels: int, labelled_strip: bool) -> _Frame:
    by_count: dict[int, int] = {}
    for c in candidates:
        by_count[c.matches] = by_count.get(c.matches, 0) + 1
    if labelled_strip:
        rows, row_h = len(candidates), 16.0
    else:
        rows, row_h = min(max(by_count.values(), default=1), MAX_STACK), 11.0
    top = 34 + 14 * top_labels
    bars_h = 190
    base = top + bars_h
    strip_top = base + 44
    strip_h = rows * row_h + 8
    legend_y = strip_top + strip_h + 22
    return _Frame(n, width, 84, 24, top, base, bars_h, strip_top, strip_h, row_h, legend_y, legend_y + 16)


def _null_bars(f: _Frame, pmf: list[float]) -> list[str]:
    """Y grid in percent, the grey bars of the null distribution, the x axis with ticks and caption."""
    ymax_raw = max(pmf) * 1.1
    ystep = _nice_step(ymax_raw, 4)
    ymax = math.ceil(ymax_raw / ystep) * ystep
    body: list[str] = []
    k = 0
    while k * ystep <= ymax + 1e-12:
        v = k * ystep
        y = f.base - v / ymax * f.bars_h
        body.append(f'<line x1="{f.left}" x2="{f.width - f.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(_t(f.left - 6, y + 4, f"{100 * v:.0f}%" if ystep >= 0.01 else f"{100 * v:.1f}%", size=11, anchor="end", fill=MUTED))
        k += 1
    body.append(f'<text transform="translate(16 {f.top + f.bars_h / 2:.1f}) rotate(-90)" font-size="11" text-anchor="middle" '
                f'fill="{MUTED}">chance (unrelated model)</text>')
    gap = 0.12 * f.bw if f.bw > 3 else 0
    for m, pr in enumerate(pmf):
        h = pr / ymax * f.bars_h
        if h < 0.05:
            continue
        body.append(f'<rect x="{f.left + m * f.bw + gap / 2:.2f}" y="{f.base - h:.2f}" width="{max(f.bw - gap, 0.6):.2f}" '
                    f'height="{h:.2f}" fill="{BAR}"><title>{escape(f"{m} matches: chance {100 * pr:.2g}%")}</title></rect>')
    body.append(f'<line x1="{f.left}" x2="{f.width - f.right}" y1="{f.base}" y2="{f.base}" stroke="{TEXT}"/>')
    step = max(1, int(_nice_step(f.n, 10)))
    ticks = list(range(0, f.n + 1, step))
    if f.n - ticks[-1] <= step * 0.5 and ticks[-1] != f.n and len(ticks) > 1:
        ticks[-1] = f.n
    elif ticks[-1] != f.n:
        ticks.append(f.n)
    for m in ticks:
        x = f.x_of(m)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.base}" y2="{f.base + 4}" stroke="{TEXT}"/>')
        body.append(_t(x, f.base + 16, str(m), size=11, anchor="middle", fill=MUTED))
    body.append(_t(f.left + f.plot_w / 2, f.base + 32, f"matches out of {f.n} secret probes", size=11, anchor="middle", fill=MUTED))
    return body


def _null_lines(f: _Frame, num_classes: int, threshold: int | None, threshold_label: str, *, labelled: bool) -> list[str]:
    """The count expected by chance, and the naming threshold (which skips the axis labels' band)."""
    mean = f.n / num_classes
    xm = f.x_of(mean)
    body = [f'<line x1="{xm:.1f}" x2="{xm:.1f}" y1="{f.top - 6}" y2="{f.base}" stroke="{MUTED}" stroke-dasharray="2 3"/>',
            _t(xm + 4, f.top + 4, f"expected by chance: {mean:.1f}", size=11, fill=MUTED, halo=True)]
    if threshold is not None:
        xt = f.left + threshold * f.bw
        dash = f'stroke="{NAMED}" stroke-width="1.5" stroke-dasharray="6 4"'
        body.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{f.top + 10}" y2="{f.base}" {dash}/>')
        if not labelled:  # where every customer's name is written in the strip, the line would cross them
            body.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{f.strip_top - 4}" y2="{f.strip_top + f.strip_h}" {dash}/>')
        anchor, dx = ("end", -4) if xt > f.left + f.plot_w * 0.6 else ("start", 4)
        body.append(_t(xt + dx, f.top + 24, f"{threshold_label} (≥ {threshold} matches)", size=11, anchor=anchor, fill=NAMED, halo=True))
    return body


def _tip(c: Candidate) -> str:
    return f"{c.display_name} ({c.customer}): {c.matches} of {c.trials} match" + (", named" if c.named else "")


def _strip_labelled(f: _Frame, candidates: Sequence[Candidate]) -> list[str]:
    """Few customers: each on its own row below the axis, a dot at its match count and its name beside it."""
    body: list[str] = []
    r = max(2.5, min(4.5, f.bw * 0.45))
    rows = sorted(candidates, key=lambda c: (not c.named, -c.matches, c.display_name))
    for i, c in enumerate(rows):
        x, y = f.x_of(c.matches), f.strip_top + 4 + i * f.row_h + f.row_h / 2
        fill = NAMED if c.named else OTHER
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r + (1 if c.named else 0):.1f}" fill="{fill}"><title>{escape(_tip(c))}</title></circle>')
        anchor, dx = ("end", -(r + 5)) if x > f.left + f.plot_w * 0.55 else ("start", r + 5)
        name = c.display_name if len(c.display_name) <= 40 else c.display_name[:39] + "…"
        body.append(_t(x + dx, y + 4, f"{name}: {c.matches} of {c.trials}", size=11, anchor=anchor, fill=fill,
                       weight="bold" if c.named else "normal", halo=True))
    return body


def _strip_stacked(f: _Frame, candidates: Sequence[Candidate]) -> tuple[list[str], bool]:
    """Many customers: stacked dots per match count, or a histogram of customers once stacks get too tall."""
    by_count: dict[int, list[Candidate]] = {}
    for c in candidates:
        by_count.setdefault(c.matches, []).append(c)
    histogram = max((len(v) for v in by_count.values()), default=0) > MAX_STACK
    body: list[str] = []
    gap = 0.12 * f.bw if f.bw > 3 else 0
    r = max(2.2, min(4.5, f.bw * 0.45))
    if histogram:
        counts = {m: sum(1 for c in group if not c.named) for m, group in by_count.items()}
        peak = max(counts.values()) or 1
        body.append(_t(f.left - 6, f.strip_top + 21, f"(max {peak:,})", size=10, anchor="end", fill=MUTED))
        for m, k in sorted(counts.items()):
            if k:
                h = max(k / peak * (f.strip_h - 6), 1.0)
                body.append(f'<rect x="{f.left + m * f.bw + gap / 2:.2f}" y="{f.strip_top + 2:.1f}" width="{max(f.bw - gap, 0.6):.2f}" '
                            f'height="{h:.2f}" fill="{OTHER}" opacity="0.8"><title>{escape(f"{k:,} customers with {m} matches")}</title></rect>')
    for m, group in sorted(by_count.items()):
        group = sorted(group, key=lambda c: not c.named)
        if histogram:
            group = [c for c in group if c.named]
        shown = group if len(group) <= MAX_STACK else group[: MAX_STACK - 1]
        x = f.x_of(m)
        for i, c in enumerate(shown):
            y = f.strip_top + 4 + i * f.row_h + r
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r + (1 if c.named else 0):.1f}" fill="{NAMED if c.named else OTHER}">'
                        f'<title>{escape(_tip(c))}</title></circle>')
        if len(group) > len(shown):
            body.append(_t(x, f.strip_top + 8 + len(shown) * f.row_h + r, f"+{len(group) - len(shown)}", size=10, anchor="middle", fill=NAMED))
    return body, histogram


def _top_labels(f: _Frame, named: list[Candidate], rows: int) -> list[str]:
    """Names of the named customers above the plot, ordered so that no guide line crosses a label."""
    body: list[str] = []
    labelled = named[:rows]
    end_anchor = bool(labelled) and sum(f.x_of(c.matches) for c in labelled) / len(labelled) > f.left + f.plot_w * 0.55
    labelled = sorted(labelled, key=lambda c: -c.matches if end_anchor else c.matches)
    for i, c in enumerate(labelled):
        x, y = f.x_of(c.matches), 16 + 14 * i
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 4}" y2="{f.strip_top + 2}" stroke="{NAMED}" stroke-width="0.8" opacity="0.6"/>')
        anchor, dx = ("end", -5) if end_anchor else ("start", 5)
        body.append(_t(x + dx, y + 4, f"{c.display_name}: {c.matches} of {c.trials}", size=12, anchor=anchor, fill=NAMED, weight="bold", halo=True))
    if len(named) > rows:
        body.append(_t(f.width - f.right, 16 + 14 * rows, f"and {len(named) - rows} more named", size=11, anchor="end", fill=NAMED))
    return body


def _legend(f: _Frame, histogram: bool) -> list[str]:
    y, lx, lx2 = f.legend_y, f.left, f.left + 420
    return [f'<rect x="{lx}" y="{y - 9}" width="12" height="10" fill="{BAR}"/>',
            _t(lx + 17, y, "chance of each count for a model not derived from the customer", size=11, fill=MUTED),
            f'<circle cx="{lx2 + 5}" cy="{y - 4}" r="4" fill="{OTHER}"/>',
            _t(lx2 + 13, y, "customers" if histogram else "customer", size=11, fill=MUTED),
            f'<circle cx="{lx2 + 85}" cy="{y - 4}" r="5" fill="{NAMED}"/>',
            _t(lx2 + 94, y, "named customer", size=11, fill=MUTED)]


def null_chart(
    n: int,
    num_classes: int,
    candidates: Sequence[Candidate],
    *,
    threshold: int | None,
    threshold_label: str,
    width: int = 760,
) -> str:
    """Bar chart of the null pmf with every customer's match count below the axis (named ones red, labelled)."""
    named = [c for c in candidates if c.named]
    labelled_strip = len(candidates) <= LABEL_ALL
    top_rows = 0 if labelled_strip else min(len(named), 4)
    f = _frame(n, candidates, width, top_rows, labelled_strip)
    body = _null_bars(f, binomial_pmf(n, num_classes)) + _null_lines(f, num_classes, threshold, threshold_label,
                                                                 labelled=labelled_strip)
    body.append(_t(f.left - 6, f.strip_top + 12, "customers", size=11, anchor="end", fill=MUTED))
    if labelled_strip:
        strip, histogram = _strip_labelled(f, candidates), False
    else:
        strip, histogram = _strip_stacked(f, candidates)
        strip += _top_labels(f, named, top_rows)
    body += strip + _legend(f, histogram)
    desc = (f"Grey bars: the chance that a model not derived from a given customer's copy agrees with that customer's "
            f"secret answers on exactly k of {n} probes, Binomial({n}, 1/{num_classes}). Below the axis: the {len(candidates)} "
            f"customers' actual match counts" + (" (bars count customers)." if histogram else " (one dot each).")
            + (f" Named: {', '.join(c.display_name for c in named)}." if named else " No customer named."))
    return _svg(width, int(f.height), "Each customer's match count against chance", desc, body)

def _p_label(s: float) -> str:
    """Axis label for -log10 p = s."""
    if s == 0:
        return "1"
    if s <= 3:
        return f"{10 ** -s:.2g}"
    if float(s).is_integer():
        return f"10{superscript(-int(s))}"
    return format_p(10 ** -s, -s)


def format_e(log10_e: float) -> str:
    """An e-value for people: '1', '37.5', '3.0 × 10⁶' (from its log10, which never overflows)."""
    if log10_e <= 0:
        return "1"
    if log10_e < 3:
        return f"{10 ** log10_e:.3g}"
    return scientific(log10_e)


def _e_label(s: float) -> str:
    """Axis label for log10 E = s."""
    if float(s).is_integer() and s >= 3:
        return f"10{superscript(int(s))}"
    return format_e(s)


def _strength_axis(xmax: float, x_of, base: float, top: float, *, e_scale: bool) -> list[str]:
    body: list[str] = []
    step = _nice_step(xmax, 6)
    k = 0
    while k * step <= xmax + 1e-9:
        s = k * step
        x = x_of(s)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{base}" stroke="{GRID}"/>')
        body.append(_t(x, base + 16, _e_label(s) if e_scale else _p_label(s), size=11, anchor="middle", fill=MUTED))
        k += 1
    return body


def strength_chart(candidates: Sequence[Candidate], *, threshold_log10: float | None, threshold_label: str, width: int = 760,
                   e_scale: bool = False) -> str:
    """Horizontal bars of -log10 p for the given (top) customers, with the naming threshold.

    ``e_scale``: a probe's sequential test, whose p-value is 1 / (largest e-value reached); the
    axis is then the e-value itself and ``threshold_log10`` is log10 of the e-value threshold N / alpha.
    """
    rows = list(candidates)
    left, right, top, row_h = 210, 170, 34, 24
    height = top + row_h * len(rows) + 44
    plot_w = width - left - right
    strengths = [max(0.0, -c.log10_p) for c in rows]
    xmax = max([*strengths, threshold_log10 or 0.0, 1.0]) * 1.08

    def x_of(s: float) -> float:
        return left + s / xmax * plot_w

    base = top + row_h * len(rows)
    body = _strength_axis(xmax, x_of, base, top, e_scale=e_scale)
    caption = ("largest e-value reached: the evidence against chance (further right = stronger)" if e_scale else
               "chance of agreeing this much by coincidence (further right = less likely)")
    body.append(_t(left + plot_w / 2, base + 32, caption, size=11, anchor="middle", fill=MUTED))
    for i, (c, s) in enumerate(zip(rows, strengths)):
        y = top + i * row_h
        fill = NAMED if c.named else OTHER
        name = c.display_name if len(c.display_name) <= 26 else c.display_name[:25] + "…"
        body.append(_t(left - 8, y + row_h / 2 + 4, name, size=12, anchor="end", fill=fill, weight="bold" if c.named else "normal"))
        w = max(s / xmax * plot_w, 1.0)
        value = f"e = {format_e(s)}" if e_scale else f"p = {format_p(c.p_value, c.log10_p)}"
        body.append(f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{fill}" opacity="{1 if c.named else 0.55}">'
                    f'<title>{escape(f"{c.display_name} ({c.customer}): {value}")}</title></rect>')
        tx = left + w + 6
        if threshold_log10 is not None and not c.named and tx < x_of(threshold_log10) + 6:
            tx = x_of(threshold_log10) + 6
        body.append(_t(tx, y + row_h / 2 + 4, value + ("  named" if c.named else ""), size=11, fill=fill, halo=True))
    body.append(f'<line x1="{left}" x2="{left}" y1="{top - 4}" y2="{base}" stroke="{TEXT}"/>')
    if threshold_log10 is not None:
        xt = x_of(threshold_log10)
        body.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{top - 10}" y2="{base}" stroke="{NAMED}" stroke-width="1.5" stroke-dasharray="6 4"/>')
        anchor, dx = ("end", -4) if xt > left + plot_w * 0.6 else ("start", 4)
        body.append(_t(xt + dx, top - 14, threshold_label, size=11, anchor=anchor, fill=NAMED, halo=True))
    what = ("how far its e-value rose above 1 (the evidence that the service was derived from its copy)" if e_scale else
            "how unlikely its agreement with the suspect would be if the suspect were not derived from its copy")
    desc = (f"Horizontal bars: for each of the closest customers, {what} (longer bar = stronger evidence). "
            "Dashed line: the naming threshold.")
    return _svg(width, height, "Strength of the evidence for the closest customers", desc, body)


def bar_chart(items: Sequence[tuple[str, float, str, str]], *, threshold: float | None, threshold_label: str, title: str,
              xlabel: str, width: int = 760) -> str:
    """Horizontal bars (label, value, value text, colour) drawn to scale, with an optional dashed threshold.

    Nothing is clipped: the axis runs to the largest value, so equal bars mean equal values.
    """
    rows = list(items)
    left, right, top, row_h = 180, 150, 34, 20
    height = top + row_h * len(rows) + 40
    plot_w = width - left - right
    xmax = max([*(max(v, 0.0) for _, v, _, _ in rows), threshold or 0.0, 1e-9]) * 1.05

    def x_of(v: float) -> float:
        return left + max(v, 0.0) / xmax * plot_w

    base = top + row_h * len(rows)
    body = [f'<line x1="{left}" x2="{left}" y1="{top - 4}" y2="{base}" stroke="{TEXT}"/>']
    for i, (label, value, shown, color) in enumerate(rows):
        y = top + i * row_h
        name = label if len(label) <= 28 else label[:27] + "…"
        body.append(_t(left - 8, y + row_h / 2 + 4, name, size=11, anchor="end"))
        w = max(x_of(value) - left, 1.0)
        body.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{color}">'
                    f'<title>{escape(f"{label}: {shown}")}</title></rect>')
        body.append(_t(left + w + 5, y + row_h / 2 + 4, shown, size=10, fill=TEXT, halo=True))
    if threshold is not None:
        xt = x_of(threshold)
        body.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{top - 8}" y2="{base}" stroke="{NAMED}" stroke-width="1.5" stroke-dasharray="6 4"/>')
        anchor, dx = ("end", -4) if xt > left + plot_w * 0.6 else ("start", 4)
        body.append(_t(xt + dx, top - 12, threshold_label, size=11, anchor=anchor, fill=NAMED, halo=True))
    body.append(_t(left + plot_w / 2, base + 20, xlabel, size=11, anchor="middle", fill=MUTED))
    return _svg(width, height, title, f"{title}. {xlabel}.", body)
