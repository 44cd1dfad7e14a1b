"""The vendor's data: an import-path loader, an .npz of arrays, or an image folder.

Whatever the source, the result is a :class:`Dataset` of numpy arrays shaped
like the task's input (without the batch axis) with integer labels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ._imports import call_vendor, import_object
from .config import Config
from .errors import ConfigError

__all__ = ["Dataset", "load_dataset", "split_indices", "vendor_attacker_split"]


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_attack: np.ndarray | None = None  # a disjoint share for robustness evaluation
    y_attack: np.ndarray | None = None

    def fingerprint(self) -> str:
        """SHA-256 over all arrays (dtype, shape and bytes), recorded with each issuance."""
        h = hashlib.sha256(b"tracer-dataset/v1")
        for name in ("x_train", "y_train", "x_val", "y_val"):
            arr = np.ascontiguousarray(getattr(self, name))
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def split_indices(n: int, fraction: float, *, label: str = "split") -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split (by SHA-256 of the index, not a versioned RNG): (rest, held_out)."""
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"{label}/{i}".encode()).digest())
    k = int(round(n * fraction))
    return np.array(sorted(order[k:]), dtype=np.int64), np.array(sorted(order[:k]), dtype=np.int64)


def vendor_attacker_split(x: np.ndarray, y: np.ndarray, *, validation: float, label: str) -> dict[str, np.ndarray]:
    """Validation share first; of the rest, 2/3 for the vendor and a disjoint 1/3 for an attacker (evaluation)."""
    rest, val = split_indices(len(x), validation, label=f"{label}/val")
    vendor_pos, attack_pos = split_indices(len(rest), 1 / 3, label=f"{label}/attack")
    train, attack = rest[vendor_pos], rest[attack_pos]
    return {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val], "x_attack": x[attack], "y_attack": y[attack]}


def _as_dataset(arrays: Mapping[str, Any], config: Config, source: str) -> Dataset:
    task = config.task
    arrays = dict(arrays)
    if "x_train" not in arrays and "x" in arrays:
        train, val = split_indices(len(arrays["x"]), config.data.validation_fraction)
        x, y = np.asarray(arrays["x"]), np.asarray(arrays["y"])
        arrays = {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val]}
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
    return Dataset(**out)


def _labels(values: Any, what: str) -> np.ndarray:
    """Integer class labels; NaN, infinite or fractional labels are refused (casting them only warns, then lies)."""
    y = np.asarray(values).reshape(-1)
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise ConfigError(f"{what} has {int(bad.sum())} labels that are not whole numbers (NaN, infinite or fractional)")
    return y.astype(np.int64)


def _load_image_folder(folder: Path, config: Config) -> dict[str, np.ndarray]:
    from PIL import Image

    task = config.task
    if len(task.input_shape) != 3:
        raise ConfigError("image_folder needs task.input_shape = [channels, height, width]")
    channels, height, width = task.input_shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ConfigError("image_folder supports 1 or 3 channels")
    lo, hi = task.bounds()  # per-feature bounds too, not only the first value

    def read(root: Path) -> tuple[np.ndarray, np.ndarray]:
        classes = sorted(p for p in root.iterdir() if p.is_dir())
        if len(classes) != task.num_classes:
            raise ConfigError(f"{root}: found {len(classes)} class folders, task.num_classes is {task.num_classes}")
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for f in sorted(cls.iterdir()):
                if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp"):
                    continue
                img = Image.open(f).convert(mode).resize((width, height))
                arr = np.asarray(img, dtype=np.float64) / 255.0
                arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
                xs.append(lo + (hi - lo) * arr)
                ys.append(label)
        return np.stack(xs), np.array(ys)

    if (folder / "train").is_dir() and (folder / "val").is_dir():
        x_tr, y_tr = read(folder / "train")
        x_va, y_va = read(folder / "val")
        return {"x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va}
    x, y = read(folder)
    return {"x": x, "y": y}


def load_dataset(config: Config) -> Dataset:
    d = config.data
    if d.loader:
        fn = import_object(d.loader, root=config.root, field="data.loader")
        result = call_vendor(fn, spec=d.loader, field="data.loader")
        if isinstance(result, tuple) and len(result) == 4:
            result = dict(zip(("x_train", "y_train", "x_val", "y_val"), result))
        if not isinstance(result, Mapping):
            raise ConfigError(f"data.loader {d.loader} must return a mapping of arrays or a 4-tuple")
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
