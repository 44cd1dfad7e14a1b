"""`tracer demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import EXIT_CODES_SEE, JsonOpt, err, handle_errors, out, print_json


def register(app: typer.Typer) -> None:
    @app.command("demo", help="The whole story in two minutes: issue three copies, leak one, identify it from the file and over HTTP.\n\n" + EXIT_CODES_SEE)
    @handle_errors
    def demo(
        keep: Path = typer.Option(None, "--keep", help="Create the demo workspace here and keep it (default: a temporary folder)."),
        json_out: bool = JsonOpt,
    ) -> None:
        from ..demo import run_demo

        r = run_demo(keep=keep, console=err)
        doc = {
            "workspace": str(r.workspace), "leaked_model": str(r.leaked_model), "report": str(r.report), "evidence": str(r.evidence),
            "identify_customers": r.identify_customers, "probe_customers": r.probe_customers, "probe_queries": r.probe_queries,
            "probe_trigger_queries": r.probe_trigger_queries, "ledger_entries": r.ledger_entries, "seconds": r.seconds,
        }
        if json_out:
            print_json(doc)
        else:
            ws = r.workspace
            by_file, by_http = ", ".join(r.identify_customers) or "nobody", ", ".join(r.probe_customers) or "nobody"
            out.print(f"""
Done in {r.seconds:.0f} s. The leaked copy was traced to {by_file} from the file, and to {by_http} over HTTP.

  workspace     {ws}
  leaked model  {r.leaked_model}
  report        {r.report}   (open it in a browser)
  evidence      {r.evidence}
  ledger        {ws / 'tracer.db'} ({r.ledger_entries} signed entries)

What to run next (the demo passphrase is in tracer/demo/__init__.py; it guards throwaway keys):
  export TRACER_WORKSPACE={ws} TRACER_PASSPHRASE=tracer-demo-only-not-a-secret
  tracer ledger list
  tracer identify {r.leaked_model}
  tracer evaluate --customer globex --attacks pruning,quantization
  tracer init my-workspace      # then describe your own model in tracer.toml (see README)""", markup=False, highlight=False)
        ok = r.identify_customers == ["globex"] and r.probe_customers == ["globex"]
        raise typer.Exit(0 if ok else 1)
