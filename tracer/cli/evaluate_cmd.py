"""`tracer evaluate`: attack an issued copy, identify what is left, and count false accusations."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, TracerError
from ._common import EXIT_CODES_HELP, JsonOpt, err, handle_errors, out, print_json, progress_bar, workspace

HELP = (
    "Attack an issued copy the ways a leaker would (fine-tuning, pruning, quantization, input transformations, "
    "distillation, collusion), identify each result, and train independent models to count false accusations.\n\n"
    "An attack that costs more than 5 points of clean accuracy is reported as not a valid attack (Lukas et al., S&P 2022). "
    "The attacker's data is the dataset's x_attack share, else a third of x_train. A signed summary is appended to the ledger.\n\n"
    "Exit 0 when the evaluation ran and no innocent customer was ever named; 1 if one was (a false accusation). " + EXIT_CODES_HELP
)


class UsageError(TracerError):
    exit_code = EXIT_USAGE


def _attack_list(spec: str | None) -> list[str]:
    from ..evaluate.attacks import GROUPS, attack_names, resolve_attacks

    if spec is not None and spec.strip().lower() == "none":
        return []
    try:
        return resolve_attacks(spec)
    except ValueError as exc:
        raise UsageError(f"--attacks: {exc}", hint=f"choose from {', '.join(attack_names())}, groups {', '.join(GROUPS)}, all or none") from None


def register(app: typer.Typer) -> None:
    @app.command("evaluate", help=HELP)
    @handle_errors
    def evaluate(
        customer: str = typer.Option(None, "--customer", "-c", help="Customer whose copy is attacked (default: the first issued)."),
        attacks: str = typer.Option(None, "--attacks", help="Comma-separated attack names or groups (fine-tuning, pruning, quantization, input, extraction, collusion); 'all' (default) or 'none'."),
        independent: int = typer.Option(8, "--independent", "-m", help="Independent models to train for the false-accusation study (0 to skip)."),
        alpha: float = typer.Option(None, "--alpha", help="Family-wise bound used by identification (default: identify.alpha in tracer.toml)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the attacks and independent models."),
        report: Path = typer.Option(None, "--report", help="Also write a self-contained HTML report with charts here."),
        json_out: bool = JsonOpt,
    ) -> None:
        from ..evaluate.evaluation import Evaluation, record_evaluation
        from ..evaluate.false_accusation import false_accusation_study
        from ..evaluate.suite import run_suite
        from ..evaluate.tables import false_accusation_table, suite_table

        names = _attack_list(attacks)
        if independent < 0:
            raise UsageError("--independent must be 0 or more")
        if alpha is not None and not 0 < alpha < 1:
            raise UsageError("--alpha must be in (0, 1)")
        if report is not None and report.suffix.lower() not in (".html", ".htm"):
            raise UsageError(f"--report {report}: give an .html file name")
        ws = workspace()
        ws.config  # a bad configuration fails before the passphrase is asked for
        keyring = ws.unlock()
        progress = progress_bar(not json_out)
        with progress:
            bar = progress.add_task("attacks", total=len(names))

            def on_attack(name, row):
                if row is None:
                    progress.update(bar, description=f"attack {name}")
                else:
                    progress.advance(bar)

            suite = run_suite(ws, keyring, customer=customer, attacks=names, alpha=alpha, seed=seed, on_attack=on_attack)
            fa = None
            if independent:
                fbar = progress.add_task("independent models", total=independent + 1)
                fa = false_accusation_study(ws, keyring, models=independent, seed=seed, alpha=alpha,
                                            on_model=lambda i, m: progress.advance(fbar) if m is not None else None)
        ev = Evaluation(suite, fa)
        record_evaluation(ws, keyring, ev)
        if report is not None:
            from ..evaluate.html import write_html

            write_html(ev, report)
            err.print(f"report: {report}")
        if json_out:
            print_json(ev.to_json())
        else:
            out.print(suite_table(suite), markup=False)
            if fa is not None:
                out.print("\n" + false_accusation_table(fa), markup=False)
            out.print(f"\n{ev.verdict()} (ledger entry {ev.ledger_entry})", markup=False)
        raise typer.Exit(EXIT_FAILED if ev.false_accusations else EXIT_OK)
