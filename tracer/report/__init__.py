"""Reports of an identification: a self-contained HTML page and a signed JSON evidence file.

``write_report(ws, keyring, result, html_path)`` writes both (``report.html`` and
``report.evidence.json``); ``verify_evidence(doc, public_key)`` checks an evidence
document with nothing but the vendor's public key.
"""

from .evidence import EVIDENCE_FORMAT, EvidenceCheck, build_evidence, check_evidence, verify_evidence
from .html import evidence_path_for, render_html, write_report

__all__ = ["write_report", "verify_evidence", "check_evidence", "build_evidence", "EvidenceCheck", "EVIDENCE_FORMAT",
           "evidence_path_for", "render_html"]
