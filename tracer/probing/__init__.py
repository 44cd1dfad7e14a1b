"""`tracer probe`: identify the customer behind a black-box prediction API.

``formats`` (wire protocols and answer parsing), ``client`` (async HTTP with
budget, rate limit, retries), ``sequential`` (the anytime-valid test),
``plan`` (the frozen session plan, resume merging, journal replay),
``session`` (the query loop, decision, result), ``urls`` (credential redaction).
"""

from .client import ClientOptions, ProbeClient, parse_header
from .formats import FORMATS, WireFormat, decode_png, encode_png, interpret, make_format
from .plan import FormatChoice, JournalState, SessionPlan, resolve_format
from .rank_probe import probe_rank_code
from .sequential import DEFAULT_GRID, METHOD, EProcess, mixture_log_e
from .session import ProbeOptions, ProbeSession, find_session, make_schedule, probe_endpoint, revealed_probe_sets
from .urls import Endpoint, redact_url, url_hmac

__all__ = [
    "ClientOptions", "ProbeClient", "parse_header",
    "FORMATS", "WireFormat", "decode_png", "encode_png", "interpret", "make_format",
    "DEFAULT_GRID", "METHOD", "EProcess", "mixture_log_e",
    "ProbeOptions", "ProbeSession", "find_session", "make_schedule", "probe_endpoint", "probe_rank_code", "revealed_probe_sets",
    "FormatChoice", "JournalState", "SessionPlan", "resolve_format", "Endpoint", "redact_url", "url_hmac",
]
