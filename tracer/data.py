"""The vendor's data: an import-path loader, an .npz of arrays, or an image folder.

Whatever the source, the result is a :class:`Dataset` of numpy arrays shaped
like the task's input (without the batch axis) with integer labels.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._imports import call_vendor, import_object
from .config import Config
from .errors import ConfigError

__all__ = ["Dataset", "load_dataset", "split_indices", "vendor_attacker_split", "hold_out_attacker_share",
           "ATTACK_FRACTION", "ATTACK_LABEL", "ATTACKER_SHARE_TEXT", "attacker_share_case", "IMAGE_SUFFIXES", "GateResolution", "gate_resolution"]

#: With no attacker share from the vendor, this share of the training data is held out for `tracer evaluate`.
ATTACK_FRACTION = 1 / 3
#: The hash label of that split (see :func:`split_indices`): part of the contract, recorded with each issuance.
ATTACK_LABEL = "tracer/attacker-share"
#: Files an image folder reads (by suffix, case-insensitive); others, and hidden files, are skipped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_attack: np.ndarray | None = None  # a disjoint share for robustness evaluation
    y_attack: np.ndarray | None = None
    #: where x_attack came from: "vendor" (given by the data source) or "held_out" (split off x_train by tracer)
    attack_source: str = "vendor"

    def attacker_share(self) -> dict[str, Any]:
        """What the issuance record notes about the attacker share (evaluate reads it back to label its tables)."""
        size = 0 if self.y_attack is None else int(len(self.y_attack))
        if self.attack_source == "held_out":
            return {"source": "held_out", "size": size, "fraction": ATTACK_FRACTION, "label": ATTACK_LABEL}
        return {"source": "vendor", "size": size}

    def fingerprint(self) -> str:
        """SHA-256 over all arrays (dtype, shape and bytes), recorded with each issuance."""
        h = hashlib.sha256(b"tracer-dataset/v1")
        for name in ("x_train", "y_train", "x_val", "y_val"):
            arr = np.ascontiguousarray(getattr(self, name))
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def hash_order(n: int, *, label: str) -> list[int]:
    """range(n) ordered by SHA-256 of ``label/i``: a shuffle that no RNG version can change (splits and folds)."""
    return sorted(range(n), key=lambda i: hashlib.sha256(f"{label}/{i}".encode()).digest())


def split_indices(n: int, fraction: float, *, label: str = "split") -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split (by SHA-256 of the index, not a versioned RNG): (rest, held_out)."""
    order = hash_order(n, label=label)
    k = int(round(n * fraction))
    return np.array(sorted(order[k:]), dtype=np.int64), np.array(sorted(order[:k]), dtype=np.int64)


def vendor_attacker_split(x: np.ndarray, y: np.ndarray, *, validation: float, label: str) -> dict[str, np.ndarray]:
    """Validation share first; of the rest, 2/3 for the vendor and a disjoint 1/3 for an attacker (evaluation)."""
    rest, val = split_indices(len(x), validation, label=f"{label}/val")
    vendor_pos, attack_pos = split_indices(len(rest), 1 / 3, label=f"{label}/attack")
    train, attack = rest[vendor_pos], rest[attack_pos]
    return {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val], "x_attack": x[attack], "y_attack": y[attack]}


def hold_out_attacker_share(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Split :data:`ATTACK_FRACTION` of the training data off by hash (label :data:`ATTACK_LABEL`): issuance never sees it."""
    train, attack = split_indices(len(x), ATTACK_FRACTION, label=ATTACK_LABEL)
    return {"x_train": x[train], "y_train": y[train], "x_attack": x[attack], "y_attack": y[attack]}


#: How evaluate tables name each case of the attacker share (text, JSON ``attacker_data.source``, HTML).
ATTACKER_SHARE_TEXT = {
    "vendor": "given by the vendor",
    "held_out": "held out from training by tracer ({n} inputs)",
    "legacy": "LEGACY: part of the training data (the copy was issued before tracer held an attacker share out, "
              "so its attacks use data the copy was trained on)",
}


def attacker_share_case(data: Dataset, recorded: Mapping[str, Any] | None) -> tuple[str, str]:
    """("vendor" | "held_out" | "legacy", its text) for a copy whose issuance record noted ``recorded``.

    A held-out share counts as unseen only for copies whose record says it was held out: copies issued
    by older versions trained on the whole of x_train.
    """
    if data.x_attack is None or not len(data.x_attack):
        return "legacy", ATTACKER_SHARE_TEXT["legacy"]
    if data.attack_source == "vendor":
        return "vendor", ATTACKER_SHARE_TEXT["vendor"]
    if recorded is not None and recorded.get("source") == "held_out":
        return "held_out", ATTACKER_SHARE_TEXT["held_out"].format(n=len(data.x_attack))
    return "legacy", ATTACKER_SHARE_TEXT["legacy"]


def _as_dataset(arrays: Mapping[str, Any], config: Config, source: str) -> Dataset:
    task = config.task
    arrays = dict(arrays)
    if "x_train" not in arrays and "x" in arrays:
        if "y" not in arrays:
            raise ConfigError(f"{source}: has x but no y")
        x, y = np.asarray(arrays.pop("x")), np.asarray(arrays.pop("y"))
        if len(x) != len(y):
            raise ConfigError(f"{source}: x and y differ in length")
        train, val = split_indices(len(x), config.data.validation_fraction)
        arrays.update({"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val]})  # x_attack, y_attack kept
    for req in ("x_train", "y_train", "x_val", "y_val"):
        if req not in arrays:
            raise ConfigError(f"{source}: missing array {req!r} (need x_train, y_train, x_val, y_val, or x and y)")
    out = {}
    for name in ("x_train", "x_val", "x_attack"):
        if arrays.get(name) is None:
            continue
        x = np.asarray(arrays[name], dtype=task.input_dtype)
        if x.ndim == len(task.input_shape) + 1 and x.shape[1:] != task.input_shape:
            raise ConfigError(f"{source}: {name} has shape {x.shape[1:]}, task.input_shape is {task.input_shape}")
        if x.shape[1:] != task.input_shape:
            try:
                x = x.reshape((len(x), *task.input_shape))
            except ValueError as exc:
                raise ConfigError(f"{source}: {name} cannot be shaped as {task.input_shape}") from exc
        out[name] = x
    for name in ("y_train", "y_val", "y_attack"):
        if arrays.get(name) is None:
            continue
        y = _labels(arrays[name], f"{source}: {name}")
        if y.size and (y.min() < 0 or y.max() >= task.num_classes):
            raise ConfigError(f"{source}: {name} has labels outside 0..{task.num_classes - 1}")
        out[name] = y
    for x_name, y_name in (("x_train", "y_train"), ("x_val", "y_val"), ("x_attack", "y_attack")):
        if (x_name in out) != (y_name in out) or (x_name in out and len(out[x_name]) != len(out[y_name])):
            raise ConfigError(f"{source}: {x_name} and {y_name} differ in length")
    if len(out["x_train"]) == 0 or len(out["x_val"]) == 0:
        raise ConfigError(f"{source}: training and validation data must not be empty")
    if "x_attack" in out and len(out["x_attack"]):
        return Dataset(**out, attack_source="vendor")
    out.update(hold_out_attacker_share(out["x_train"], out["y_train"]))
    if len(out["x_train"]) == 0:
        raise ConfigError(f"{source}: too little training data to hold out an attacker share", hint="give more training data, or x_attack/y_attack")
    return Dataset(**out, attack_source="held_out")


def _labels(values: Any, what: str) -> np.ndarray:
    """Integer class labels; NaN, infinite or fractional labels are refused (casting them only warns, then lies)."""
    y = np.asarray(values).reshape(-1)
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise ConfigError(f"{what} has {int(bad.sum())} labels that are not whole numbers (NaN, infinite or fractional)")
    return y.astype(np.int64)


def _subfolders(root: Path) -> list[Path]:
    """Visible sub-folders, in sorted name order (hidden ones such as .ipynb_checkpoints are no class)."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _is_split_folder(path: Path) -> bool:
    """``train/``, ``val/`` or ``attack/`` holding class folders (a class folder holds images, not folders)."""
    return path.is_dir() and bool(_subfolders(path))


def _read_image(f: Path, *, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One file as floats in [0, 1], shaped [channels, height, width]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as opened:
            img = opened.convert(mode).resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float64) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ConfigError(f"data.image_folder: cannot read image {f}: {exc}") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _read_classes(root: Path, config: Config, *, names: list[str] | None, top: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image under ``root/<class>/``; labels number the class folders in sorted name order.

    In the ``top`` folder an ``attack/`` that holds folders is the attacker share, not a class.
    """
    task = config.task
    channels, height, width = task.input_shape
    lo, hi = task.bounds()  # per-feature bounds too, not only the first value
    classes = [c for c in _subfolders(root) if not (top and c.name == "attack" and _is_split_folder(c))]
    found = [c.name for c in classes]
    if names is not None and found != names:
        raise ConfigError(f"{root}: class folders {found} differ from train/'s {names}", hint="every split needs the same class folders")
    if len(classes) != task.num_classes:
        raise ConfigError(f"{root}: found {len(classes)} class folders, task.num_classes is {task.num_classes}")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted(cls.iterdir(), key=lambda p: p.name):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
                xs.append(lo + (hi - lo) * _read_image(f, mode="L" if channels == 1 else "RGB", size=(width, height)))
                ys.append(label)
    if not xs:
        raise ConfigError(f"{root}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return np.stack(xs), np.array(ys, dtype=np.int64), found


def _load_image_folder(folder: Path, config: Config) -> dict[str, np.ndarray]:
    """Class folders under ``folder`` (or under its ``train/`` and ``val/``), plus an optional ``attack/`` share."""
    task = config.task
    if len(task.input_shape) != 3:
        raise ConfigError("image_folder needs task.input_shape = [channels, height, width]")
    if task.input_shape[0] not in (1, 3):
        raise ConfigError("image_folder supports 1 (grayscale, L) or 3 (RGB) channels")
    arrays: dict[str, np.ndarray] = {}
    if _is_split_folder(folder / "train"):
        arrays["x_train"], arrays["y_train"], names = _read_classes(folder / "train", config, names=None)
        if _is_split_folder(folder / "val"):
            arrays["x_val"], arrays["y_val"], _ = _read_classes(folder / "val", config, names=names)
        else:  # no val/: split validation off train/ as for one folder
            x, y = arrays.pop("x_train"), arrays.pop("y_train")
            arrays.update({"x": x, "y": y})
    else:
        arrays["x"], arrays["y"], names = _read_classes(folder, config, names=None, top=True)
    if _is_split_folder(folder / "attack"):
        arrays["x_attack"], arrays["y_attack"], _ = _read_classes(folder / "attack", config, names=names)
    return arrays


def load_dataset(config: Config) -> Dataset:
    d = config.data
    if d.loader:
        fn = import_object(d.loader, root=config.root, field="data.loader")
        result = call_vendor(fn, spec=d.loader, field="data.loader")
        if isinstance(result, tuple) and len(result) in (4, 6):
            result = dict(zip(("x_train", "y_train", "x_val", "y_val", "x_attack", "y_attack"), result))
        if not isinstance(result, Mapping):
            raise ConfigError(f"data.loader {d.loader} must return a mapping of arrays, a 4-tuple or a 6-tuple (with x_attack, y_attack)")
        return _as_dataset(result, config, f"data.loader {d.loader}")
    if d.npz:
        path = config.path(d.npz)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"data.npz {path}: cannot read ({exc})") from exc
        return _as_dataset(arrays, config, f"data.npz {path.name}")
    folder = config.path(d.image_folder)  # type: ignore[arg-type]
    if not folder.is_dir():
        raise ConfigError(f"data.image_folder {folder} is not a folder")
    return _as_dataset(_load_image_folder(folder, config), config, f"data.image_folder {folder.name}")


@dataclass(frozen=True)
class GateResolution:
    """What one validation input is worth against the clean-accuracy gate (told to the user before training)."""

    validation_size: int
    max_accuracy_drop: float

    @property
    def point_per_sample(self) -> float:
        """Accuracy points (percent) one validation input is worth."""
        return 100.0 / self.validation_size

    @property
    def errors_allowed(self) -> int:
        """Validation errors a copy may make beyond the base model's and still pass (the gate's own tolerance)."""
        return int(math.floor(self.max_accuracy_drop * self.validation_size + 1e-9))

    @property
    def coarse(self) -> bool:
        """One sample is worth more than the allowed drop: the gate passes only with no extra error at all."""
        return 1.0 / self.validation_size > self.max_accuracy_drop + 1e-12

    def message(self) -> str:
        return (f"validation: {self.validation_size} inputs, one is worth {self.point_per_sample:.2f} accuracy points; "
                f"gates.max_accuracy_drop {100 * self.max_accuracy_drop:.2f} points allows {self.errors_allowed} "
                f"validation error(s) more than the base model")

    def warning(self) -> str | None:
        """A warning with the fix when one sample is worth more than the allowed drop, else None."""
        if not self.coarse:
            return None
        needed = math.ceil(1.0 / self.max_accuracy_drop - 1e-9) if self.max_accuracy_drop > 0 else None
        more = f"at least {needed} validation inputs" if needed else "a max_accuracy_drop above 0"
        return (f"one validation input ({self.point_per_sample:.2f} points) is worth more than gates.max_accuracy_drop "
                f"({100 * self.max_accuracy_drop:.2f} points): a copy passes only with no validation error beyond the base "
                f"model's, so issuance may need several tries. Fix: more validation data ({more}: a larger x_val or "
                f"data.validation_fraction), or a larger gates.max_accuracy_drop (e.g. {1.0 / self.validation_size + 1e-4:.4f} "
                f"allows one error)")


def gate_resolution(data: Dataset, config: Config) -> GateResolution:
    return GateResolution(validation_size=int(len(data.y_val)), max_accuracy_drop=float(config.gates.max_accuracy_drop))
