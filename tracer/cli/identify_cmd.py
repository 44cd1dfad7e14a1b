"""`tracer identify MODEL.onnx`."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import EXIT_FAILED, EXIT_OK, UsageError
from ..fingerprint.revelation import pool_warning
from ..identify.result import RANK_MODE, IdentificationResult
from ._common import EXIT_CODES_SEE, AlphaOpt, JsonOpt, WorkspaceOpt, handle_errors, out, print_json, say, workspace

__all__ = ["AlphaOpt", "ReportOpt", "show_result"]  # AlphaOpt lives in _common; re-exported for `tracer probe`
ReportOpt = typer.Option(None, "--report", help="Write a self-contained HTML report here, and a signed JSON evidence file beside it.")
TimeLimitOpt = typer.Option(120.0, "--time-limit", metavar="SECONDS", min=0.001,
                            help="Stop the suspect model after this many seconds of running, in total (exit 3).")


def show_result(result: IdentificationResult, *, json_out: bool) -> None:
    """Print the verdict (shared with `tracer probe`) and exit 0 on match, 1 otherwise; warn when the key pool runs low."""
    warning = pool_warning(result.extra.get("key_pool"))
    if warning:
        say(f"warning: {warning}")
    if json_out:
        print_json(result.to_json())
    else:
        if result.matched:
            names = ", ".join(f"{c.customer} ({c.display_name})" for c in result.candidates if c.named)
            out.print(f"MATCH: the suspect derives from the copy issued to {names}", markup=False)
        else:
            out.print("NO MATCH: no issued customer can be named at this significance level", markup=False)
        out.print(f"alpha {result.alpha:g} (family-wise over {len(result.candidates)} customers), {result.queries} queries", markup=False)
        rank = result.extra.get("rank_code") or {}
        rank_only = result.extra.get("mode") == RANK_MODE  # `tracer probe --rank-code`: the code alone, no key sent
        if rank.get("read"):
            how = "p is the rank code's alone (no key sent)" if rank_only else "p combines keys and rank code (Bonferroni)"
            out.print(f"rank code read on {rank['queries']} validation inputs ({rank['pairs']} pairs, chance {rank['chance']:g}); {how}",
                      markup=False)
        elif rank:
            out.print(f"rank code not read: {rank.get('reason', '')}", markup=False)
        for c in result.candidates[:5]:
            mark = "*" if c.named else " "
            if rank_only:
                pairs = f"{c.rank_concordant}/{c.rank_pairs} pairs" if c.rank_pairs is not None else "no rank code"
                out.print(f" {mark} {c.customer:<24} {pairs:>14} p = {c.p_value:.3g} (log10 {c.log10_p:.1f})", markup=False)
                continue
            line = f" {mark} {c.customer:<24} {c.matches:>4}/{c.trials:<4} p = {c.p_value:.3g} (log10 {c.log10_p:.1f})"
            if c.rank_pairs is not None:
                line += f"  keys log10 {c.key_log10_p:.1f}, rank {c.rank_concordant}/{c.rank_pairs} log10 {c.rank_log10_p:.1f}"
            out.print(line, markup=False)
    raise typer.Exit(EXIT_OK if result.matched else EXIT_FAILED)


def register(app: typer.Typer) -> None:
    @app.command("identify", help="Name the customer whose copy a recovered ONNX model derives from.\n\nExit 0 on match, 1 on no match. " + EXIT_CODES_SEE)
    @handle_errors
    def identify(
        model: Path = typer.Argument(..., metavar="MODEL", help="The recovered ONNX model file."),
        alpha: float = AlphaOpt,
        report: Path = ReportOpt,
        json_out: bool = JsonOpt,
        time_limit: float = TimeLimitOpt,
        _workspace: str = WorkspaceOpt,
    ) -> None:
        from ..identify import SuspectModel, identify_model

        if not time_limit < float("inf"):
            raise UsageError(f"--time-limit must be a finite number of seconds, not {time_limit}")
        ws = workspace()
        suspect = SuspectModel(model, ws.config.task, time_limit=time_limit)  # cheap checks before asking for the passphrase
        keyring = ws.unlock()
        result = identify_model(ws, keyring, suspect, alpha=alpha)
        if report is not None:
            from ..report import write_report

            html_path, evidence_path = write_report(ws, keyring, result, report)
            say(f"report: {html_path}\nevidence: {evidence_path}")
        show_result(result, json_out=json_out)
