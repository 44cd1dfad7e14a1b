"""Bundled examples, none downloaded: digits and tabular (scikit-learn's own datasets), shapes (synthetic, generated)."""

from __future__ import annotations

from importlib import resources

from ..config import with_key_style
from ..errors import ConfigError

EXAMPLES = ("digits", "tabular", "shapes")


def example_config(name: str, *, key_style: str | None = None) -> str:
    """The example's tracer.toml; ``key_style`` replaces its ``[fingerprint] style`` (the [embedding] settings follow it)."""
    if name not in EXAMPLES:
        raise ConfigError(f"unknown example {name!r}", hint=f"choose one of {', '.join(EXAMPLES)}")
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return text if key_style is None else with_key_style(text, key_style)


def prepare_example(ws, name: str, *, progress: bool = True) -> None:
    """Train and save the example's base model into the workspace if it is not there yet."""
    from .base import ensure_base_model

    ensure_base_model(ws, name, progress=progress)
