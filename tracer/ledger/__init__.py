"""The evidence ledger: signed, hash-chained entries in SQLite (``store``), pure chain logic (``entries``)."""

from .entries import Entry, canonical, utc_now, verify_chain
from .export import export_lines, read_export, verify_export
from .listing import PER_REQUEST_KINDS, Listing, list_entries, parse_time, summary
from .store import Checkpoint, Ledger, make_checkpoint, read_checkpoint, verify_checkpoint

__all__ = ["Entry", "Ledger", "Checkpoint", "canonical", "utc_now", "verify_chain", "make_checkpoint", "read_checkpoint",
           "verify_checkpoint", "export_lines", "read_export", "verify_export", "PER_REQUEST_KINDS", "Listing",
           "list_entries", "parse_time", "summary"]
