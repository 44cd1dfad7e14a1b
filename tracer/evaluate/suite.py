"""The attack suite: attack an issued copy every way :mod:`.attacks` knows, then identify what is left.

For each attack: clean accuracy on the vendor's held-out validation data, the
watermark agreement with the attacked customer (matches / trials over every
probe set), the exact p-value, whether identification names the right
customer(s) and whether it names anyone else. Identification is the very code
`tracer identify` runs (:func:`tracer.identify.identify_predictor`, Holm over
all issued customers at alpha), not a second copy of the statistics.

Validity (Lukas et al., "SoK: How Robust is Image Classification Deep Neural
Network Watermarking?", IEEE S&P 2022): an attack that costs the copy more
than 5 points of clean accuracy destroys what the leaker wanted to steal, so
it is reported as "not a valid attack" whatever happens to the watermark.

Evasion rows (a query filter in front of the copy) also carry ``evasion``: the
detector's AUC between the key inputs and natural inputs, the share of each
it flags, and ``probe``, the outcome of `tracer probe` (default options)
against a loopback server running the filter, on a scratch copy of the ledger
(:mod:`.evasion`), so that evaluating spends none of the workspace's keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data import attacker_share_case, load_dataset
from ..identify import identify_predictor
from ..keys.keyring import Keyring
from ..training import accuracy
from ..workspace import Workspace
from .attacks import ACCURACY_BUDGET, ATTACKS, AttackContext, Predictor, resolve_attacks, torch_predictor
from .evasion import key_inputs, probe_through_filter, rank_read_through_filter
from .models import IssuedCopy, attacker_data, factories, issued_copies, load_copy, training_recipe

__all__ = ["AttackResult", "SuiteResult", "run_suite", "VERDICTS"]

VERDICTS = {
    "survives": "identification names the attacked customer(s) and nobody else",
    "partly survives": "collusion: some but not all colluders are named, nobody else",
    "erased": "a valid attack after which the attacked customer is no longer named",
    "not a valid attack": "clean accuracy fell more than 5 points below the copy's: the stolen model lost its value",
    "FALSE ACCUSATION": "a customer whose copy was not used was named",
    "skipped": "the attack does not apply to this workspace",
    "error": "the attack could not be carried out",
}


@dataclass
class AttackResult:
    name: str
    group: str
    description: str
    params: dict = field(default_factory=dict)
    clean_accuracy: float | None = None
    accuracy_drop: float | None = None  # copy's clean accuracy minus the attacked model's (fraction)
    valid: bool | None = None  # within the accuracy budget
    matches: int | None = None  # with the attacked customer
    trials: int | None = None
    agreement: float | None = None  # matches / trials
    p_value: float | None = None  # the attacked customer's exact p-value
    log10_p: float | None = None  # combined with the rank code's where it was read (the p-value identify decides on)
    key_log10_p: float | None = None  # the rank code was read: the keys' own log10 p, and the rank code's
    rank_concordant: int | None = None
    rank_pairs: int | None = None
    rank_log10_p: float | None = None
    right: list[str] = field(default_factory=list)  # customers whose copies went into the attacked model
    named: list[str] = field(default_factory=list)  # customers identification names
    named_right: int = 0  # how many of ``right`` are named
    named_others: list[str] = field(default_factory=list)  # named but not in ``right``: a false accusation
    weakest_right_log10_p: float | None = None  # collusion: the least significant colluder
    verdict: str = "skipped"
    note: str = ""
    seconds: float = 0.0
    evasion: dict | None = None  # evasion attacks: detector, answer, auc, keys(_flagged), decoys(_flagged), probe

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SuiteResult:
    customer: str
    display_name: str
    model_path: str
    model_sha256: str
    copy_accuracy: float
    base_accuracy: float | None
    alpha: float
    issued_customers: int
    attacker_data: str
    attacker_size: int
    validation_size: int
    budget: float
    reference: AttackResult  # the copy as issued, unattacked
    attacks: list[AttackResult]
    seconds: float
    attacker_case: str = "vendor"  # "vendor" | "held_out" | "legacy": see tracer.data.attacker_share_case
    #: the issuance's recorded key separation (tracer.separation.key_separation, the gate's figure) and the gate's limit;
    #: None where the copy was issued without the gate (noise probe sets, earlier styles, too few validation inputs)
    key_separation: float | None = None
    key_separation_limit: float | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.attacks:
            out[a.verdict] = out.get(a.verdict, 0) + 1
        return out

    def to_json(self) -> dict:
        valid = [a for a in self.attacks if a.valid]
        return {
            "customer": self.customer,
            "display_name": self.display_name,
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "copy_accuracy": self.copy_accuracy,
            "base_accuracy": self.base_accuracy,
            "alpha": self.alpha,
            "issued_customers": self.issued_customers,
            "attacker_data": {"source": self.attacker_data, "size": self.attacker_size, "case": self.attacker_case},
            "validation_size": self.validation_size,
            "key_separation": self.key_separation,
            "key_separation_limit": self.key_separation_limit,
            "accuracy_budget": self.budget,
            "reference": self.reference.to_json(),
            "attacks": [a.to_json() for a in self.attacks],
            "summary": {
                "attacks": len(self.attacks),
                "valid": len(valid),
                "survived": sum(a.verdict in ("survives", "partly survives") for a in valid),
                "erased": [a.name for a in valid if a.verdict == "erased"],
                "not_valid": [a.name for a in self.attacks if a.valid is False],
                "false_accusations": [a.name for a in self.attacks if a.named_others],
                "verdicts": self.counts(),
            },
            "seconds": round(self.seconds, 2),
        }


def _score(ws: Workspace, keyring: Keyring, row: AttackResult, predict: Predictor, x_val: np.ndarray, y_val: np.ndarray,
           copy_accuracy: float, budget: float, alpha: float | None) -> AttackResult:
    acc = accuracy(predict(x_val).argmax(1), y_val)
    result = identify_predictor(ws, keyring, lambda x: predict(x).argmax(1), alpha=alpha, scores=predict)
    cands = {c.customer: c for c in result.candidates}
    me = cands[row.right[0]]
    row.key_log10_p, row.rank_concordant, row.rank_pairs, row.rank_log10_p = me.key_log10_p, me.rank_concordant, me.rank_pairs, me.rank_log10_p
    row.clean_accuracy = round(acc, 6)
    row.accuracy_drop = round(copy_accuracy - acc, 6)
    row.valid = copy_accuracy - acc <= budget + 1e-12
    row.matches, row.trials = me.matches, me.trials
    row.agreement = round(me.matches / me.trials, 6) if me.trials else 0.0
    row.p_value, row.log10_p = me.p_value, me.log10_p
    row.named = list(result.customers)
    row.named_right = sum(c in row.named for c in row.right)
    row.named_others = [c for c in row.named if c not in row.right]
    row.weakest_right_log10_p = max(cands[c].log10_p for c in row.right)
    if row.named_others:
        row.verdict = "FALSE ACCUSATION"
    elif not row.valid:
        row.verdict = "not a valid attack"
    elif row.named_right == len(row.right):
        row.verdict = "survives"
    elif row.named_right:
        row.verdict = "partly survives"
    else:
        row.verdict = "erased"
    return row


def _context(ws: Workspace, copy: IssuedCopy, names: list[str], *, make_model: Callable, make_alt: Callable | None, x_att: np.ndarray, y_att: np.ndarray,
             sample: np.ndarray, seed: int, budget: float) -> AttackContext:
    """What the attacks get: the copy, the attacker's data, and as many colluders' copies as the collusion attacks need."""
    others = [(cid, e) for cid, e in issued_copies(ws) if cid != copy.customer]
    needed = max((int(ATTACKS[n].needs.split(":")[1]) - 1 for n in names if ATTACKS[n].needs.startswith("copies:")), default=0)
    colluders = [(cid, load_copy(ws, cid, make_model, sample).model) for cid, _ in others[:needed]]
    recipe = training_recipe(ws.config)
    return AttackContext(task=ws.config.task, copy=copy.model, copy_onnx=copy.onnx, x_attack=x_att, y_attack=y_att,
                         make_model=make_model, make_model_alt=make_alt, colluders=colluders, seed=seed,
                         distill_epochs=int(recipe.get("epochs", 30)), budget=budget)


def _attack(name: str, ctx: AttackContext, score: Callable[[AttackResult, Predictor], None], customer: str) -> AttackResult:
    """Run one attack and score what it left; an attack tool failing is recorded as an error row, not raised."""
    spec = ATTACKS[name]
    row = AttackResult(name, spec.group, spec.description, right=[customer])
    t = time.perf_counter()
    why = spec.applicable(ctx)
    if why:
        row.note = why
    else:
        try:
            attacked = spec.run(ctx)
            row.params = attacked.params
            row.note = attacked.note
            row.evasion = attacked.evasion
            row.right = [customer] + list(attacked.customers or [])
            score(row, attacked.predict)
        except Exception as exc:  # an attack tool failing must not hide the other results
            row.verdict, row.note = "error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
    row.seconds = round(time.perf_counter() - t, 2)
    return row


def run_suite(
    ws: Workspace,
    keyring: Keyring,
    *,
    customer: str | None = None,
    attacks: str | list[str] | None = None,
    alpha: float | None = None,
    seed: int = 0,
    budget: float = ACCURACY_BUDGET,
    on_attack: Callable[[str, AttackResult | None], None] | None = None,
    probe_evasion: bool = True,
) -> SuiteResult:
    """Attack ``customer``'s copy (default: the first issued) with each named attack and identify the result.

    ``on_attack(name, None)`` is called before an attack runs and ``on_attack(name, result)`` after.
    ``probe_evasion``: probe each evasion filter over loopback HTTP (on a scratch ledger).
    """
    t0 = time.perf_counter()
    names = resolve_attacks(attacks)
    cfg = ws.config
    data = load_dataset(cfg)
    x_att, y_att, source = attacker_data(data)
    make_model, make_alt = factories(cfg)
    sample = data.x_val[:256]
    copy: IssuedCopy = load_copy(ws, customer, make_model, sample)
    ctx = _context(ws, copy, names, make_model=make_model, make_alt=make_alt, x_att=x_att, y_att=y_att, sample=sample, seed=seed, budget=budget)
    with ws.ledger() as ledger:
        issuance = ledger.issuances(copy.customer)[-1]
    if any(ATTACKS[n].group == "evasion" for n in names):
        ctx.keys, ctx.natural = key_inputs(ws, keyring), data.x_val
        if probe_evasion:
            ctx.probe = lambda flags, answer: probe_through_filter(ws, keyring, copy.onnx, flags, answer=answer, seed=seed, customer=copy.customer)
            if "rank_code" in issuance.payload:  # the copy carries a rank code: read it through the filter too, from scores
                ctx.rank_probe = lambda flags, answer: rank_read_through_filter(ws, keyring, copy.onnx, flags, answer=answer, seed=seed,
                                                                                customer=copy.customer)
    copy_pred = torch_predictor(copy.model)
    copy_acc = accuracy(copy_pred(data.x_val).argmax(1), data.y_val)
    metrics = issuance.payload.get("metrics", {})
    base_acc, separation = metrics.get("base_accuracy"), metrics.get("key_separation")
    limit = issuance.payload.get("parameters", {}).get("gates", {}).get("max_key_separation") if separation is not None else None
    case, source = attacker_share_case(data, issuance.payload.get("attacker_share"))  # vendor / held out / LEGACY

    def score(row: AttackResult, predict: Predictor) -> None:
        _score(ws, keyring, row, predict, data.x_val, data.y_val, copy_acc, budget, alpha)

    ref = AttackResult("none", "reference", "the copy as issued, unattacked", right=[copy.customer])
    score(ref, copy_pred)
    rows = []
    for name in names:
        if on_attack:
            on_attack(name, None)
        rows.append(_attack(name, ctx, score, copy.customer))
        if on_attack:
            on_attack(name, rows[-1])
    with ws.ledger() as ledger:
        issued = len(ledger.issued_customer_ids())
    return SuiteResult(
        customer=copy.customer, display_name=copy.display_name, model_path=str(copy.path), model_sha256=copy.sha256,
        copy_accuracy=copy_acc, base_accuracy=base_acc, alpha=cfg.alpha if alpha is None else alpha, issued_customers=issued,
        attacker_data=source, attacker_size=int(len(y_att)), validation_size=int(len(data.y_val)), budget=budget,
        reference=ref, attacks=rows, seconds=time.perf_counter() - t0, attacker_case=case,
        key_separation=separation, key_separation_limit=limit,
    )
