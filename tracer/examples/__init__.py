"""Bundled examples, none downloaded: digits and tabular (scikit-learn's own datasets), shapes (synthetic, generated)."""

from __future__ import annotations

from importlib import resources

from ..errors import ConfigError

EXAMPLES = ("digits", "tabular", "shapes")


def example_config(name: str) -> str:
    if name not in EXAMPLES:
        raise ConfigError(f"unknown example {name!r}", hint=f"choose one of {', '.join(EXAMPLES)}")
    return resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")


def prepare_example(ws, name: str, *, progress: bool = True) -> None:
    """Train and save the example's base model into the workspace if it is not there yet."""
    from .base import ensure_base_model

    ensure_base_model(ws, name, progress=progress)
