"""The rank-code channel of an identification: read the suspect's scores on the vendor's validation inputs.

See :mod:`tracer.fingerprint.rankcode` for the code and :func:`tracer.fingerprint.stats.rank_code_tails`
for its exact null. Which customers are read is fixed by the ledger (copies whose record carries a
``rank-code/v1`` entry), and whether the channel is read at all by the suspect's output type and the
vendor's data: neither looks at any customer's code, so leaving the channel out (no Bonferroni factor)
keeps the key test's p-value exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fingerprint import rankcode
from ..ledger import Ledger

__all__ = ["RankScores", "read_rank_code"]


@dataclass
class RankScores:
    """Per customer (in the scored table's order): whether its copies carry a rank code, concordant pairs, exact p."""

    carried: np.ndarray  # bool
    concordant: np.ndarray  # int64; 0 where not carried
    p: np.ndarray  # 1.0 where not carried
    log10_p: np.ndarray  # 0.0 where not carried
    pairs: int  # pairs read: classes read x (C-1)(C-2)/2
    classes: int  # classes with validation inputs
    inputs: int  # validation inputs sent to the suspect

    def summary(self) -> dict:
        """The ``rank_code`` block of the result document."""
        return {"read": True, "style": rankcode.RANK_CODE_STYLE, "queries": self.inputs, "classes": self.classes,
                "pairs": self.pairs, "carriers": int(self.carried.sum()), "chance": self.pairs / 2}


#: why the channel was not read, in the ``rank_code`` block
NO_SCORES = "the suspect returns class indices, not scores"


def _not_read(reason: str) -> dict:
    """The ``rank_code`` block when the channel is not read, and why."""
    return {"read": False, "style": rankcode.RANK_CODE_STYLE, "reason": reason}


def read_rank_code(ledger: Ledger, master: bytes, ids: Sequence[str], *, num_classes: int,
                   scores: Callable[[np.ndarray], np.ndarray | None] | None,
                   validation: Callable[[], tuple[np.ndarray, np.ndarray]],
                   cache_dir: Path | None = None) -> tuple[RankScores | None, dict | None]:
    """(scores of the channel or None, its ``rank_code`` block or None when no copy carries one).

    ``scores(x)`` returns the suspect's raw outputs (None: class indices only); ``validation()`` the
    vendor's validation inputs and labels; ``cache_dir``: the encrypted codeword cache the codes are kept in.
    """
    if not rankcode.applicable(num_classes):
        return None, None
    carriers = ledger.rank_coded_customers(rankcode.RANK_CODE_STYLE)
    if not carriers:
        return None, None
    if scores is None:
        return None, _not_read(NO_SCORES)
    x_val, y_val = validation()
    raw = scores(x_val)
    logs = None if raw is None else rankcode.log_scores(raw)
    if logs is None or logs.shape != (len(x_val), num_classes):
        return None, _not_read(NO_SCORES)
    profiles, read = rankcode.class_profiles(logs, y_val, num_classes)
    all_ids = list(ids)
    carried = np.fromiter((cid in carriers for cid in all_ids), dtype=bool, count=len(all_ids))
    rows = np.flatnonzero(carried)
    concordant = np.zeros(len(all_ids), dtype=np.int64)
    classes = int(read.sum())
    concordant[rows] = rankcode.concordant_pairs(profiles, read, rankcode.rank_matrix(master, [all_ids[i] for i in rows], num_classes,
                                                                                  cache_dir=cache_dir))
    p, logp = np.ones(len(all_ids)), np.zeros(len(all_ids))
    p[rows], logp[rows] = rankcode.rank_p_values(concordant[rows], num_classes=num_classes, classes_read=classes)
    out = RankScores(carried=carried, concordant=concordant, p=p, log10_p=logp,
                     pairs=classes * (num_classes - 1) * (num_classes - 2) // 2, classes=classes, inputs=len(x_val))
    return out, out.summary()
