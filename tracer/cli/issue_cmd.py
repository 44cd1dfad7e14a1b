"""`tracer issue`: one customer, or a batch from a file (resumable)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UsageError
from ._common import EXIT_CODES_SEE, JsonOpt, WorkspaceOpt, handle_errors, out, print_json, progress_bar, say, workspace


def register(app: typer.Typer) -> None:
    @app.command("issue", help="Fine-tune, check, export and record a watermarked copy for a customer.\n\n"
                 "Give exactly one of --customer ID or --customers FILE (else exit 2). An empty or undecodable customers file "
                 "is refused with exit 3 before the model loads. " + EXIT_CODES_SEE)
    @handle_errors
    def issue(
        customer: str = typer.Option(None, "--customer", "-c", help="Customer id (a-z 0-9 . _ @ + -)."),
        name: str = typer.Option(None, "--name", help="Display name for reports (free text)."),
        customers: Path = typer.Option(None, "--customers", help="Batch: a file with one id per line, or CSV id,name (UTF-8, or UTF-16 with a BOM). Reruns skip issued customers."),
        out_dir: Path = typer.Option(None, "--out", help="Folder for the ONNX files (default: models/issued in the workspace)."),
        reissue: bool = typer.Option(False, "--reissue", help="Issue another copy to an already-issued customer (both stay traceable)."),
        threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: embedding.threads in tracer.toml; 0 there: the cores this process may use)."),
        json_out: bool = JsonOpt,
        _workspace: str = WorkspaceOpt,
    ) -> None:
        from ..embedding import Issuer
        from ..embedding.customers import read_customer_list
        from ..keys import normalize_customer_id

        if (customer is None) == (customers is None):
            raise UsageError("give exactly one of --customer ID or --customers FILE")
        if customers is not None and (name or reissue):
            raise UsageError("--name and --reissue apply to a single --customer")
        if customer is not None:
            normalize_customer_id(customer)  # a bad id fails now, not after the model has loaded
        ws = workspace()
        rows = read_customer_list(customers) if customers is not None else None
        keyring = ws.unlock()
        with progress_bar(not json_out) as progress:
            load = progress.add_task("loading base model and data", total=None)
            issuer = Issuer(ws, keyring, out_dir=out_dir, on_notice=say, threads=threads)
            progress.remove_task(load)
            steps = issuer.config.embedding.steps
            if rows is None:
                task = progress.add_task(f"embedding {customer}", total=steps)
                rep = issuer.issue(customer, name=name, reissue=reissue, on_step=lambda s: progress.update(task, completed=s))
                reports = [rep]
            else:
                overall = progress.add_task("customers", total=len(rows))
                step_task = progress.add_task("embedding", total=steps)

                def on_customer(cid, rep):
                    progress.advance(overall)
                    progress.reset(step_task)
                    if rep is None:
                        say(f"skipped {cid}: already issued")

                reports = issuer.issue_many(rows, on_customer=on_customer, on_step=lambda s: progress.update(step_task, completed=s))
        if json_out:
            print_json(reports[0].to_json() if rows is None else {"issued": [r.to_json() for r in reports], "skipped": len(rows) - len(reports)})
            return
        for r in reports:
            out.print(
                f"issued {r.customer} ({r.display_name}): {r.model_path}\n"
                f"  sha256 {r.sha256}  ledger entry {r.issuance_id}\n"
                f"  clean accuracy {r.clean_accuracy:.4f} (base {r.base_accuracy:.4f}), trigger accuracy {r.trigger_accuracy:.3f}, {r.seconds:.1f}s",
                markup=False,
            )
