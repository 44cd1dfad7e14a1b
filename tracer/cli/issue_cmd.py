"""`tracer issue`: one customer, or a batch from a file (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import UsageError
from ..keys import normalize_customer_id

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset
    from ..embedding import Issuer, IssueReport
    from ..workspace import Workspace

from ._common import EXIT_CODES_SEE, JsonOpt, ProgressOpt, WorkspaceOpt, handle_errors, out, print_json, progress_bar, say, warn, workspace


def show_gate_resolution(data: Dataset, config: Config) -> None:
    """Before training: the validation size, what one sample is worth, and a warning with the fix when it outweighs the gate."""
    from ..data import gate_resolution

    res = gate_resolution(data, config)
    say(res.message())
    warning = res.warning()
    if warning:
        warn(warning)


def show_separation_gate(issuer: Issuer) -> None:
    """Before training: whether the key-separation gate applies, and a warning with the fix when tracer.toml asks for it and it cannot."""
    limit, why = issuer.separation_gate()
    if limit is not None:
        say(f"keys: separation gate at AUC {limit:g} (a Mahalanobis filter on each copy's features, {len(issuer.data.y_val)} validation inputs)")
    elif why:
        warn(why)


def show_key_pool(issuer: Issuer) -> None:
    """Before training, natural-mix copies: the pool's size and how many probed endpoints its unrevealed keys serve (a warning when few)."""
    for usage in issuer.pool_usage():
        say(f"keys: pool {usage.pool} of {usage.size} keys, {usage.left} unrevealed: enough for at least {usage.probes_left} probed "
            f"endpoint(s) at up to {usage.keys_per_probe} keys each (a probe stops once it can decide: typically after 20 to 60)")
        warning = usage.warning()
        if warning:
            warn(warning)


def _refuse_issued(ws: Workspace, cid: str) -> None:
    """The library's refusal of an issued customer (Issuer.issue asks it again), before the model and data load."""
    from ..embedding.landing import previous_issuances

    with ws.ledger() as ledger:
        previous_issuances(ledger, cid, reissue=False)


def register(app: typer.Typer) -> None:
    @app.command("issue", help="Fine-tune, check, export and record a watermarked copy for a customer.\n\n"
                 "Give exactly one of --customer ID or --customers FILE (else exit 2). An empty or undecodable customers file "
                 "is refused with exit 3 before the model loads. " + EXIT_CODES_SEE)
    @handle_errors
    def issue(
        customer: str = typer.Option(None, "--customer", "-c", help="Customer id (a-z 0-9 . _ @ + -)."),
        name: str = typer.Option(None, "--name", help="Display name for reports (free text)."),
        customers: Path = typer.Option(None, "--customers",
            help="Batch: a file with one id per line, or CSV id,name (UTF-8, or UTF-16 with a BOM). Reruns skip issued customers."),
        out_dir: Path = typer.Option(None, "--out", help="Folder for the ONNX files (default: models/issued in the workspace)."),
        reissue: bool = typer.Option(False, "--reissue", help="Issue another copy to an already-issued customer (both stay traceable)."),
        progress_mode: str = ProgressOpt,
        workers: int = typer.Option(None, "--workers", min=1,
            help="Batch: fine-tunes at once, in worker processes (default: the usable cores, at most the customers left; 1: one by one in this process)."),
        backend: str = typer.Option("local", "--backend",
            help="Batch: where the fine-tunes run: local (worker processes) or ray (needs pip install 'tracer[ray]')."),
        address: str = typer.Option(None, "--address",
            help="With --backend ray: the cluster to join (e.g. auto, ray://HOST:10001); default: start a local one."),
        threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: embedding.threads in tracer.toml; 0 there: the cores this process may use)."),
        json_out: bool = JsonOpt,
        _workspace: str = WorkspaceOpt,
    ) -> None:
        from ..embedding import Issuer
        from ..embedding.customers import read_customer_list

        _check_usage(customer, customers, name=name, reissue=reissue, batch_options=(workers, backend, address))
        ws = workspace()
        if customer is not None and not reissue:
            _refuse_issued(ws, normalize_customer_id(customer))  # before the model and data load
        rows = read_customer_list(customers) if customers is not None else None
        keyring = ws.unlock()
        with progress_bar(not json_out, progress_mode) as progress:
            load = progress.add_task("loading base model and data", total=None)
            issuer = Issuer(ws, keyring, out_dir=out_dir, on_notice=say, threads=threads)
            progress.remove_task(load)
            show_gate_resolution(issuer.data, issuer.config)
            show_key_pool(issuer)
            show_separation_gate(issuer)
            if rows is None:
                task = progress.add_task(f"embedding {customer}", total=issuer.config.embedding.steps)
                reports = [issuer.issue(customer, name=name, reissue=reissue, on_step=lambda s: progress.update(task, completed=s))]
            else:
                reports = _issue_batch(issuer, rows, progress, workers=workers, backend=backend, address=address)
        _show(reports, rows, json_out=json_out)


def _check_usage(customer: str | None, customers: Path | None, *, name: str | None, reissue: bool,
                 batch_options: tuple[int | None, str, str | None]) -> None:
    """Usage errors (exit 2), and a bad customer id, before anything loads."""
    if (customer is None) == (customers is None):
        raise UsageError("give exactly one of --customer ID or --customers FILE")
    if customers is not None and (name or reissue):
        raise UsageError("--name and --reissue apply to a single --customer")
    workers, backend, address = batch_options
    if customers is None and (workers is not None or backend != "local" or address is not None):
        raise UsageError("--workers, --backend and --address apply to a batch (--customers FILE)")
    if customer is not None:
        normalize_customer_id(customer)  # a bad id fails now, not after the model has loaded


def _issue_batch(issuer: Issuer, rows: list[tuple[str, str | None]], progress: Any, **backend: Any) -> list[IssueReport]:
    """A batch with a customers bar and a per-customer steps bar; skipped customers say so."""
    overall = progress.add_task("customers", total=len(rows))
    step_task = progress.add_task("embedding", total=issuer.config.embedding.steps)

    def on_customer(cid: str, rep: IssueReport | None) -> None:
        progress.advance(overall)
        progress.reset(step_task)
        if rep is None:
            say(f"skipped {cid}: already issued")

    return issuer.issue_many(rows, on_customer=on_customer, on_step=lambda s: progress.update(step_task, completed=s), **backend)


def _show(reports: list[IssueReport], rows: list | None, *, json_out: bool) -> None:
    if json_out:
        print_json(reports[0].to_json() if rows is None else {"issued": [r.to_json() for r in reports], "skipped": len(rows) - len(reports)})
        return
    for r in reports:
        out.print(
            f"issued {r.customer} ({r.display_name}): {r.model_path}\n"
            f"  sha256 {r.sha256}  ledger entry {r.issuance_id}\n"
            f"  clean accuracy {r.clean_accuracy:.4f} (base {r.base_accuracy:.4f}), trigger accuracy {r.trigger_accuracy:.3f}, "
            f"{r.seconds:.1f}s wall for the whole issuance ({r.embed_seconds:.1f}s embedding the runs that made this copy)"
            + ("" if r.key_separation is None else f"\n  key separation {r.key_separation:.3f} (a Mahalanobis filter on the copy's features; gates.max_key_separation)"),
            markup=False,
        )
