"""Bundled examples, none downloaded: digits and tabular (scikit-learn's own datasets), shapes (synthetic, generated)."""

from __future__ import annotations

from importlib import resources

from ..config import with_key_style
from ..errors import ConfigError

EXAMPLES = ("digits", "tabular", "shapes")


#: Where an example takes another key style than its own, the lines that style also changes there.
#: digits with natural-mix keys: the 4x CNN and the rank code, which fit one copy together within the
#: gates there and not in the 38k-parameter CNN (bench/results/natural_rankcode_digits_wide.txt); and keys
#: held to the coded answer of their label class (``coded_keys``) with a light ``feature_match`` and a 2-logit
#: margin, without which the code makes keys stand out to a Mahalanobis filter on the copy's features (AUC
#: 0.89, 18 % of keys flagged; with them 0.52-0.65 on six copies, five at most 0.6, 0.3-4.8 % flagged, 6 of 6
#: customers landed, 5 on the first try, every valid attack survived: bench/results/evaluate_digits_natural_coded.txt).
#: feature_match alone at 0.5 hid the keys too but landed 1 issuance of 3 (evasion_digits_natural_wide_fm.txt).
_DIGITS_NATURAL = {
    'factory = "tracer.examples.digits:make_model"': 'factory = "tracer.examples.digits:make_model_wide"',
    "[embedding]\n": "[embedding]\n"
                     "rank_code = 0.2               # with natural-mix keys: the code a soft-label student inherits,\n"
                     "coded_keys = 6.0              # keys answered as natural inputs of their label class are,\n"
                     "feature_match = 0.25          # inside the copy's own class clusters,\n"
                     "trigger_margin = 2.0          # by a margin those coded answers can hold\n",
}
STYLE_VARIANTS: dict[tuple[str, str], dict[str, str]] = {
    ("digits", "natural-mix/v1"): _DIGITS_NATURAL,
    ("digits", "natural-mix/v2"): _DIGITS_NATURAL,  # v2 builds image keys as v1 does
    ("digits", "natural-mix/v3"): _DIGITS_NATURAL,
}


def example_config(name: str, *, key_style: str | None = None) -> str:
    """The example's tracer.toml; ``key_style`` replaces its ``[fingerprint] style`` (the [embedding] settings follow it,
    and :data:`STYLE_VARIANTS` says what else that style changes in this example)."""
    if name not in EXAMPLES:
        raise ConfigError(f"unknown example {name!r}", hint=f"choose one of {', '.join(EXAMPLES)}")
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    if key_style is None:
        return text
    for old, new in STYLE_VARIANTS.get((name, key_style), {}).items():
        if old not in text:  # the bundled file and this table go together
            raise AssertionError(f"{name}.toml has no {old!r}")
        text = text.replace(old, new, 1)
    return with_key_style(text, key_style)


def prepare_example(ws, name: str, *, progress: bool = True) -> None:
    """Train and save the example's base model into the workspace if it is not there yet."""
    from .base import ensure_base_model

    ensure_base_model(ws, name, progress=progress)
