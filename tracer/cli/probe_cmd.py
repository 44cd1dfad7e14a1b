"""`tracer probe URL`."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import typer

from ..errors import TracerError, UsageError
from ..probing.client import DEFAULT_MAX_RESPONSE_BYTES
from ..probing.plan import resolve_format
from ._common import EXIT_CODES_SEE, JsonOpt, WorkspaceOpt, err, handle_errors, workspace
from .identify_cmd import AlphaOpt, ReportOpt, show_result

HELP = (
    "Find out whether a prediction API serves one of our copies, and whose, with as few trigger queries as possible.\n\n"
    "Sends the triggers of one probe set, shuffled among decoys (ordinary validation inputs), one input per request, "
    "and stops as soon as an anytime-valid sequential test decides at --alpha. Every request and answer is journaled "
    "in the ledger; an interrupted probe continues with --resume SESSION.\n\n"
    "Formats: kserve-v1 (TF Serving, {\"instances\": [...]}), open-inference (KServe v2 / Triton), torchserve "
    "(PNG body), template (--request-template FILE with \"$INPUT\" or $INPUT_PNG_B64; --response-path a.b.0).\n\n"
    "Credentials in the URL (user:password@, query parameters named like key, token, secret, signature...) are never "
    "written: the journal, evidence and output keep the URL redacted, plus its HMAC under a key derived from the master "
    "secret. Each try has a deadline (--timeout) and a size cap (--max-response-bytes); each request is journaled before "
    "it is sent, so --budget holds across --resume.\n\n"
    "With --rank-code it sends no key at all: only the vendor's validation inputs, once each, and it reads the rank code from "
    "the answers' scores (a copy behind a query filter, or a student distilled from its scores, is named that way).\n\n"
    "Exit 0 on match, 1 on no match, 3 when the endpoint fails or answers nonsense. " + EXIT_CODES_SEE
)


# Usage checks run as option callbacks, while the command line is parsed: a bad value is a usage error (exit 2).


def _url(value: str | None) -> str | None:
    if value is not None and not value.lower().startswith(("http://", "https://")):
        raise UsageError(f"URL must start with http:// or https://, not {value!r}")
    return value


def _positive(ctx: typer.Context, param: typer.CallbackParam, value):
    if value is not None and not value > 0:
        raise UsageError(f"{param.opts[0]} must be positive, not {value:g}")
    return value


def _at_least(low: int):
    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        if value is not None and value < low:
            raise UsageError(f"{param.opts[0]} must be at least {low}, not {value}")
        return value

    return check


def _encoding(value: str | None) -> str | None:
    if value is not None and value not in ("tensor", "png"):
        raise UsageError(f"--input-encoding must be tensor or png, not {value!r}")
    return value


def _format(value):
    from ..probing import FORMATS

    if value is not None and value not in FORMATS:
        raise UsageError(f"--format: unknown format {value!r}; choose one of {', '.join(FORMATS)}")
    return value


def _headers(values):
    from ..probing import parse_header

    out = []
    for h in values or []:
        try:
            out.append(parse_header(h))
        except TracerError as exc:
            raise UsageError(f"--header: {exc.message}") from exc
    return out


def _status(json_out: bool):
    """Callbacks that show the session id and a live status line on stderr (none with --json)."""
    from rich.status import Status

    status = Status("probing...", console=err) if not json_out else None

    def on_start(session: str) -> None:
        if status is not None:
            err.print(f"probe session {session} (continue an interrupted probe with --resume {session})", markup=False)
            status.start()

    def on_progress(p: dict) -> None:
        if status is not None:
            status.update(f"{p['queries']} requests, {p['triggers_sent']} triggers sent, {p['trigger_answers']} scored; "
                          f"best log10 p {p['best_log10_p']:.1f}")

    return status, on_start, on_progress


def _rank_progress(status):
    """The live status line of a --rank-code read."""
    if status is None:
        return None
    status.start()

    def on_progress(p: dict) -> None:
        status.update(f"{p['queries']} requests, {p['answered']} of {p['inputs']} natural inputs answered")

    return on_progress


def register(app: typer.Typer) -> None:
    @app.command("probe", help=HELP)
    @handle_errors
    def probe(
        url: str = typer.Argument(None, metavar="URL", callback=_url,
            help="The prediction endpoint (http:// or https:// URL the inputs are POSTed to); optional with --resume."),
        fmt: str = typer.Option(None, "--format", "-f", callback=_format,
            help="kserve-v1 | open-inference | torchserve | template (on --resume: the session's)."),
        request_template: Path = typer.Option(None, "--request-template", help="--format template: JSON request with \"$INPUT\" / $INPUT_PNG_B64."),
        response_path: str = typer.Option(None, "--response-path", help="Dotted path to the class in the answer, e.g. result.class_id or predictions.0."),
        label_map: Path = typer.Option(None, "--label-map", help="JSON {label: class index}, a JSON list of labels, or one label per line."),
        header: list[str] = typer.Option(None, "--header", "-H", callback=_headers,
            help="\"Name: value\" sent with every request (repeatable); values are never journaled. "
                 "An Authorization header wins over user:password in the URL."),
        timeout: float = typer.Option(30.0, "--timeout", callback=_positive,
            help="Deadline in seconds for one try of a request, connect to last byte; then it is retried."),
        max_response_bytes: int = typer.Option(DEFAULT_MAX_RESPONSE_BYTES, "--max-response-bytes", callback=_at_least(1),
            help="Largest answer accepted, on the wire and decompressed (default 1 MiB); a larger one is a failed try."),
        rate: float = typer.Option(None, "--rate", callback=_positive, help="At most this many requests per second (default: no limit)."),
        concurrency: int = typer.Option(4, "--concurrency", callback=_at_least(1), help="Requests in flight at once (1 reveals the fewest triggers)."),
        budget: int = typer.Option(None, "--budget", callback=_at_least(1),
            help="Most HTTP requests to send in the whole session, retries and earlier runs included (default: twice the schedule)."),
        retries: int = typer.Option(4, "--retries", callback=_at_least(0), help="Retries per query on errors, timeouts, 5xx and 429."),
        alpha: float = AlphaOpt,
        probe_set: str = typer.Option(None, "--probe-set", help="Key set to draw from: pool2 (natural-mix/v2), pool3 (natural-mix/v3), pool1 (natural-mix/v1), or a probe set ps1, ps2, ... (default: the pool when copies carry it, else the first probe set not yet revealed)."),
        decoys: int = typer.Option(None, "--decoys-per-trigger", callback=_at_least(0),
            help="Ordinary validation inputs sent per trigger, in random order (default 1)."),
        input_encoding: str = typer.Option(None, "--input-encoding", callback=_encoding,
            help="kserve-v1: tensor (nested lists, the default) or png ({\"b64\": PNG})."),
        input_name: str = typer.Option(None, "--input-name", help="open-inference: the model's input tensor name (default: input)."),
        rank_code: bool = typer.Option(False, "--rank-code",
            help="Send no keys: read the rank code from the endpoint's scores on the vendor's validation inputs only "
                 "(ordinary queries a filter cannot single out; needs scores, and copies that carry the code). Not resumable."),
        resume: str = typer.Option(None, "--resume",
            help="Continue an interrupted probe session (its id is printed at the start); the URL and unset options are the session's."),
        report: Path = ReportOpt,
        json_out: bool = JsonOpt,
        _workspace: str = WorkspaceOpt,
    ) -> None:
        from ..probing import ClientOptions, FormatChoice, ProbeOptions, ProbeSession

        ws = workspace()
        choice = FormatChoice(fmt, request_template, response_path, label_map, input_name, input_encoding)
        client = ClientOptions(timeout=timeout, rate=rate, concurrency=concurrency, max_retries=retries,
                               headers=dict(cast("list[tuple[str, str]]", header or [])), max_response_bytes=max_response_bytes)
        options = ProbeOptions(alpha=alpha, budget=budget, decoys_per_trigger=decoys, probe_set=probe_set, client=client)
        if url is None and resume is None:
            raise UsageError("give the endpoint URL", hint="tracer probe URL --format FORMAT, or tracer probe --resume SESSION")
        if rank_code and (resume is not None or probe_set is not None or decoys is not None):
            raise UsageError("--rank-code sends no keys and is not resumed: it takes no --resume, --probe-set or --decoys-per-trigger")
        if resume is None:
            resolve_format(choice, ws.config.task)  # usage errors before the passphrase is asked for
        keyring = ws.unlock()
        status, on_start, on_progress = _status(json_out)
        try:
            if rank_code:
                from ..probing import probe_rank_code

                result = probe_rank_code(ws, keyring, url, choice, options, on_progress=_rank_progress(status))
            else:
                result = ProbeSession(ws, keyring, url, choice, options, resume=resume, on_progress=on_progress, on_start=on_start).run()
        finally:
            if status is not None:
                status.stop()
        if report is not None:
            from ..report import write_report

            html_path, evidence_path = write_report(ws, keyring, result, report)
            err.print(f"report: {html_path}\nevidence: {evidence_path}", markup=False)
        if not json_out:
            x = result.extra
            sent = (f"{x['decoy_queries']} natural queries and no key" if rank_code else
                    f"{x['trigger_queries']} trigger and {x['decoy_queries']} decoy queries")
            err.print(f"{sent}, {result.queries} HTTP requests; stopped: {x['stopped']}; session {x['session']}", markup=False)
            if x.get("rank_code_probe"):
                err.print(f"hint: {x['rank_code_probe']['why']}: {x['rank_code_probe']['command']}", markup=False)
        show_result(result, json_out=json_out)
