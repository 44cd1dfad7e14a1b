"""Plain-text tables of an evaluation (the CLI's default output and the bench's recorded runs)."""

from __future__ import annotations

from ..report._page import format_p
from .false_accusation import FalseAccusationResult
from .suite import AttackResult, SuiteResult

__all__ = ["format_p", "suite_table", "evasion_table", "false_accusation_table", "separation_cells"]


def _row(a: AttackResult) -> list[str]:
    if a.clean_accuracy is None:
        return [a.name, a.group, "-", "-", "-", "-", "-", "-", "-", f"{a.verdict}: {a.note}" if a.note else a.verdict]
    named = ", ".join(a.named) if a.named else "-"
    right = f"{a.named_right}/{len(a.right)}"
    others = ", ".join(a.named_others) if a.named_others else "-"
    return [
        a.name, a.group, f"{a.clean_accuracy:.4f}", f"{100 * (a.accuracy_drop or 0):+.1f}",
        f"{a.matches}/{a.trials} ({a.agreement:.2f})", _rank(a), format_p(a.p_value, a.log10_p), right, others,
        a.verdict + (f" [{named}]" if len(a.right) > 1 else ""),
    ]


def _rank(a: AttackResult) -> str:
    """The rank code's concordant pairs and its own p-value, where it was read ("-": not read, or not carried)."""
    if a.rank_pairs is None or a.rank_log10_p is None:
        return "-"
    return f"{a.rank_concordant}/{a.rank_pairs} ({format_p(10.0**a.rank_log10_p, a.rank_log10_p)})"


def _render(header: list[str], rows: list[list[str]], right_align: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right_align else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def _params(a: AttackResult) -> str:
    keep = {k: v for k, v in a.params.items() if k not in ("tool", "scope", "relative_to", "scheme", "format", "optimizer", "targets",
                                                         "detector", "answer", "percentile", "rule", "statistics", "seed")}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _probe_text(p: dict | None) -> tuple[str, str]:
    """(verdict, queries) of the probe through the filter, for the table."""
    if not p:
        return "not run", "-"
    if p.get("verdict") == "error":
        return f"error: {p.get('error', '')}"[:60], str(p.get("requests", "-"))
    named = f" ({', '.join(p['named'])})" if p.get("named") else ""
    return f"{p['verdict']}{named}", f"{p.get('trigger_queries')} keys / {p.get('requests')} requests"


def _separation_line(s: SuiteResult) -> str:
    """The issuance's key-separation figure, next to which the evasion rows' Mahalanobis AUC reads (empty where not measured)."""
    if s.key_separation is None:
        return ""
    limit = "" if s.key_separation_limit is None else f", gate {s.key_separation_limit:g}"
    return (f"key separation at issuance: AUC {s.key_separation:.3f} two-sided (a Mahalanobis filter on the copy's features, "
            f"cross-fitted on the vendor's validation inputs{limit})\n")


def separation_cells(e: dict) -> tuple[str, str, str]:
    """An evasion row's AUC keys/natural, its two-sided figure and that figure's 95 % interval ("-" where not measured)."""
    auc = "-" if e.get("auc") is None else f"{e['auc']:.3f}"
    sep = "-" if e.get("separation") is None else f"{e['separation']:.3f}"
    band = e.get("separation_interval")
    return auc, sep, "-" if not band else f"{band[0]:.2f}-{band[1]:.2f}"


def evasion_table(s: SuiteResult) -> str:
    """One line per evasion row: the detector's AUC keys vs natural inputs, the shares flagged, the probe through the filter."""
    rows = []
    for a in s.attacks:
        e = a.evasion
        if not e:
            continue
        verdict, queries = _probe_text(e.get("probe"))
        rank_verdict, rank_queries = _probe_text(e.get("rank_probe"))
        rows.append([a.name, e.get("detector", "-"), e.get("answer", "-"), *separation_cells(e),
                     f"{_share(e.get('keys_flagged'))} of {e.get('keys', 0)}", f"{_share(e.get('decoys_flagged'))} of {e.get('decoys', 0)}",
                     f"{a.matches}/{a.trials}" if a.matches is not None else "-", verdict, queries, rank_verdict, rank_queries])
    if not rows:
        return ""
    header = ["attack", "detector", "answer", "AUC keys/natural", "two-sided", "95 %", "keys flagged", "decoys flagged", "agreement", "probe verdict",
              "probe queries", "rank read (scores)", "rank read queries"]
    return ("evasion filters (natural inputs: the vendor's validation inputs, also the probe's decoys; two-sided: max(AUC, 1 - AUC), what a "
            "leaker flagging either tail gets; 95 %: its DeLong interval, how far the figure could move with other draws of keys and natural inputs; probe: `tracer probe` default options, label-only kserve-v1 on loopback, scratch ledger; "
            "rank read: `tracer probe --rank-code` through the same filter answering with scores, no key sent, where copies carry the code):\n"
            + _render(header, rows, {3, 4, 5, 6, 7, 8}))


def suite_table(s: SuiteResult, *, params: bool = True) -> str:
    """The attack table: clean accuracy, drop, agreement, p-value, named right / others, verdict."""
    head = (
        f"copy of {s.customer} ({s.display_name}): {s.model_path}\n"
        f"clean accuracy {s.copy_accuracy:.4f} (base {s.base_accuracy:.4f}) on {s.validation_size} validation inputs; "
        f"attacker share: {s.attacker_data}; {s.attacker_size} inputs\n"
        + _separation_line(s) +
        f"identification: Holm over {s.issued_customers} issued customers at alpha {s.alpha:g}; "
        f"an attack costing more than {100 * s.budget:.0f} points of accuracy is not a valid attack\n"
        f"agreement: keys answered with the customer's labels; rank code: pairs of wrong classes ordered as the customer's code, "
        f"read from scores on the validation inputs; p-value: the one identify decides on (both combined by Bonferroni where read)\n"
    ) if s.base_accuracy is not None else f"copy of {s.customer}: {s.model_path}\n"
    header = ["attack", "group", "clean acc", "drop pts", "agreement", "rank code (p)", "p-value", "named right", "named others", "verdict"]
    rows = [_row(s.reference)] + [_row(a) for a in s.attacks]
    table = _render(header, rows, {2, 3, 4, 5, 6, 7})
    out = head + "\n" + table
    evasion = evasion_table(s)
    if evasion:
        out += "\n\n" + evasion
    if params:
        lines = [f"  {a.name}: {_params(a)}" for a in s.attacks if a.params and _params(a)]
        if lines:
            out += "\n\nattack settings chosen:\n" + "\n".join(lines)
    c = s.to_json()["summary"]
    out += (f"\n\nvalid attacks: {c['valid']} of {c['attacks']}; survived: {c['survived']}; "
            f"erased: {', '.join(c['erased']) or 'none'}; not valid (> {100 * s.budget:.0f} points): {', '.join(c['not_valid']) or 'none'}; "
            f"false accusations: {', '.join(c['false_accusations']) or 'none'}")
    return out


def false_accusation_table(f: FalseAccusationResult) -> str:
    header = ["model", "architecture", "data", "clean acc", "best customer", "matches", "smallest p", "named"]
    rows = [[m.label, m.architecture, m.data, f"{m.clean_accuracy:.4f}", m.best_customer, f"{m.matches}/{m.trials}",
             format_p(m.smallest_p, m.log10_smallest_p), ", ".join(m.named) or "-"] for m in f.models]
    doc = f.to_json()
    closest = ", ".join(f"{c} {k}" for c, k in doc["closest_customer_counts"].items()) or "none"
    summary = (
        f"\n\nfalse accusations: {doc['named']} of {doc['models']} independent models named a customer "
        f"(Holm over {doc['issued_customers']} customers at alpha {doc['alpha']:g}); smallest p-value {format_p(doc['smallest_p'], doc['log10_smallest_p'])}, "
        f"median {doc['median_smallest_p']:.2f}; {doc['below_0.05']} below 0.05 (on average at most {doc['expected_below_0.05_at_most']:g} "
        f"if unrelated; models trained alike share one customer's luck: closest customers {closest})"
    )
    return _render(header, rows, {3, 5, 6}) + summary
