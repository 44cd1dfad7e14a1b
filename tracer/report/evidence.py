"""Signed JSON evidence of one identification, verifiable offline with the public key alone.

The document::

    {"format": "tracer-evidence/1",
     "created": UTC ISO-8601,
     "tracer_version": str,
     "result": IdentificationResult.full(),          # every customer's score
     "issuances": [Entry.to_json(), ...],             # every signed issuance of each named customer
     "identification_entry": Entry.to_json() | null,  # the signed ledger record of this identification
     "public_key": PEM,                               # informational only: never trusted by the verifier
     "public_key_sha256": hex,                        # fingerprint of the signing key (informational)
     "signature": base64 Ed25519}

``signature`` is Ed25519 over ``b"tracer-evidence/v1\\0"`` + the RFC 8785 canonical
JSON of every other field. Each embedded ledger entry also carries its own hash
and signature (``tracer.ledger.entries``), which :func:`check_evidence` recomputes
and checks with the key the *verifier* supplies, so a forged document fails even if
it embeds a PEM of the forger's own key.

Nothing secret goes in: no master secret, no codewords, no probe inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .. import __version__
from .._jsonable import jsonable
from ..errors import LedgerTampered
from ..identify.result import IdentificationResult
from ..keys.keyring import public_pem
from ..ledger.entries import _ENTRY_DOMAIN, Entry, canonical, entry_hash, sign_blob, utc_now, verify_blob
from ..probing.urls import redact_url  # the one redaction of URL credentials, used wherever a URL is written

__all__ = [
    "EVIDENCE_FORMAT",
    "EVIDENCE_DOMAIN",
    "IDENTIFICATION_KINDS",
    "EvidenceCheck",
    "build_evidence",
    "check_evidence",
    "verify_evidence",
    "key_fingerprint",
    "safe_extra",
]

EVIDENCE_FORMAT = "tracer-evidence/1"
EVIDENCE_DOMAIN = b"tracer-evidence/v1\0"
IDENTIFICATION_KINDS = ("identification", "probe-result", "evaluation")

# result.extra keys that could carry secret material (probe inputs, codewords, keys): never exported.
_SECRET_HINTS = ("input", "codeword", "master", "secret", "trigger_labels", "labels", "passphrase", "private", "answers", "probes")
# numeric or descriptive extras that are known to be safe even though they contain a hinted word
_SAFE_EXTRAS = ("trigger_queries",)


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: short enough to read out over the phone."""
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def safe_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """The part of ``result.extra`` that may be published: no secrets, no probe inputs, JSON only."""
    out: dict[str, Any] = {}
    for key, value in extra.items():
        k = str(key).lower()
        if k not in _SAFE_EXTRAS and any(h in k for h in _SECRET_HINTS):
            continue
        if isinstance(value, str) and ("endpoint" in k or "url" in k):
            value = redact_url(value)
        if isinstance(value, (list, tuple)) and len(value) > 64:
            continue  # long vectors are per-probe data (inputs or answers): keep them private
        try:
            out[str(key)] = jsonable(value)
        except TypeError:
            continue  # arrays, objects: not evidence
    return out


def _result_doc(result: IdentificationResult) -> dict[str, Any]:
    return jsonable(replace(result, extra=safe_extra(result.extra)).full())


def build_evidence(
    result: IdentificationResult,
    *,
    issuances: list[Entry],
    identification_entry: Entry | None,
    signing_key: Ed25519PrivateKey,
    created: str | None = None,
) -> dict[str, Any]:
    """The signed evidence document (a plain dict, ready for ``json.dumps``)."""
    pub = signing_key.public_key()
    body: dict[str, Any] = {
        "format": EVIDENCE_FORMAT,
        "created": created or utc_now(),
        "tracer_version": __version__,
        "result": _result_doc(result),
        "issuances": [e.to_json() for e in issuances],
        "identification_entry": identification_entry.to_json() if identification_entry is not None else None,
        "public_key": public_pem(pub).decode("ascii"),
        "public_key_sha256": key_fingerprint(pub),
    }
    # values are plain JSON already (jsonable, Entry payloads), so json.dumps -> json.loads gives back
    # exactly this body and the verifier re-canonicalizes the same bytes
    return {**body, "signature": sign_blob(signing_key, EVIDENCE_DOMAIN, canonical(body))}


@dataclass
class EvidenceCheck:
    """What :func:`check_evidence` found: the checks that passed and those that failed (one line each)."""

    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _check_entry(raw: Any, key: Ed25519PublicKey, label: str, check: EvidenceCheck) -> Entry | None:
    try:
        e = Entry.from_json(raw)
    except (KeyError, TypeError, ValueError):
        check.failed.append(f"{label} is malformed")
        return None
    label = f"{label} (ledger entry {e.seq})"
    try:
        recomputed = entry_hash(e.seq, e.kind, e.time, e.prev, e.payload)
    except Exception:
        check.failed.append(f"{label} cannot be canonicalized (modified)")
        return None
    if recomputed != e.hash:
        check.failed.append(f"{label} was modified (its content no longer matches its hash)")
        return None
    try:
        digest = bytes.fromhex(e.hash)
    except ValueError:
        check.failed.append(f"{label} has a malformed hash")
        return None
    if not verify_blob(key, _ENTRY_DOMAIN, digest, e.signature):
        check.failed.append(f"{label} has an invalid signature (forged, or signed by another key)")
        return None
    check.passed.append(f"{label}: hash and signature valid")
    return e


def check_evidence(doc: Any, public_key: Ed25519PublicKey) -> EvidenceCheck:
    """Check every part of an evidence document with the verifier's key; never raises on bad content."""
    check = EvidenceCheck()
    try:
        _check_document(doc, public_key, check)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # fields of the wrong type: modified
        check.failed.append(f"the evidence is malformed ({type(exc).__name__}: {exc})")
    return check


def _check_document(doc: Any, public_key: Ed25519PublicKey, check: EvidenceCheck) -> None:
    """Every check of one evidence document, each failure recorded in ``check`` (none raises)."""
    if not isinstance(doc, dict):
        check.failed.append("the evidence is not a JSON object")
        return
    result = _check_shape(doc, check)
    issuances, ident = _check_entries(doc, public_key, check)  # 1. every embedded ledger entry, on its own
    _check_signature(doc, public_key, check)  # 2. the whole document's signature
    _check_agreement(result, issuances, ident, check)  # 3. the parts agree with each other


def _check_shape(doc: dict, check: EvidenceCheck) -> dict:
    """Format, result and signature fields present; returns the result object ({} when missing)."""
    if doc.get("format") != EVIDENCE_FORMAT:
        check.failed.append(f"unknown evidence format {doc.get('format')!r} (expected {EVIDENCE_FORMAT!r})")
    result = doc.get("result")
    if not isinstance(result, dict):
        check.failed.append("the evidence has no result")
        result = {}
    if "signature" not in doc or not isinstance(doc.get("signature"), str):
        check.failed.append("the evidence is not signed")
    return result


def _check_entries(doc: dict, public_key: Ed25519PublicKey, check: EvidenceCheck) -> tuple[list[Entry], Entry | None]:
    """The embedded issuance records and identification record, each hash recomputed and signature checked."""
    raw_issuances = doc.get("issuances")
    if not isinstance(raw_issuances, list):
        check.failed.append("the evidence has no list of issuances")
        raw_issuances = []
    issuances = []
    for i, raw in enumerate(raw_issuances, start=1):
        who = raw.get("payload", {}).get("customer_id") if isinstance(raw, dict) and isinstance(raw.get("payload"), dict) else None
        e = _check_entry(raw, public_key, f"issuance record {i}" + (f" of {who}" if who else ""), check)
        if e is None:
            continue
        if e.kind != "issuance":
            check.failed.append(f"ledger entry {e.seq} is a {e.kind!r} entry, not an issuance")
        else:
            issuances.append(e)
    ident = None
    if doc.get("identification_entry") is not None:
        ident = _check_entry(doc["identification_entry"], public_key, "identification record", check)
        if ident is not None and ident.kind not in IDENTIFICATION_KINDS:
            check.failed.append(f"ledger entry {ident.seq} is a {ident.kind!r} entry, not an identification")
            ident = None
    return issuances, ident


def _check_signature(doc: dict, public_key: Ed25519PublicKey, check: EvidenceCheck) -> None:
    if not isinstance(doc.get("signature"), str):
        return  # already recorded as "not signed"
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        data = canonical(body)
    except Exception:
        check.failed.append("the evidence cannot be canonicalized (modified)")
        return
    if verify_blob(public_key, EVIDENCE_DOMAIN, data, doc["signature"]):
        check.passed.append(f"evidence signature valid (Ed25519, key sha256 {key_fingerprint(public_key)[:16]}...)")
    else:
        check.failed.append("the evidence signature is invalid (the file was modified, or it was not signed with this key)")


def _check_agreement(result: dict, issuances: list[Entry], ident: Entry | None, check: EvidenceCheck) -> None:
    """Named customers have signed issuance records, the verdict fits them, and the identification record agrees."""
    customers = result.get("customers")
    if not isinstance(customers, list) or not all(isinstance(c, str) for c in customers):
        check.failed.append("the result names no customer list")
        customers = []
    issued_to = {e.payload.get("customer_id") for e in issuances}
    missing = [c for c in customers if c not in issued_to]
    if missing:
        check.failed.append(f"no signed issuance record for named customer {missing[0]}")
    elif customers:
        check.passed.append(f"every named customer ({', '.join(map(str, customers))}) has a signed issuance record")
    if result.get("verdict") not in ("match", "no_match") or (result.get("verdict") == "match") != bool(customers):
        check.failed.append(f"the verdict {result.get('verdict')!r} does not fit the named customers")
    if ident is None:
        return
    p = ident.payload
    mismatched = [
        name for name, mine, theirs in (
            ("suspect sha256", result.get("model_sha256"), p.get("suspect_sha256", result.get("model_sha256"))),
            ("verdict", result.get("verdict"), p.get("verdict", result.get("verdict"))),
            ("customers", customers, p.get("customers", customers)),
        ) if mine != theirs
    ]
    if result.get("ledger_entry") is not None and result.get("ledger_entry") != ident.seq:
        mismatched.append("ledger entry number")
    if mismatched:
        check.failed.append(f"the identification record (ledger entry {ident.seq}) disagrees with the result: {', '.join(mismatched)}")
    else:
        check.passed.append(f"the identification record (ledger entry {ident.seq}) agrees with the result")


def verify_evidence(doc: Any, public_key: Ed25519PublicKey) -> list[str]:
    """Return the checks that passed; raise :class:`LedgerTampered` (one line) if any failed."""
    check = check_evidence(doc, public_key)
    if check.failed:
        raise LedgerTampered(
            "evidence check failed: " + "; ".join(check.failed),
            hint="the evidence file was modified, or the public key is not the one that signed it",
        )
    return check.passed
