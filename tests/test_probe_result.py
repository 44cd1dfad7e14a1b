"""The one result builder (identify and probe), and IssuedCustomers as a real sequence."""

from __future__ import annotations

import numpy as np

from tracer.config import TaskConfig
from tracer.fingerprint import codewords, make_probe_set
from tracer.identify.result import build_result
from tracer.identify.scoring import IssuedCustomer, IssuedCustomers, score_answers

MASTER = bytes(range(32))
TASK = TaskConfig(num_classes=10, input_shape=(1, 8, 8))


def people() -> list[IssuedCustomer]:
    return [IssuedCustomer("acme", "ACME", ("ps1",)), IssuedCustomer("globex", "Globex", ("ps1", "ps2")),
            IssuedCustomer("initech", "Initech", ("ps2",))]


def test_issued_customers_is_a_real_sequence() -> None:
    table = IssuedCustomers.from_list(people())
    assert table == people() and people() == list(table) and table != [] and len(table) == 3
    assert people()[1] in table and IssuedCustomer("nobody", "x", ()) not in table
    copy = table.copy()
    assert copy == table and copy is not table and isinstance(copy, IssuedCustomers)
    assert table[-1].customer_id == "initech" and [c.customer_id for c in table[:2]] == ["acme", "globex"]
    assert table.index(people()[2]) == 2 and table.count(people()[0]) == 1
    assert list(reversed(table))[0].customer_id == "initech"


def test_score_answers_records_the_holm_rule_and_family() -> None:
    ps = make_probe_set(MASTER, "ps1", TASK, 32)
    cw = codewords(MASTER, ["globex"], "ps1", 32, 10)[0]
    r = score_answers(MASTER, people(), [ps], {"ps1": cw}, num_classes=10, alpha=1e-3, queries=32, model_sha256=None)
    assert r.customers == ["globex"] and (r.decision_rule, r.family_size, r.threshold) == ("holm-binomial", 3, None)
    doc = r.to_json()
    assert (doc["decision_rule"], doc["family_size"], doc["threshold"]) == ("holm-binomial", 3, None)
    assert [c.customer for c in r.candidates][0] == "globex" and r.candidates[-1].trials == 0  # initech carries no ps1


def test_build_result_orders_by_exact_log_p_and_keeps_ties_in_input_order() -> None:
    r = build_result(ids=["a", "b", "c", "d"], names=list("ABCD"), matches=np.array([1, 9, 9, 0]), trials=np.array([9, 9, 9, 0]),
                     p_values=np.array([0.5, 0.0, 0.0, 1.0]), log10_p=np.array([-0.3, -400.0, -300.0, 0.0]),
                     named=np.array([False, True, True, False]), alpha=0.01, queries=9, model_sha256=None, num_classes=10,
                     probe_sets=["ps1"], method="m", decision_rule="e-process-bonferroni", family_size=3, threshold=300.0)
    assert [c.customer for c in r.candidates] == ["b", "c", "a", "d"] and r.customers == ["b", "c"] and r.verdict == "match"
    assert r.to_json()["threshold"] == 300.0
