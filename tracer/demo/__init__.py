"""`tracer demo`: the whole story end to end, in a temporary workspace, on the digits example.

init -> issue three copies -> one customer leaks (fine-tuned, int8-quantized) ->
identify the leaked file -> serve it over HTTP on loopback and identify it again
with a probe -> verify the ledger -> write the HTML report and evidence.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .._progress import progress_bar

__all__ = ["run_demo", "DemoResult", "DEMO_PASSPHRASE"]

#: The demo workspace's passphrase: it guards throwaway keys; never use it for real ones.
DEMO_PASSPHRASE = "tracer-demo-only-not-a-secret"
CUSTOMERS = (("acme", "ACME Corp."), ("globex", "Globex Corporation"), ("initech", "Initech"))
LEAKER = "globex"


@dataclass
class DemoResult:
    workspace: Path
    leaked_model: Path
    report: Path
    evidence: Path
    identify_customers: list[str]
    probe_customers: list[str]
    probe_queries: int
    probe_trigger_queries: int
    ledger_entries: int
    seconds: float


def _leak(ws, keyring, console: Console) -> Path:
    """What the leaker does: fine-tune its copy on its own data, then quantize it to int8."""
    from ..data import load_dataset
    from ..embedding.export import export_onnx
    from ..evaluate.attacks import finetune, onnx_int8_dynamic
    from ..evaluate.models import factories, onnx_to_torch

    data = load_dataset(ws.config)
    make_model, _ = factories(ws.config)
    copy = onnx_to_torch((ws.root / "models" / "issued" / f"{LEAKER}.onnx").read_bytes(), make_model, data.x_val[:64])
    tuned = finetune(copy, data.x_attack, data.y_attack, epochs=5, lr=1e-3)
    leaked = ws.root / "leaked" / "found-on-a-competitor-device.onnx"
    leaked.parent.mkdir(exist_ok=True)
    leaked.write_bytes(onnx_int8_dynamic(export_onnx(tuned, ws.config.task)))  # quiet: it mutes onnxruntime's advice
    return leaked


def run_demo(*, keep: Path | None = None, console: Console | None = None) -> DemoResult:
    from ..embedding import Issuer
    from ..examples import example_config, prepare_example
    from ..identify import identify_model
    from ..keys.keyring import load_public_key
    from ..probing.formats import make_format
    from ..probing.session import ProbeOptions, probe_endpoint
    from ..report import write_report
    from ..workspace import init_workspace
    from .serve import LoopbackModelServer

    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    root = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="tracer-demo-")) / "workspace"
    say = lambda text: console.print(f"[bold cyan]>[/] {escape(text)}")  # noqa: E731  (paths may hold brackets)

    say(f"1/7 creating a workspace in {root} (digits example: scikit-learn's 8x8 handwritten digits)")
    ws = init_workspace(root, passphrase=DEMO_PASSPHRASE, config_text=example_config("digits"))
    prepare_example(ws, "digits", progress=True)
    keyring = ws.unlock(passphrase=DEMO_PASSPHRASE)

    say("2/7 issuing a watermarked copy to each of three customers")
    issuer = Issuer(ws, keyring)
    with progress_bar(console) as progress:
        for cid, name in CUSTOMERS:
            task = progress.add_task(f"  {name}", total=issuer.config.embedding.steps)
            rep = issuer.issue(cid, name=name, on_step=lambda s, task=task: progress.update(task, completed=s))
            progress.remove_task(task)
            console.print(f"    {name:<20} clean accuracy {rep.clean_accuracy:.3f} (base {rep.base_accuracy:.3f}), "
                          f"trigger accuracy {rep.trigger_accuracy:.2f}, sha256 {rep.sha256[:16]}...", markup=False)

    say(f"3/7 {dict(CUSTOMERS)[LEAKER]} leaks its copy; the leaker fine-tunes it on its own data and quantizes it to int8")
    leaked = _leak(ws, keyring, console)

    say("4/7 identifying the leaked file")
    found = identify_model(ws, keyring, leaked)
    top = found.candidates[0]
    console.print(f"    verdict: {found.verdict}, named {found.customers} with {top.matches}/{top.trials} probe matches, p = {top.p_value:.2g}", markup=False)

    say("5/7 serving the leaked model over HTTP on loopback and probing it as a black box (label-only answers)")
    with LoopbackModelServer(leaked) as server:
        probed = probe_endpoint(ws, keyring, server.url, make_format("kserve-v1", ws.config.task), ProbeOptions())
    console.print(f"    verdict: {probed.verdict}, named {probed.customers} after {probed.extra.get('trigger_queries')} trigger queries "
                  f"({probed.queries} requests with decoys)", markup=False)

    say("6/7 verifying the ledger")
    with ws.ledger() as ledger:
        count, head = ledger.verify(load_public_key(ws.public_key_pem()))
    console.print(f"    {count} signed entries, chain intact, head {head[:16]}...", markup=False)

    say("7/7 writing the report")
    report, evidence = write_report(ws, keyring, found, ws.root / "reports" / "leak-report.html")

    return DemoResult(
        workspace=ws.root, leaked_model=leaked, report=report, evidence=evidence,
        identify_customers=list(found.customers), probe_customers=list(probed.customers),
        probe_queries=probed.queries, probe_trigger_queries=int(probed.extra.get("trigger_queries", 0)),
        ledger_entries=count, seconds=round(time.perf_counter() - t0, 1),
    )

