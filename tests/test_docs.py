"""The README documents every command and option, and its CLI reference is current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import typer

from tracer.cli import app
from tracer.cli._docs import END, START, options, reference, walk

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_command_and_option_is_documented():
    root = typer.main.get_command(app)
    for path, cmd in walk(root):
        name = " ".join(("tracer", *path))
        assert f"`{name}`" in README, f"{name} is not in README.md"
        for opt, _ in options(cmd):
            assert opt in README, f"{name} {opt} is not in README.md"


def test_cli_reference_is_current():
    block = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), README, flags=re.S)
    assert block, "README.md lacks the CLI reference markers"
    assert block.group(1) == reference(), "run `python -m tracer.cli._docs --write`"


def test_readme_has_the_two_setup_commands_and_ci_runs_the_second():
    commands = re.findall(r"```sh\n(pip install torch==2\.13\.0[^\n]*)\n```", README)
    assert len(commands) == 2 and commands[0].endswith("tracer demo") and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_help_mentions_exit_codes():
    out = subprocess.run([sys.executable, "-m", "tracer", "--help"], capture_output=True, text=True).stdout
    assert "Exit codes" in out


def test_documented_embedding_values_are_the_defaults():
    """The README's annotated tracer.toml and the `tracer init` template show the defaults they claim to show."""
    import dataclasses
    import tomllib

    from tracer.config import EmbeddingConfig
    from tracer.workspace import GENERIC_CONFIG

    readme_toml = re.search(r"```toml\n(.*?)```", README, flags=re.S)
    assert readme_toml
    defaults = dataclasses.asdict(EmbeddingConfig())
    for source, text in (("README.md", readme_toml.group(1)), ("tracer init", GENERIC_CONFIG)):
        shown = tomllib.loads(text)["embedding"]
        assert {"weight_average", "polish_steps", "polishes", "attempts", "steps", "learning_rate"} <= set(shown), source
        for key, value in shown.items():
            assert value == defaults[key], f"{source}: embedding.{key} = {value!r}, default {defaults[key]!r}"
