"""One evaluation: the attack suite on a copy plus the false-accusation study, as one JSON document."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..keys.keyring import Keyring
from ..workspace import Workspace
from .false_accusation import FalseAccusationResult
from .suite import SuiteResult

__all__ = ["Evaluation", "record_evaluation"]


@dataclass
class Evaluation:
    suite: SuiteResult
    false_accusation: FalseAccusationResult | None = None
    ledger_entry: int | None = None

    @property
    def false_accusations(self) -> int:
        """Innocent customers named anywhere: after an attack, or for an independent model."""
        n = sum(bool(a.named_others) for a in self.suite.attacks) + bool(self.suite.reference.named_others)
        return n + (self.false_accusation.named_count if self.false_accusation else 0)

    def verdict(self) -> str:
        s = self.suite.to_json()["summary"]
        text = f"survived {s['survived']} of {s['valid']} valid attacks"
        if s["erased"]:
            text += f" (erased by {', '.join(s['erased'])})"
        if self.false_accusation is not None:
            text += f"; {self.false_accusation.named_count} of {len(self.false_accusation.models)} independent models named"
        return text

    def to_json(self) -> dict[str, Any]:
        doc = self.suite.to_json()
        doc["false_accusation"] = self.false_accusation.to_json() if self.false_accusation else None
        doc["false_accusations"] = self.false_accusations
        doc["verdict"] = self.verdict()
        doc["ledger_entry"] = self.ledger_entry
        doc["tracer_version"] = __version__
        return doc


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def record_evaluation(ws: Workspace, keyring: Keyring, ev: Evaluation) -> int:
    """Append a signed summary of the evaluation to the ledger; returns the entry's seq."""
    s = ev.suite
    payload = {
        "subject": f"evaluation of the copy issued to {s.customer}",
        "verdict": ev.verdict(),
        "customer_id": s.customer,
        "model_sha256": s.model_sha256,
        "copy_accuracy": s.copy_accuracy,
        "alpha": s.alpha,
        "accuracy_budget": s.budget,
        "attacker_data": {"source": s.attacker_data, "size": s.attacker_size, "case": s.attacker_case},
        "attacks": [
            {"name": a.name, "verdict": a.verdict, "clean_accuracy": a.clean_accuracy, "matches": a.matches, "trials": a.trials,
             "log10_p": _finite(a.log10_p), "named": a.named, "params": {k: v for k, v in a.params.items() if isinstance(v, (int, float, str))}}
            for a in s.attacks
        ],
        "false_accusation": None if ev.false_accusation is None else {
            "models": len(ev.false_accusation.models), "named": ev.false_accusation.named_count,
            "log10_smallest_p": _finite(min(m.log10_smallest_p for m in ev.false_accusation.models)) if ev.false_accusation.models else None,
        },
        "tracer_version": __version__,
    }
    with ws.ledger() as ledger:
        entry = ledger.append("evaluation", payload, key=keyring.signing_key)
    ev.ledger_entry = entry.seq
    return entry.seq
