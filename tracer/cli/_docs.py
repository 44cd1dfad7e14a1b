"""Generate the README's CLI reference from the commands themselves.

    python -m tracer.cli._docs            # print the reference (markdown)
    python -m tracer.cli._docs --write    # replace it in README.md between the markers

A test checks that every command and option appears in the README.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


def walk(cmd, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """(path, command) for every command and group, depth first, sorted by name."""
    yield path, cmd
    for name in sorted(getattr(cmd, "commands", {}) or {}):
        yield from walk(cmd.commands[name], (*path, name))


def options(cmd) -> list[tuple[str, str]]:
    getattr(cmd, "fill_help", lambda: None)()  # help computed from a registry (evaluate --attacks)
    out = []
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        if p.param_type_name == "argument":
            out.append(((p.metavar or p.name or "").upper(), (p.help or "").strip()))
        else:
            out.append((", ".join(p.opts), (p.help or "").strip()))
    return out


def reference() -> str:
    from . import app

    root = typer.main.get_command(app)
    lines = []
    for path, cmd in walk(root):
        name = " ".join(("tracer", *path))
        if getattr(cmd, "commands", None) and path:
            lines.append(f"### `{name}`\n\n{(cmd.help or '').splitlines()[0]}\n")
            continue
        summary = (cmd.help or "").strip().split("\n\n")[0]
        usage = " ".join(cmd.collect_usage_pieces(typer.Context(cmd)))
        lines.append(f"### `{name}`\n\n{summary}\n\n```\n{name} {usage}\n```\n")
        opts = options(cmd)
        if opts:
            lines.append("| option | meaning |\n| --- | --- |")
            lines.extend(f"| `{o}` | {h.replace('|', '/')} |" for o, h in opts)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write(readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    block = f"{START}\n{reference()}{END}"
    new, n = re.subn(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{readme} lacks the {START} ... {END} markers")
    readme.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write(Path(__file__).resolve().parents[2] / "README.md")
    else:
        sys.stdout.write(reference())
