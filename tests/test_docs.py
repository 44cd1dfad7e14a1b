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


def _shown(text: str) -> dict[str, dict[str, object]]:
    """Each table's keys and values as an annotated tracer.toml shows them, commented alternatives (``# npz = ...``) included."""
    import tomllib

    tables: dict[str, dict[str, object]] = {}
    current: dict[str, object] | None = None
    for line in text.splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            current = tables.setdefault(header[1], {})
        elif (entry := re.match(r"(?:# )?(\w+) = (.*)$", line)) and current is not None:
            current[entry[1]] = tomllib.loads("v = " + entry[2])["v"]
    return tables


def _documented_value(info) -> object:
    value = (info.json_schema_extra or {}).get("example", info.default)
    if isinstance(value, tuple):
        value = value[0] if len(value) == 1 else list(value)
    return value


def test_readme_toml_block_is_generated_from_the_config_model():
    from tracer.config import annotated_toml

    block = re.search(r"```toml\n(.*?)```", README, flags=re.S)
    assert block and block.group(1) == annotated_toml(), (
        "run python -c 'from pathlib import Path; from tracer.config import write_readme; write_readme(Path(\"README.md\"))'")


def test_documented_values_are_the_defaults_and_every_key_is_documented():
    """The README's annotated tracer.toml, the `tracer init` template and the model: same tables, keys and defaults."""
    from tracer.config import _TABLES
    from tracer.workspace import GENERIC_CONFIG

    readme_toml = re.search(r"```toml\n(.*?)```", README, flags=re.S)
    assert readme_toml
    for source, text in (("README.md", readme_toml.group(1)), ("tracer init", GENERIC_CONFIG)):
        shown = _shown(text)
        assert list(shown) == list(_TABLES), source
        for table, cls in _TABLES.items():
            fields = cls.__pydantic_fields__
            assert list(shown[table]) == list(fields), f"{source}: [{table}] keys differ from the model"
            for key, info in fields.items():
                assert info.description, f"{table}.{key} has no description"
                assert shown[table][key] == _documented_value(info), f"{source}: {table}.{key} = {shown[table][key]!r}"
    for key in ("validation_fraction", "margin_weight", "trigger_noise", "anchor_noise", "device", "seed", "batch_size",
                "trigger_batch", "anchor_targets", "feature_pull"):
        assert re.search(rf"^(# )?{key} = .*# \S", readme_toml.group(1), flags=re.M), f"{key} undocumented in README.md"
