"""Issuance cost and quality on both examples (issue 3).

For each example, in one run on one machine: train the base model from scratch
and issue three customers, alternately (base, customer, base, customer, ...), so
that machine noise hits both sides alike; each ratio divides a customer's time
by the fastest base training of the run (conservative: noise only ever slows
the customer's side), and a paired ratio divides it by the base training that
ran right after it. Timed per customer: the embedding fine-tune that made the
copy that landed (its try, plus its polish if it had one; "steps" is the try's
length, as retries train longer), and the whole issuance (all tries and
polishes, gates, ONNX export and check, ledger record). Also printed: the
embedding's step count (fixed: it does not grow with the dataset), which
candidate landed (final or averaged weights), the clean-accuracy drop on the
validation data the gates used, the drop on the example's attacker share
(data neither training nor the gates saw: choosing among candidates by the
gate makes the first slightly optimistic) and the trigger accuracy.

    python bench/bench_issue.py [digits] [tabular] [shapes] [--customers N] [--base-runs K] [--keys natural]

With ``--base-runs K`` the base model is retrained after the first K customers only
(default: after every one); on shapes, whose base trains for a minute or more, a
smaller K keeps the run short, at the cost of fewer base timings to take the fastest of.

Wall-clock ratios suffer from other processes' load arriving mid-run (with ``--base-runs 0`` the
one base timing may have seen an idle machine, the customers a busy one); the CPU-time ratio
(``time.process_time`` of this process around each issuance and each base training, best base)
hardly does, and is the one to read on a shared host.

With ``--customers N`` (default 3) more customers are issued, which shows how
often a copy misses the gates: a polish costs a fifth of a try, a fresh retry a
whole (longer) one, so the mean whole-issuance ratio is the one to plan with.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import FAST_SCRYPT, PASSPHRASE, example_text

from tracer.embedding import Issuer
from tracer.errors import GateError
from tracer.examples.base import train_base
from tracer.training import accuracy, predict
from tracer.workspace import init_workspace


def _onnx_accuracy(path, x, y, *, torch_model=None) -> float:
    if torch_model is not None:
        return float(accuracy(predict(torch_model, x), y))
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(accuracy(sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1), y))


CUSTOMERS = [("acme", "ACME Corp."), ("globex", "Globex Corporation"), ("initech", "Initech")]


def bench(example: str, n_customers: int = 3, base_runs: int | None = None, keys: str = "noise") -> None:
    customers = (CUSTOMERS + [(f"customer{i}", f"Customer {i}") for i in range(len(CUSTOMERS) + 1, n_customers + 1)])[:n_customers]
    root = Path(tempfile.mkdtemp(prefix=f"tracer-bench-issue-{example}-")) / "ws"
    ws = init_workspace(root, passphrase=PASSPHRASE, config_text=example_text(example, keys), scrypt=FAST_SCRYPT)
    t0, c0 = time.perf_counter(), time.process_time()
    model, base_acc = train_base(example)
    base_times, base_cpu = [time.perf_counter() - t0], [time.process_time() - c0]
    weights = ws.config.path(ws.config.model.weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    weights.write_bytes(buf.getvalue())
    issuer = Issuer(ws, ws.unlock(passphrase=PASSPHRASE))
    n_train = len(issuer.data.x_train)
    reports, failed, issue_cpu = [], [], {}
    for i, (cid, name) in enumerate(customers):
        c0 = time.process_time()
        try:
            reports.append(issuer.issue(cid, name=name))
        except GateError as exc:  # every try missed a gate: counted, not fatal to the run
            failed.append((cid, str(exc)))
        issue_cpu[cid] = time.process_time() - c0
        if base_runs is not None and i >= base_runs:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        train_base(example)
        base_times.append(time.perf_counter() - t0)
        base_cpu.append(time.process_time() - c0)
    base_seconds = min(base_times)
    base_cpu_s = min(base_cpu)
    print(f"\n{example} ({keys} keys{': ' + ws.config.fingerprint.style if keys != 'noise' else ''}): torch threads {torch.get_num_threads()}; base model trained on {n_train} examples in {base_seconds:.2f} s (fastest of {len(base_times)}: "
          f"{', '.join(f'{t:.1f}' for t in base_times)}; CPU {base_cpu_s:.2f} s), validation accuracy {base_acc:.4f}; "
          f"{len(issuer.triggers)} triggers ({len(issuer.probe_sets)} probe sets x {issuer.probe_sets[0].size})")
    # The gates choose among candidates by validation accuracy, so the recorded drop is slightly optimistic;
    # the unseen drop is measured on the example's attacker share, which neither training nor the gates saw.
    x_un, y_un = issuer.data.x_attack, issuer.data.y_attack
    base_unseen = _onnx_accuracy(None, x_un, y_un, torch_model=issuer.base)
    print(f"{'customer':<10} {'steps':>5} {'tries':>5} {'polish':>6} {'weights':>7} {'embed s':>8} {'issue s':>8} {'embed/base':>10} {'issue/base':>10} "
          f"{'drop (pts)':>10} {'unseen drop':>11} {'trigger acc':>11} {'issue cpu s':>11} {'cpu ratio':>9}")
    ratios, unseen = [], []
    for r in reports:
        cid = r.customer
        per_try = r.embed_seconds
        ratios.append((per_try / base_seconds, r.seconds / base_seconds))
        print(f"{cid:<10} {r.steps:>5} {r.attempts:>5} {r.polish_steps:>6} {r.weights:>7} {per_try:8.2f} {r.seconds:8.2f} {per_try / base_seconds:10.3f} "
              f"{r.seconds / base_seconds:10.3f} {100 * (r.base_accuracy - r.clean_accuracy):10.2f} "
              f"{100 * (base_unseen - _onnx_accuracy(r.model_path, x_un, y_un)):11.2f} {r.trigger_accuracy:11.3f} "
              f"{issue_cpu[cid]:11.2f} {issue_cpu[cid] / base_cpu_s:9.3f}")
        unseen.append(100 * (base_unseen - _onnx_accuracy(r.model_path, x_un, y_un)))
    mean_embed = sum(a for a, _ in ratios) / len(ratios)
    mean_issue = sum(b for _, b in ratios) / len(ratios)
    # Paired: each issuance against the base training that ran right after it (same load, same minute).
    paired_embed = [r.embed_seconds / b for r, b in zip(reports, base_times[1:])]  # the customers a base training followed
    paired_issue = [r.seconds / b for r, b in zip(reports, base_times[1:])]
    for cid, msg in failed:
        print(f"{cid}: no copy landed: {msg}")
    first = sum(r.attempts == 1 for r in reports)
    print(f"mean cost ratio: embedding fine-tune {mean_embed:.3f}, whole issuance (all tries, gates, export, record) {mean_issue:.3f}"
          + ("  (target on digits: <= 0.25)" if example == "digits" else ""))
    cpu_ratios = [issue_cpu[r.customer] / base_cpu_s for r in reports]
    print(f"CPU time (this process, all its threads): whole issuance / base training {sum(cpu_ratios) / len(cpu_ratios):.3f} "
          f"[{min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}]; other processes' load slows wall time, hardly CPU time")
    if paired_embed:  # none with --base-runs 0
        print(f"paired with the base training that followed each issuance: embedding {sum(paired_embed) / len(paired_embed):.3f} "
              f"[{min(paired_embed):.3f}-{max(paired_embed):.3f}], whole issuance {sum(paired_issue) / len(paired_issue):.3f} "
              f"[{min(paired_issue):.3f}-{max(paired_issue):.3f}]")
    print(f"unseen data ({len(y_un)} inputs): base accuracy {base_unseen:.4f}, mean drop {sum(unseen) / len(unseen):+.2f} points "
          f"[{min(unseen):+.2f} to {max(unseen):+.2f}]")
    print(f"tries: {first} of {len(reports) + len(failed)} customers passed both gates on the first seed; "
          f"mean {sum(r.attempts for r in reports) / len(reports):.2f} tries")


if __name__ == "__main__":
    args = sys.argv[1:]
    n, k = 3, None
    if "--base-runs" in args:
        i = args.index("--base-runs")
        k = int(args[i + 1])
        del args[i : i + 2]
    if "--customers" in args:
        i = args.index("--customers")
        n = int(args[i + 1])
        del args[i : i + 2]
    keys = "noise"
    if "--keys" in args:
        i = args.index("--keys")
        keys = args[i + 1]
        del args[i : i + 2]
    for ex in args or ["digits", "tabular"]:
        bench(ex, n, k, keys)
