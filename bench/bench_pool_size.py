"""How many natural-mix keys a small dataset's copies can carry: the automatic ``pool_size`` (issue 12).

`tracer init` writes natural-mix keys with ``pool_size = 0``: 2 keys per vendor training row, in steps of
64, between 64 and 2048. This bench measures the rule on the README quickstart's own workspace (its
`mymodel.py`, scikit-learn's wine data, 95 vendor training rows after the held-out attacker share, an
MLP with 256 units), taken from README.md itself: for each pool size, several fresh workspaces (each a
fresh master key) issue acme through the issuer (gates, retries, polishes). Per size: how many landed,
their tries, trigger accuracy (gate 0.95), clean drop in points (gate 3.0 here, one input is 2.78), the
issuance CPU seconds, and `identify`'s log10 p on the issued file. The same for uniform-grid noise probe
sets, the style before, as the cost reference; and the base model's training, the other reference.

    python bench/bench_pool_size.py [--sizes 0,128,192,256,384] [--workspaces 3] [--out keys_pool_size.txt]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from _common import FAST_SCRYPT, PASSPHRASE, ROOT, Said, save_result

from tracer.config import with_key_style
from tracer.embedding import Issuer
from tracer.errors import GateError
from tracer.identify import identify_model
from tracer.workspace import GENERIC_CONFIG, Workspace, init_workspace


def _readme_quickstart() -> tuple[str, dict[str, dict]]:
    """The README quickstart's mymodel.py and its [task]/[gates] values (the bench reads the README as a user does)."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Quickstart with your own model", 1)[1]
    code = re.search(r"```python\n(# mymodel.py\n.*?)```", section, re.S).group(1)
    return code, tomllib.loads(re.search(r"```ini\n(.*?)```", section, re.S).group(1))


def _config(tables: dict[str, dict], style: str, pool_size: int) -> str:
    """The template `tracer init` writes, with the README's [task]/[gates] values, ``style`` and ``pool_size``."""
    text = with_key_style(GENERIC_CONFIG, style)
    for name, values in {**tables, "fingerprint": {"pool_size": pool_size}}.items():
        head, rest = text.split(f"\n[{name}]\n", 1)
        table, sep, tail = rest.partition("\n\n[")
        lines = [ln for ln in table.splitlines() if ln.split("=")[0].strip() not in values]
        text = head + f"\n[{name}]\n" + "\n".join([*(f"{k} = {json.dumps(v)}" for k, v in values.items()), *lines]) + sep + tail
    return text


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def quickstart_workspace(root: Path, code: str, config_text: str) -> tuple[Workspace, float]:
    """A README-quickstart workspace at ``root`` with its base model trained; and that training's CPU seconds."""
    ws = init_workspace(root, passphrase=PASSPHRASE, scrypt=FAST_SCRYPT, config_text=config_text, starter=True)
    (root / "mymodel.py").write_text(code, encoding="utf-8")  # the `$EDITOR mymodel.py` step: over the starter
    before = _cpu(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "mymodel.py"], cwd=root, capture_output=True, check=True)  # the README's `python mymodel.py`
    return ws, _cpu(resource.RUSAGE_CHILDREN) - before


def _one(root: Path, code: str, tables: dict[str, dict], style: str, pool_size: int) -> dict:
    ws, base_cpu = quickstart_workspace(root, code, _config(tables, style, pool_size))
    keyring = ws.unlock(passphrase=PASSPHRASE)
    start = _cpu()
    try:
        issuer = Issuer(ws, keyring)
        rep = issuer.issue("acme")
    except GateError as exc:
        return {"landed": False, "why": str(exc).split(";")[0], "cpu": _cpu() - start, "base_cpu": base_cpu}
    cpu = _cpu() - start
    top = identify_model(ws, keyring, Path(rep.model_path), record=False).candidates[0]
    return {"landed": True, "tries": rep.attempts, "keys": sum(ps.size for ps in issuer.probe_sets), "trig": rep.trigger_accuracy,
            "drop": 100 * (rep.base_accuracy - rep.clean_accuracy), "cpu": cpu, "base_cpu": base_cpu,
            "named": top.customer if top.named else "-", "log10_p": top.log10_p}


def span(vals: list, fmt: str) -> str:
    return f"{fmt.format(min(vals))}..{fmt.format(max(vals))}" if vals else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,128,192,256,384", help="natural-mix pool sizes (0: automatic)")
    ap.add_argument("--workspaces", type=int, default=3, help="fresh workspaces (master keys) per size")
    ap.add_argument("--styles", default="natural-mix/v1", help="natural key styles to build, comma-separated (each at every size)")
    ap.add_argument("--keep", default=None, help="build the workspaces in this folder and keep them (for tracer evaluate)")
    ap.add_argument("--out", default="keys_pool_size.txt")
    args = ap.parse_args()
    code, tables = _readme_quickstart()
    say = Said()
    say("# natural-mix pool size on the README quickstart (wine, 95 vendor training rows, MLP 256-256)")
    say(f"# {args.workspaces} fresh workspaces (master keys) per row; acme through the issuer (gates, retries, polishes)")
    say("# tries: per landed copy; trig: trigger accuracy (gate 0.95); drop: clean points (gate 3.0; one input 2.78);")
    say("# cpu: issuance CPU-s (this process); x base: / the base model's training CPU-s; x grid: / uniform-grid's mean issuance CPU-s")
    rows: list[tuple[str, list[dict]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        runs = [("uniform-grid/v1", 0)] + [(st, int(s)) for st in args.styles.split(",") for s in args.sizes.split(",")]
        for style, size in runs:
            got = [_one(Path(tmp) / f"{style.replace('/', '-')}-{size}-{i}", code, tables, style, size) for i in range(args.workspaces)]
            rows.append((f"{style} pool_size {size}" if style.startswith("natural") else style, got))
            print(rows[-1], file=sys.stderr, flush=True)
    grid_cpu = sum(r["cpu"] for r in rows[0][1]) / len(rows[0][1])
    say()
    say(f"{'keys':<34} {'landed':>6} {'keys':>5} {'tries':>7} {'trig':>11} {'drop':>11} {'cpu':>11} {'x base':>7} {'x grid':>7} "
        f"{'log10 p':>15}")
    for label, got in rows:
        ok = [r for r in got if r["landed"]]
        cpu = [r["cpu"] for r in got]
        base = sum(r["base_cpu"] for r in got) / len(got)
        say(f"{label:<34} {len(ok):>3}/{len(got):<2} {ok[0]['keys'] if ok else '-':>5} {span([r['tries'] for r in ok], '{}'):>7} "
            f"{span([r['trig'] for r in ok], '{:.3f}'):>11} {span([r['drop'] for r in ok], '{:+.2f}'):>11} {span(cpu, '{:.0f}'):>11} "
            f"{sum(cpu) / len(cpu) / base:>7.1f} {sum(cpu) / len(cpu) / grid_cpu:>7.2f} {span([r['log10_p'] for r in ok], '{:.1f}'):>15}")
        for r in got:
            if not r["landed"]:
                say(f"    not landed: {r['why']}")
    say()
    say("# reference: digits (959 vendor rows), 2048 keys = 2.1 per row, land on the example's CNN (keys_pool2048.txt)")
    save_result(args.out, say.text())


if __name__ == "__main__":
    main()
