"""`tracer evaluate`: attack an issued copy, identify what is left, and count false accusations."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperCommand, TyperOption

from ..errors import EXIT_FAILED, EXIT_OK, UsageError
from ._common import EXIT_CODES_SEE, AlphaOpt, JsonOpt, ProgressOpt, WorkspaceOpt, handle_errors, out, print_json, progress_bar, say, workspace

HELP = (
    "Attack an issued copy the ways a leaker would (fine-tuning, pruning, quantization, input transformations, "
    "distillation, collusion, a query filter in front of the copy), identify each result, and train independent models to count "
    "false accusations.\n\n"
    "An attack that costs more than 5 points of clean accuracy is reported as not a valid attack (Lukas et al., S&P 2022). "
    "The attacker's data is the vendor's attacker share (x_attack, or an attack/ image folder), else the share tracer held out "
    "of the training data at issuance; the tables say which (LEGACY: copies issued before tracer held one out trained on it). "
    "A signed summary is appended to the ledger.\n\n"
    "The distill-alt attack, and the false-accusation study's second architecture, need a make_model_alt() function "
    "beside model.factory, in the same module: it returns a fresh nn.Module of another architecture for the same task "
    "(same input shape and number of classes). Without it they are skipped, and the tables say so.\n\n"
    "Exit 0 when the evaluation ran and no innocent customer was ever named; 1 if one was (a false accusation). " + EXIT_CODES_SEE
)
ATTACKS_HELP = "Comma-separated attack names or groups; 'all' (default) or 'none'."


def attacks_help() -> str:
    """--attacks help with every group and attack name, read from the attack registry (which imports torch: help time only)."""
    from ..evaluate.attacks import GROUPS

    groups = "; ".join(f"{group}: {', '.join(names)}" for group, names in GROUPS.items())
    return f"{ATTACKS_HELP} Groups and attacks: {groups}. distill-alt needs a make_model_alt() in model.factory's module."


class EvaluateCommand(TyperCommand):
    """`tracer evaluate`, whose --attacks help lists the attack registry, filled in only when help is shown."""

    def fill_help(self) -> None:
        for param in self.params:
            if param.name == "attacks" and isinstance(param, TyperOption):
                param.help = attacks_help()

    def format_help(self, ctx, formatter) -> None:
        self.fill_help()
        super().format_help(ctx, formatter)


def _attack_list(spec: str | None) -> list[str]:
    from ..evaluate.attacks import GROUPS, attack_names, resolve_attacks

    if spec is not None and spec.strip().lower() == "none":
        return []
    try:
        return resolve_attacks(spec)
    except ValueError as exc:
        raise UsageError(f"--attacks: {exc}", hint=f"choose from {', '.join(attack_names())}, groups {', '.join(GROUPS)}, all or none") from exc


def register(app: typer.Typer) -> None:
    @app.command("evaluate", help=HELP, cls=EvaluateCommand)
    @handle_errors
    def evaluate(
        customer: str = typer.Option(None, "--customer", "-c", help="Customer whose copy is attacked (default: the first issued)."),
        attacks: str = typer.Option(None, "--attacks", help=ATTACKS_HELP),
        independent: int = typer.Option(8, "--independent", "-m", help="Independent models to train for the false-accusation study (0 to skip)."),
        alpha: float = AlphaOpt,
        seed: int = typer.Option(0, "--seed", help="Seed of the attacks and independent models."),
        report: Path = typer.Option(None, "--report", help="Also write a self-contained HTML report with charts here."),
        progress_mode: str = ProgressOpt,
        json_out: bool = JsonOpt,
        _workspace: str = WorkspaceOpt,
    ) -> None:
        from ..evaluate.evaluation import Evaluation, record_evaluation
        from ..evaluate.false_accusation import false_accusation_study
        from ..evaluate.suite import run_suite
        from ..evaluate.tables import false_accusation_table, suite_table

        names = _attack_list(attacks)
        if independent < 0:
            raise UsageError("--independent must be 0 or more")
        if report is not None and report.suffix.lower() not in (".html", ".htm"):
            raise UsageError(f"--report {report}: give an .html file name")
        ws = workspace()
        _ = ws.config  # a bad configuration fails before the passphrase is asked for
        keyring = ws.unlock()
        progress = progress_bar(not json_out, progress_mode)
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
            say(f"report: {report}")
        if json_out:
            print_json(ev.to_json())
        else:
            out.print(suite_table(suite), markup=False)
            if fa is not None:
                out.print("\n" + false_accusation_table(fa), markup=False)
            out.print(f"\n{ev.verdict()} (ledger entry {ev.ledger_entry})", markup=False)
        raise typer.Exit(EXIT_FAILED if ev.false_accusations else EXIT_OK)
