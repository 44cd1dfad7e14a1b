"""The workspace configuration (``tracer.toml``), parsed and validated whole, once.

Every table is a pydantic v2 dataclass with strict types (``"200"``, ``true`` or
``2.5`` is not an integer), ranges, finiteness (no NaN or infinity anywhere)
and unknown keys refused, so a bad configuration fails up front with one line
naming the key, before any key is unlocked or any file is written.

The field descriptions are the documentation: :func:`annotated_toml` renders
them as the annotated ``tracer.toml`` that ``tracer init`` writes and that the
README shows (``tracer.config.write_readme(Path("README.md"))`` refreshes the README block;
``tests/test_docs.py`` checks that the three agree).

A few ``[embedding]`` and ``[gates]`` settings follow ``[fingerprint] style`` where tracer.toml leaves them out
(:data:`STYLE_DEFAULTS`, :data:`GATE_STYLE_DEFAULTS`): noise probe sets and natural-mix keys need different recipes, so switching
the style is one line, and a tracer.toml written before natural-mix existed keeps its old defaults.

Sane caps (absurd sizes are refused at load, not discovered in an allocation):
at most ``MAX_FEATURES`` = 2**24 input features, ``MAX_CLASSES`` = 65536
classes, ``MAX_PROBES_PER_SET`` = 65536 probes per set, ``MAX_PROBE_VALUES`` =
2**28 values in one probe set (probes x features), 64 probe sets, 10**6 steps,
65536 inputs per batch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from .errors import ConfigError

__all__ = [
    "Config", "TaskConfig", "ModelConfig", "DataConfig", "FingerprintConfig", "EmbeddingConfig", "GateConfig",
    "IdentifyConfig", "load_config", "parse_config", "with_key_style", "KEY_STYLES", "STYLE_DEFAULTS", "GATE_STYLE_DEFAULTS", "default_probe_count", "annotated_toml", "write_readme",
    "MAX_FEATURES", "MAX_CLASSES", "MAX_PROBES_PER_SET", "MAX_PROBE_VALUES",
]

MAX_FEATURES = 2**24
MAX_CLASSES = 65536
MAX_PROBES_PER_SET = 65536
MAX_PROBE_VALUES = 2**28
MAX_STEPS = 10**6
MAX_BATCH = 65536
MAX_BOUND = 1e15  # |low|, |high|: finite, and high - low stays finite in float32
MAX_CONFIG_BYTES = 1 << 20
HINT = "every key is described in the annotated tracer.toml of README.md (Quickstart with your own model)"

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
_DEVICE = re.compile(r"(auto|cpu|cuda|cuda:[0-9]{1,3}|mps)")
_IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _as_tuple(value: Any) -> Any:
    """TOML arrays arrive as lists; the configuration keeps tuples (frozen, hashable)."""
    return tuple(value) if isinstance(value, list) else value


def _number_or_list(value: Any) -> Any:
    """``low = 0.0`` means the same bound for every feature: one number is a 1-tuple."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,)
    return _as_tuple(value)


Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # accepts a TOML integer (1 -> 1.0), never a string or a boolean
Str = Annotated[str, Strict(), Field(min_length=1, max_length=4096)]
Shape = Annotated[tuple[Annotated[int, Strict(), Field(ge=1, le=MAX_FEATURES)], ...], Strict(),
                  Field(min_length=1, max_length=8), BeforeValidator(_as_tuple)]
Bounds = Annotated[tuple[Annotated[float, Strict(), Field(ge=-MAX_BOUND, le=MAX_BOUND)], ...], Strict(),
                   Field(min_length=1, max_length=MAX_FEATURES), BeforeValidator(_number_or_list)]


class _Bad(ValueError):
    """A cross-field check's failure, naming the key (inside its table) it is about."""

    def __init__(self, key: str, text: str) -> None:
        super().__init__(text)
        self.key, self.text = key, text


def default_probe_count(num_classes: int) -> int:
    """Probes per set so that a perfect match has p <= 10**-64 (64 probes at 10 classes).

    Few classes carry fewer bits per probe, so they get more probes: 2 classes -> 224.
    """
    bits_needed = 64 * math.log2(10)
    return max(64, int(math.ceil(bits_needed / math.log2(num_classes) / 16.0)) * 16)


@_pydantic_dataclass(frozen=True, config=_STRICT)
class TaskConfig:
    num_classes: Int = Field(ge=2, le=MAX_CLASSES, description="size of the model's output vector",
                             json_schema_extra={"example": 10})
    input_shape: Shape = Field(description="one input, without the batch axis",
                               json_schema_extra={"example": [1, 28, 28]})
    input_dtype: Literal["float32", "float16", "float64"] = Field(default="float32", description="dtype of the model's input")
    domain: Literal["image", "tabular"] = Field(default=
        "image", description='"image": probes are 8-bit pixel grids (survive PNG); or "tabular"')
    low: Bounds = Field(default=(0.0,), description="the input domain: one number, or one per feature")
    high: Bounds = Field(default=(1.0,), description="(tabular: the range of your standardized features)")
    levels: Int = Field(default=256, ge=2, le=65536, description="image domain: probe values on a grid of this many steps (256: 8-bit)")

    @property
    def features(self) -> int:
        return int(math.prod(self.input_shape))

    def bounds(self, *, flat: bool = False, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
        """``low`` and ``high`` broadcast to one input (``input_shape``), or to its flat features.

        One number in tracer.toml stands for every feature; fresh arrays, safe to modify.
        """
        n = self.features
        shape = (n,) if flat else self.input_shape
        low = np.array(self.low * n if len(self.low) == 1 else self.low, dtype=np.float64)
        high = np.array(self.high * n if len(self.high) == 1 else self.high, dtype=np.float64)
        return low.reshape(shape).astype(dtype, copy=False), high.reshape(shape).astype(dtype, copy=False)

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        n = self.features
        if n > MAX_FEATURES:
            raise _Bad("input_shape", f"has {n} features ({' x '.join(map(str, self.input_shape))}); at most {MAX_FEATURES} (2**24) are supported")
        for key in ("low", "high"):
            if len(getattr(self, key)) not in (1, n):
                raise _Bad(key, f"needs 1 value or {n} (one per feature), not {len(getattr(self, key))}")
        low, high = self.bounds(flat=True)
        if not np.all(low < high):
            i = int(np.argmin(low < high))
            raise _Bad("low", f"must be below task.high at every feature (feature {i}: {low[i]:g} >= {high[i]:g})")
        return self


@_pydantic_dataclass(frozen=True, config=_STRICT)
class ModelConfig:
    factory: Str = Field(description="package.module:function returning a torch nn.Module (tracer init writes a stub\n"
                                     "mymodel.py beside this file; the workspace folder is importable)",
                         json_schema_extra={"example": "mymodel:make_model"})
    weights: Str = Field(description="its trained weights: a state_dict saved with torch.save(model.state_dict(), ...),\n"
                                     "loaded with weights_only=True (no pickles)",
                         json_schema_extra={"example": "models/base.pt"})

    @field_validator("factory")
    @classmethod
    def _import_path(cls, value: str) -> str:
        return _check_import_path(value)


def _check_import_path(value: str) -> str:
    if not _IMPORT_PATH.fullmatch(value):
        raise ValueError(f"must look like package.module:function, not {_toml(value)}")
    return value


@_pydantic_dataclass(frozen=True, config=_STRICT)
class DataConfig:
    loader: Str | None = Field(default=None, description="a function returning {x_train, y_train, x_val, y_val} (optionally x_attack, y_attack)",
                               json_schema_extra={"example": "mymodel:load_data"})
    npz: Str | None = Field(default=None, description="arrays with those names, or x and y (validation split off deterministically)",
                            json_schema_extra={"example": "data.npz", "commented": True})
    image_folder: Str | None = Field(default=None, description="one sub-folder per class, or train/ and val/ each with them",
                                     json_schema_extra={"example": "images", "commented": True})
    validation_fraction: Float = Field(default=0.2, gt=0, lt=1, description="share split off for validation when the data comes as x, y or one image folder")

    @field_validator("loader")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        return None if value is None else _check_import_path(value)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [k for k in ("loader", "npz", "image_folder") if getattr(self, k) is not None]
        if len(given) != 1:
            found = ", ".join(given) or "none"
            raise _Bad("", f"needs exactly one of loader, npz, image_folder (found: {found})")
        return self


KeyStyle = Literal["uniform-grid/v1", "natural-mix/v1", "natural-mix/v2", "natural-mix/v3"]
DEFAULT_STYLE: KeyStyle = "uniform-grid/v1"  # a tracer.toml without [fingerprint] style (every one before natural-mix existed)
_TEMPLATE_STYLE: KeyStyle = "natural-mix/v3"  # the style `tracer init` writes (`--key-style` chooses another)
#: The automatic natural-mix pool size (``pool_size = 0``): keys per vendor training row, rounded down to a step, within bounds.
POOL_KEYS_PER_ROW, POOL_STEP, POOL_MIN, POOL_MAX = 2, 64, 64, 2048
#: ``keys_per_probe = 0``: the most keys one probe session draws, or the whole pool where it is smaller. A probe sends
#: far fewer: it stops once it can decide, and gives up early on an endpoint whose answers could not plausibly
#: name anyone (:mod:`tracer.probing.sequential`); bench/results/probe_budget.txt.
AUTO_KEYS_PER_PROBE, MIN_KEYS_PER_PROBE = 128, 8


@_pydantic_dataclass(frozen=True, config=_STRICT)
class FingerprintConfig:
    style: KeyStyle = Field(
        default=DEFAULT_STYLE, json_schema_extra={"example": _TEMPLATE_STYLE},
        description="keys: natural-mix/v3 (what `tracer init` writes; 3 or more classes): keyed blends of your own\n"
                    "inputs that look like real queries (v2: image keys an autoencoder tells apart; v1: tabular keys\n"
                    "as plain mixtures; both kept for copies issued with them); uniform-grid/v1: noise probe sets\n"
                    "(two-class tasks; and what a tracer.toml without\n"
                    "this line means). [embedding] settings left out follow the style (README)")
    pool_size: Int = Field(default=0, ge=0, le=MAX_PROBES_PER_SET,
                           description="natural-mix: keys every copy carries, fixed when the pool is first built; identify uses all.\n"
                                       f"0: automatic, {POOL_KEYS_PER_ROW} per training row in steps of {POOL_STEP}, "
                                       f"{POOL_MIN} to {POOL_MAX} (denser pools failed the gates)")
    keys_per_probe: Int = Field(default=0, ge=0, le=MAX_PROBES_PER_SET,
                                description="natural-mix: most fresh keys one probed endpoint is shown, never reused (unsent ones\n"
                                            f"go back). 0: automatic, {AUTO_KEYS_PER_PROBE} or the whole pool if smaller; a probe stops as soon as\n"
                                            "it can decide (README: 128 names 99 % of copies answering 85 keys in 100 right,\n"
                                            "an innocent endpoint costs about 26)")
    probe_sets: Int = Field(default=2, ge=1, le=64, description="uniform-grid: independent probe sets; one shown to a suspect API can be retired")
    probes_per_set: Int = Field(default=0, ge=0, le=MAX_PROBES_PER_SET,
                                description="uniform-grid: 0: automatic (64 at 10 classes, 224 at 2 classes)")

    @model_validator(mode="after")
    def _probe_fits_pool(self) -> FingerprintConfig:
        if 0 < self.pool_size < POOL_MIN:
            raise _Bad("pool_size", f"must be 0 (automatic) or >= {POOL_MIN}, not {self.pool_size}")
        if 0 < self.keys_per_probe < MIN_KEYS_PER_PROBE:
            raise _Bad("keys_per_probe", f"must be 0 (automatic) or >= {MIN_KEYS_PER_PROBE}, not {self.keys_per_probe}")
        if self.pool_size and self.keys_per_probe > self.pool_size:
            raise _Bad("keys_per_probe", f"is {self.keys_per_probe}, more than pool_size ({self.pool_size})")
        return self

    def pool_size_for(self, training_rows: int) -> int:
        """The pool size: ``pool_size``, or where it is 0 the automatic size for this many vendor training rows.

        Why rows: a pool denser than about two keys per training row puts keys with different labels side
        by side, and copies fail their trigger gate (wine, 95 rows, 3 fresh workspaces each: 128, 192 and 256 keys
        land 3 of 3, 384 1 of 3, 512 none; digits, 959 rows: 2048 land; bench/results/keys_pool_size.txt, keys_pool2048.txt).
        """
        if self.pool_size:
            return self.pool_size
        return max(POOL_MIN, min(POOL_MAX, POOL_KEYS_PER_ROW * training_rows // POOL_STEP * POOL_STEP))


#: The [embedding] settings that follow ``[fingerprint] style`` where tracer.toml leaves them out.
#: uniform-grid/v1: the noise probe sets' recipe, with the rank code (bench/results/issue_digits_rankcode.txt).
#: natural-mix/v1: 2048 keys among real inputs need a longer run with more keys per step, no jitter (the
#: keys already lie on the data's grid; jitter widened the region each key flips) and a 3-logit margin
#: (bench/results/keys_pool2048.txt); no rank code by default, because on the digits CNN the two do not
#: fit within the gates together (bench/results/natural_rankcode_digits.txt). natural-mix/v2 (tabular rows) and
#: v3 (images) change how keys are built, not how they are embedded: the same recipe.
STYLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "uniform-grid/v1": {"steps": 250, "trigger_batch": 64, "trigger_noise": 0.03, "trigger_margin": 6.0, "rank_code": 0.2},
    "natural-mix/v1": {"steps": 2000, "trigger_batch": 128, "trigger_noise": 0.0, "trigger_margin": 3.0, "rank_code": 0.0},
}
STYLE_DEFAULTS["natural-mix/v2"] = STYLE_DEFAULTS["natural-mix/v3"] = STYLE_DEFAULTS["natural-mix/v1"]


#: The [gates] settings that follow ``[fingerprint] style`` where tracer.toml leaves them out, as :data:`STYLE_DEFAULTS`
#: does for [embedding]. The key-separation gate (:mod:`tracer.separation`) is on for natural-mix/v3 and off (1.0) for
#: the styles whose copies were issued before it existed, so a workspace's next copy meets the gates its earlier
#: copies met; noise probe sets are off the data manifold by design, and the gate never applies to them.
GATE_STYLE_DEFAULTS: dict[str, dict[str, Any]] = {style: {"max_key_separation": 0.6 if style == "natural-mix/v3" else 1.0}
                                                  for style in STYLE_DEFAULTS}
_STYLE_TABLES = {"embedding": STYLE_DEFAULTS, "gates": GATE_STYLE_DEFAULTS}


def _by_style(key: str, table: dict[str, dict[str, Any]] = STYLE_DEFAULTS) -> dict[str, Any]:
    """Template rendering of a setting that follows the key style: commented out, with the template style's value."""
    return {"example": table[_TEMPLATE_STYLE][key], "commented": True,
            "follows": {style: values[key] for style, values in table.items()}}


def _by_family(follows: dict[str, Any]) -> dict[str, Any]:
    """Per-style values named by family (``natural-mix``) where every version of it agrees, else by full style name."""
    families: dict[str, set[str]] = {}
    for style, value in follows.items():
        families.setdefault(style.split("/")[0], set()).add(repr(value))
    return {(style.split("/")[0] if len(families[style.split("/")[0]]) == 1 else style): value for style, value in follows.items()}


@_pydantic_dataclass(frozen=True, config=_STRICT)
class EmbeddingConfig:
    steps: Int = Field(default=250, ge=1, le=MAX_STEPS, json_schema_extra=_by_style("steps"),
        description="fixed number of optimizer steps: does not grow with your dataset")
    batch_size: Int = Field(default=32, ge=1, le=MAX_BATCH, description='clean inputs per step, plus as many jittered "anchors"')
    trigger_batch: Int = Field(default=64, ge=1, le=MAX_BATCH, json_schema_extra=_by_style("trigger_batch"),
        description="triggers per step")
    learning_rate: Float = Field(default=2e-2, gt=0, le=10, description="peak of a one-cycle schedule (Adam)")
    distill_weight: Float = Field(default=12.0, ge=0, le=1e6, description="keeps clean outputs close to the base model's...")
    trigger_noise: Float = Field(default=0.03, ge=0, le=1, json_schema_extra=_by_style("trigger_noise"),
        description="triggers jittered by this fraction of the input range")
    anchor_noise: Float = Field(default=0.1, ge=0, le=1, description="...on training points and on copies jittered by this fraction (0: off)")
    anchor_targets: Literal["base", "original"] = Field(default=
        "base", description='anchors held to the base model\'s answers on them, or "original": on the originals\n'
                            "(images: faster, no frozen pass per step)")
    trigger_margin: Float = Field(default=6.0, ge=0, le=1e6, json_schema_extra=_by_style("trigger_margin"),
        description="codeword logit ahead of every other: outlives fine-tuning (0: off)")
    margin_weight: Float = Field(default=1.0, ge=0, le=1e6, description="weight of that margin's hinge loss")
    weight_average: Float = Field(default=0.97, ge=0, lt=1, description="the weights' moving average is a second candidate for the gates (0: off)")
    polish_steps: Int = Field(default=40, ge=0, le=MAX_STEPS, description="a missed try is first polished this long at lr / 10 (0: off),")
    polishes: Int = Field(default=3, ge=0, le=100, description="up to this many times, before a fresh, longer try")
    feature_pull: Float = Field(default=0.0, ge=0, le=1e6, description="> 0: triggers' features drawn to their class centroid (re-trained heads)")
    feature_match: Float = Field(default=0.0, ge=0, le=1e6,
        description="> 0: keys' features held inside the copy's own class clusters, so a leaker's\n"
                    "Mahalanobis filter on the copy's features cannot single them out (natural-mix with rank_code;\n"
                    "the digits example's variant: 0.25 with coded_keys 6, AUC 0.89 -> 0.52-0.65, README)")
    coded_keys: Float = Field(default=0.0, ge=0, le=1e6,
        description="> 0: with the rank code, each key's target is the coded answer of its label class, at this\n"
                    "weight, in place of plain cross-entropy: keys then answer as natural inputs do (needs the rank code; 0: off)")
    rank_code: Float = Field(default=0.2, ge=0, le=0.5, json_schema_extra=_by_style("rank_code"),
        description="wrong-class mass carrying the customer's rank code: survives soft-label\n"
                    "distillation, read from scores (0: off; needs distill_weight > 0, 3-13 classes)")
    attempts: Int = Field(default=5, ge=1, le=100, description="tries before a gate failure is final (each with a fresh seed)")
    retry_growth: Float = Field(default=0.5, ge=0, le=10,
        description="each retry trains this share of the steps longer than the one before, or shorter after keys too central (README)")
    seed: Int = Field(default=0, ge=0, le=2**63 - 1, description="base of every try's seed: another value gives other, equally good copies")
    device: Str = Field(default="auto", description='"auto" (a GPU if there is one), "cpu", "cuda", "cuda:N" or "mps"')
    threads: Int = Field(default=0, ge=0, le=4096, description="CPU threads for torch (`tracer issue --threads`); 0: OMP_NUM_THREADS if set,\n"
                                                                 "else the cores this process may use")

    @property
    def effective_threads(self) -> int:
        """The torch thread count ``threads`` stands for (0: OMP_NUM_THREADS, else the CPU affinity's size)."""
        if self.threads:
            return self.threads
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            return int(env)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f'must be "auto", "cpu", "cuda", "cuda:N" or "mps", not {_toml(value)}')
        return value


@_pydantic_dataclass(frozen=True, config=_STRICT)
class GateConfig:
    min_trigger_accuracy: Float = Field(default=0.95, ge=0, le=1, description="share of trigger probes the copy must answer with its codeword")
    max_accuracy_drop: Float = Field(default=0.005, ge=0, le=1, description="clean validation accuracy may drop at most this much (0.5 points)")
    max_key_separation: Float = Field(default=1.0, ge=0.5, le=1, json_schema_extra=_by_style("max_key_separation", GATE_STYLE_DEFAULTS),
        description="natural-mix keys: a Mahalanobis filter on the copy's own features, fitted on\n"
                    "validation inputs, may tell keys from them with at most this AUC (two-sided;\n"
                    "1: off; needs 100 validation inputs, README)")


@_pydantic_dataclass(frozen=True, config=_STRICT)
class IdentifyConfig:
    alpha: Float = Field(default=1e-6, gt=0, lt=1, description="bound on the chance of naming any innocent customer")


@_pydantic_dataclass(frozen=True, config=_STRICT)
class _Document:
    """The whole tracer.toml: unknown tables are refused like unknown keys."""

    task: TaskConfig
    model: ModelConfig
    data: DataConfig
    fingerprint: FingerprintConfig = Field(default_factory=FingerprintConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    gates: GateConfig = Field(default_factory=GateConfig)
    identify: IdentifyConfig = Field(default_factory=IdentifyConfig)

    @model_validator(mode="after")
    def _probe_size(self) -> _Document:
        count = self.fingerprint.probes_per_set or default_probe_count(self.task.num_classes)
        if count * self.task.features > MAX_PROBE_VALUES:
            raise _Bad("fingerprint.probes_per_set", f"x task features = {count} x {self.task.features} values per probe set; "
                                                     f"at most {MAX_PROBE_VALUES} (2**28) are supported")
        return self


_TABLES: dict[str, Any] = {f.name: f.type if isinstance(f.type, type) else globals()[str(f.type)]
                            for f in dataclasses.fields(_Document)}
_DOCUMENT = TypeAdapter(_Document)
_TABLE_NOTES = {
    "data": "exactly one of loader, npz, image_folder:",
    "embedding": "defaults shown; `tracer evaluate` tells you whether they suit your model",
    "gates": "checked on validation data before anything is written or recorded",
}


@dataclasses.dataclass(frozen=True)
class Config:
    root: Path
    task: TaskConfig
    model: ModelConfig
    data: DataConfig
    fingerprint: FingerprintConfig = dataclasses.field(default_factory=FingerprintConfig)
    embedding: EmbeddingConfig = dataclasses.field(default_factory=EmbeddingConfig)
    gates: GateConfig = dataclasses.field(default_factory=GateConfig)
    alpha: float = 1e-6

    @property
    def probes_per_set(self) -> int:
        return self.fingerprint.probes_per_set or default_probe_count(self.task.num_classes)

    def path(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.root / p

    def as_record(self) -> dict[str, Any]:
        """Parameters as plain JSON for the ledger."""
        d = dataclasses.asdict(self)
        d.pop("root")
        d["fingerprint"]["probes_per_set_effective"] = self.probes_per_set
        return d


# -- errors: one line naming the key ----------------------------------------------------------------


def _toml(value: Any, limit: int = 60) -> str:
    """A value as it reads in TOML (``"200"``, ``true``, ``nan``), shortened for a one-line message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_toml(v, limit) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_KINDS = {
    "int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
    "finite_number": "a finite number", "dataclass_type": "a table", "dict_type": "a table",
}
_SHAPES = {"input_shape": "a list of positive integers (without the batch axis)", "low": "a number or a list of numbers",
           "high": "a number or a list of numbers"}


def _known_keys(loc: tuple) -> list[str]:
    if len(loc) == 1:
        return list(_TABLES)
    cls = _TABLES.get(str(loc[0]))
    return [f.name for f in dataclasses.fields(cls)] if cls else []


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as ``table.key must be ..., not VALUE``."""
    loc = tuple(err["loc"])
    names = [str(p) for p in loc if not isinstance(p, int)]
    items = [p for p in loc if isinstance(p, int)]
    key = ".".join(names)
    typ, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    where = f" (item {items[0] + 1})" if items else ""
    if typ == "missing":
        return f"{'table ' if len(loc) == 1 else ''}{key} is required"
    if typ in ("unexpected_keyword_argument", "extra_forbidden"):
        close = difflib.get_close_matches(names[-1], _known_keys(loc), n=1)
        maybe = f" (did you mean {close[0]}?)" if close else ""
        what = "table" if len(loc) == 1 and isinstance(value, dict) else "key"
        return f"unknown {what} {key}{maybe}"
    if typ == "value_error" and isinstance(ctx.get("error"), _Bad):
        bad: _Bad = ctx["error"]
        full = bad.key if "." in bad.key else ".".join(p for p in (key, bad.key) if p)
        return f"{full} {bad.text}"
    if typ == "value_error":
        return f"{key} {ctx.get('error', err['msg'])}"
    if typ in ("tuple_type", "list_type"):
        return f"{key} must be {_SHAPES.get(names[-1], 'a list')}, not {_toml(value)}"
    if typ in _KINDS:
        return f"{key}{where} must be {_KINDS[typ]}, not {_toml(value)}"
    if typ == "literal_error":
        return f"{key} must be {str(ctx.get('expected', '')).replace(chr(39), chr(34))}, not {_toml(value)}"
    if typ in ("too_short", "too_long", "string_too_short", "string_too_long"):
        size = len(value) if isinstance(value, (str, list, tuple)) else "?"
        limit = ctx.get("min_length", ctx.get("max_length"))
        unit = ("character" if "string" in typ else "item") + ("" if limit == 1 else "s")
        return f"{key} must have {'at least' if 'short' in typ else 'at most'} {limit} {unit}, not {size}"
    return f"{key}{where} {_range_text(typ, ctx, value)}"


def _range_text(typ: str, ctx: dict[str, Any], value: Any) -> str:
    bound = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"), "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}
    if typ not in bound:
        return f"is invalid: {ctx.get('error', typ)}"
    name, op = bound[typ]
    if name == "ge" and ctx[name] == 1 and isinstance(value, int):
        return f"must be a positive integer, not {_toml(value)}"
    limit = ctx[name]
    shown = str(int(limit)) if float(limit).is_integer() and abs(limit) < 2**63 else f"{limit:g}"
    return f"must be {op} {shown}, not {_toml(value)}"


def _config_error(exc: ValidationError) -> ConfigError:
    errors = exc.errors(include_url=False)
    # a bad item also fails its list's length check ("at least 1 item after validation"): keep the item's error
    inner = [tuple(e["loc"]) for e in errors]
    errors = [e for e in errors if not any(len(o) > len(e["loc"]) and o[: len(e["loc"])] == tuple(e["loc"]) for o in inner)] or errors
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return ConfigError(f"tracer.toml: {_describe(errors[0])}{more}", hint=HINT)


def _style_defaults(doc: dict) -> dict:
    """``doc`` with the [embedding] and [gates] settings it leaves out that follow the key style set to that style's values.

    The field defaults are the uniform-grid recipe, so a document without a style (or without these
    keys) reads as it always did; anything malformed is left for validation to name.
    """
    fingerprint = doc.get("fingerprint", {})
    style = fingerprint.get("style", DEFAULT_STYLE) if isinstance(fingerprint, dict) else None
    if not isinstance(style, str) or style not in STYLE_DEFAULTS:
        return doc
    out = dict(doc)
    for name, table in _STYLE_TABLES.items():
        given = doc.get(name, {})
        if isinstance(given, dict):
            out[name] = {**table[style], **given}
    return out


def parse_config(doc: dict, root: Path) -> Config:
    """The validated configuration of a parsed tracer.toml document, or one ConfigError line."""
    try:
        d = _DOCUMENT.validate_python(_style_defaults(doc))
    except ValidationError as exc:
        raise _config_error(exc) from exc
    return Config(root=root, task=d.task, model=d.model, data=d.data, fingerprint=d.fingerprint,
                  embedding=d.embedding, gates=d.gates, alpha=d.identify.alpha)


KEY_STYLES = tuple(STYLE_DEFAULTS)


def with_key_style(text: str, key_style: str) -> str:
    """A tracer.toml text with its ``[fingerprint] style`` line set to ``key_style`` (added when it has none).

    The [embedding] settings the text leaves out follow the style (:data:`STYLE_DEFAULTS`).
    """
    if key_style not in STYLE_DEFAULTS:
        raise ConfigError(f"unknown key style {key_style!r}", hint=f"choose one of {', '.join(KEY_STYLES)}")
    line = f'style = "{key_style}"'
    text, found = re.subn(r'(?m)^style = "[^"\n]*"(?: *(#))?',  # the value replaced; a comment after it kept, aligned
                          lambda m: line.ljust(_COMMENT_COLUMN - 1) + " #" if m.group(1) else line, text, count=1)
    if not found:
        text, found = re.subn(r"(?m)^\[fingerprint\]\n", lambda m: m.group(0) + line + "\n", text, count=1)
    return text if found else text.rstrip("\n") + "\n\n[fingerprint]\n" + line + "\n"


def load_config(path: Path) -> Config:
    """Read, decode and validate ``path``; every failure is one ConfigError line naming the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path.name} is larger than {MAX_CONFIG_BYTES >> 20} MiB; that is not a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path.name} is not UTF-8 text (line {line}: invalid byte 0x{raw[exc.start]:02x})",
                          hint="save tracer.toml as UTF-8") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name} is not valid TOML: {str(exc).splitlines()[0]}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path.name} is not valid TOML: nested too deeply") from exc
    return parse_config(doc, path.parent)


# -- documentation: the annotated tracer.toml -------------------------------------------------------

_COMMENT_COLUMN = 30


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], float):
        value = value[0]  # low = 0.0: one number for every feature
    if isinstance(value, float):
        return re.sub(r"e([+-])0(\d)", r"e\1\2", repr(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _annotated_lines(name: str, cls: Any) -> list[str]:
    note = _TABLE_NOTES.get(name)
    lines = [f"[{name}]"] + ([f"# {note}"] if note else [])
    for key, info in cls.__pydantic_fields__.items():
        extra = info.json_schema_extra or {}
        value = extra.get("example", info.default)
        entry = ("# " if extra.get("commented") else "") + f"{key} = {_toml_value(value)}"
        comment = (info.description or "").splitlines() or [""]
        if "follows" in extra:  # a setting that follows [fingerprint] style: its default for each style
            comment[-1] += " [by style: " + ", ".join(f"{k} {_toml_value(v)}" for k, v in _by_family(extra["follows"]).items()) + "]"
        lines.append(f"{entry:<{_COMMENT_COLUMN - 1}} # {comment[0]}".rstrip())
        lines.extend(f"{'':<{_COMMENT_COLUMN - 1}} # {more}" for more in comment[1:])
    return lines


def annotated_toml() -> str:
    """Every key of tracer.toml with its default (or an example) and its description: one source for the docs."""
    blocks = ["\n".join(_annotated_lines(name, cls)) for name, cls in _TABLES.items()]
    return "\n\n".join(blocks) + "\n"


def write_readme(readme: Path) -> bool:
    """Replace the README's first ```toml block with :func:`annotated_toml`; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    new = re.sub(r"```toml\n.*?```", lambda _: "```toml\n" + annotated_toml() + "```", text, count=1, flags=re.S)
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text

