"""The workspace configuration (``tracer.toml``), parsed and validated once.

Every field a command relies on is checked here so that a bad configuration
fails up front with one line naming the field, before any key is unlocked or
any file is written.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Config", "TaskConfig", "ModelConfig", "DataConfig", "FingerprintConfig", "EmbeddingConfig", "GateConfig", "load_config", "default_probe_count"]

_DTYPES = ("float32", "float16", "float64")


def default_probe_count(num_classes: int) -> int:
    """Probes per set so that a perfect match has p <= 10**-64 (64 probes at 10 classes).

    Few classes carry fewer bits per probe, so they get more probes: 2 classes -> 224.
    """
    bits_needed = 64 * math.log2(10)
    return max(64, int(math.ceil(bits_needed / math.log2(num_classes) / 16.0)) * 16)


@dataclass(frozen=True)
class TaskConfig:
    num_classes: int
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"
    domain: str = "image"  # "image" | "tabular"
    low: tuple[float, ...] = (0.0,)
    high: tuple[float, ...] = (1.0,)
    levels: int = 256  # image domain: values on a grid of `levels` steps (8-bit pixels survive PNG)

    @property
    def features(self) -> int:
        return int(math.prod(self.input_shape))


@dataclass(frozen=True)
class ModelConfig:
    factory: str
    weights: str


@dataclass(frozen=True)
class DataConfig:
    loader: str | None = None
    npz: str | None = None
    image_folder: str | None = None
    validation_fraction: float = 0.2


@dataclass(frozen=True)
class FingerprintConfig:
    probe_sets: int = 2
    probes_per_set: int = 0  # 0: automatic from num_classes


@dataclass(frozen=True)
class EmbeddingConfig:
    steps: int = 200
    batch_size: int = 32
    trigger_batch: int = 32
    learning_rate: float = 2e-2
    distill_weight: float = 12.0
    trigger_noise: float = 0.03
    anchor_noise: float = 0.1  # jittered clean inputs held to the base model's outputs (fraction of the range; 0: off)
    anchor_targets: str = "base"  # anchors held to the base model's answers on them ("base") or on their originals ("original")
    trigger_margin: float = 6.0  # logit margin pushed for on every trigger (hinge); outlives fine-tuning (0: off)
    margin_weight: float = 1.0
    weight_average: float = 0.97  # decay of the moving average of the weights offered as a second candidate (0: off)
    polish_steps: int = 40  # a copy that misses a gate is first polished this long at a tenth of the learning rate (0: off)
    polishes: int = 3  # polishes of a missed try (each from the best copy so far) before a fresh, longer try
    feature_pull: float = 0.0  # triggers' penultimate features drawn to their codeword class's centroid (0: off)
    attempts: int = 5  # tries (fresh seed, each retry 50 % longer) before a gate failure is final
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class GateConfig:
    min_trigger_accuracy: float = 0.95
    max_accuracy_drop: float = 0.005


@dataclass(frozen=True)
class Config:
    root: Path
    task: TaskConfig
    model: ModelConfig
    data: DataConfig
    fingerprint: FingerprintConfig = field(default_factory=FingerprintConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    alpha: float = 1e-6

    @property
    def probes_per_set(self) -> int:
        return self.fingerprint.probes_per_set or default_probe_count(self.task.num_classes)

    def path(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.root / p

    def as_record(self) -> dict[str, Any]:
        """Parameters as plain JSON for the ledger."""
        d = asdict(self)
        d.pop("root")
        d["fingerprint"]["probes_per_set_effective"] = self.probes_per_set
        return d


def _section(doc: dict, name: str) -> dict:
    sec = doc.get(name, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"tracer.toml: [{name}] must be a table")
    return sec


def _build(cls, sec: dict, name: str, **overrides):
    known = set(cls.__dataclass_fields__)
    unknown = set(sec) - known
    if unknown:
        raise ConfigError(f"tracer.toml: unknown key {name}.{sorted(unknown)[0]}")
    try:
        return cls(**{**sec, **overrides})
    except TypeError as exc:
        raise ConfigError(f"tracer.toml: [{name}] {exc}") from None


def _floats(value: Any, key: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),)
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    raise ConfigError(f"tracer.toml: task.{key} must be a number or a list of numbers")


def parse_config(doc: dict, root: Path) -> Config:
    task_sec = dict(_section(doc, "task"))
    for req in ("num_classes", "input_shape"):
        if req not in task_sec:
            raise ConfigError(f"tracer.toml: task.{req} is required")
    shape = task_sec.get("input_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ConfigError("tracer.toml: task.input_shape must be a list of positive integers (without the batch axis)")
    task_sec["input_shape"] = tuple(shape)
    task_sec["low"] = _floats(task_sec.get("low", 0.0), "low")
    task_sec["high"] = _floats(task_sec.get("high", 1.0), "high")
    task = _build(TaskConfig, task_sec, "task")
    if not isinstance(task.num_classes, int) or task.num_classes < 2:
        raise ConfigError("tracer.toml: task.num_classes must be an integer >= 2")
    if task.input_dtype not in _DTYPES:
        raise ConfigError(f"tracer.toml: task.input_dtype must be one of {', '.join(_DTYPES)}")
    if task.domain not in ("image", "tabular"):
        raise ConfigError("tracer.toml: task.domain must be 'image' or 'tabular'")
    for bound in (task.low, task.high):
        if len(bound) not in (1, task.features):
            raise ConfigError(f"tracer.toml: task.low/high need 1 or {task.features} values")
    if any(lo >= hi for lo, hi in zip(task.low * (task.features if len(task.low) == 1 else 1), task.high * (task.features if len(task.high) == 1 else 1))):
        raise ConfigError("tracer.toml: task.low must be below task.high")
    if not 2 <= task.levels <= 65536:
        raise ConfigError("tracer.toml: task.levels must be in [2, 65536]")

    model_sec = _section(doc, "model")
    for req in ("factory", "weights"):
        if not isinstance(model_sec.get(req), str):
            raise ConfigError(f"tracer.toml: model.{req} is required")
    model = _build(ModelConfig, model_sec, "model")
    data = _build(DataConfig, _section(doc, "data"), "data")
    if sum(x is not None for x in (data.loader, data.npz, data.image_folder)) != 1:
        raise ConfigError("tracer.toml: [data] needs exactly one of loader, npz, image_folder")
    fp = _build(FingerprintConfig, _section(doc, "fingerprint"), "fingerprint")
    if not 1 <= fp.probe_sets <= 64 or fp.probes_per_set < 0:
        raise ConfigError("tracer.toml: fingerprint.probe_sets must be 1..64 and probes_per_set >= 0")
    emb = _build(EmbeddingConfig, _section(doc, "embedding"), "embedding")
    if emb.attempts < 1 or emb.steps < 1 or emb.batch_size < 1 or emb.trigger_batch < 1 or emb.learning_rate <= 0:
        raise ConfigError("tracer.toml: embedding.steps, batch_size, trigger_batch and learning_rate must be positive")
    weights = (emb.distill_weight, emb.trigger_noise, emb.anchor_noise, emb.trigger_margin, emb.margin_weight, emb.feature_pull)
    if not 0 <= emb.weight_average < 1 or emb.polish_steps < 0 or emb.polishes < 0:
        raise ConfigError("tracer.toml: embedding.weight_average must be in [0, 1), polish_steps and polishes >= 0")
    if emb.anchor_targets not in ("base", "original"):
        raise ConfigError(f"tracer.toml: embedding.anchor_targets must be \"base\" or \"original\", not {emb.anchor_targets!r}")
    if any(w < 0 for w in weights):
        raise ConfigError("tracer.toml: embedding weights, noises and margins must be >= 0")
    gates = _build(GateConfig, _section(doc, "gates"), "gates")
    if not 0 <= gates.min_trigger_accuracy <= 1 or not 0 <= gates.max_accuracy_drop <= 1:
        raise ConfigError("tracer.toml: gates values are fractions in [0, 1]")
    ident = _section(doc, "identify")
    alpha = float(ident.get("alpha", 1e-6))
    if not 0 < alpha < 1:
        raise ConfigError("tracer.toml: identify.alpha must be in (0, 1)")
    return Config(root=root, task=task, model=model, data=data, fingerprint=fp, embedding=emb, gates=gates, alpha=alpha)


def load_config(path: Path) -> Config:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name} is not valid TOML: {exc}") from None
    return parse_config(doc, path.parent)
