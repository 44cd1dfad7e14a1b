"""Data sources as the README documents them: image folders (real PNG files), npz files, attacker shares, gate resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tracer.config import parse_config
from tracer.data import (
    ATTACK_FRACTION,
    ATTACK_LABEL,
    Dataset,
    GateResolution,
    attacker_share_case,
    gate_resolution,
    load_dataset,
    split_indices,
)
from tracer.errors import ConfigError


def _config(root: Path, data_line: str, *, shape=(1, 4, 4), classes=2, low=0.0, high=1.0, drop=0.005):
    doc = {
        "task": {"num_classes": classes, "input_shape": list(shape), "domain": "image", "low": low, "high": high},
        "model": {"factory": "mymodel:make_model", "weights": "models/base.pt"},
        "data": dict([data_line.split("=", 1)]),
        "gates": {"max_accuracy_drop": drop},
    }
    return parse_config(doc, root)


def _png(path: Path, value, *, size=(8, 8), mode="L") -> None:
    """A flat image of one value (L: an int; RGB: a tuple), so tests know what each pixel must become."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def _class_folder(root: Path, per_class: dict[str, list[int]], mode="L") -> None:
    for cls, values in per_class.items():
        for i, v in enumerate(values):
            _png(root / cls / f"{i:03d}.png", v if mode == "L" else (v, 0, 255), mode=mode)


def test_one_image_folder_grayscale_resized_scaled_sorted_and_split_by_hash(tmp_path):
    # class folders named so that sorted order differs from creation order; values tell the class apart
    _class_folder(tmp_path / "images", {"zebra": [255] * 6, "apple": [0] * 6})
    (tmp_path / "images" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    (tmp_path / "images" / "apple" / "notes.txt").write_text("not an image")
    cfg = _config(tmp_path, "image_folder=images", low=-1.0, high=1.0)
    data = load_dataset(cfg)
    x = np.concatenate([data.x_train, data.x_val, data.x_attack])
    y = np.concatenate([data.y_train, data.y_val, data.y_attack])
    assert x.shape[1:] == (1, 4, 4) and x.dtype == np.float32  # 8x8 files resized to input_shape
    assert len(x) == 12  # the .txt file was skipped
    # pixel/255 mapped onto [low, high]: 0 -> -1, 255 -> +1; "apple" (sorted first) is class 0
    assert np.allclose(x[y == 0], -1.0) and np.allclose(x[y == 1], 1.0)
    # validation: validation_fraction (0.2) of the 12 files by SHA-256 of the index, then the held-out attacker share
    rest, val = split_indices(12, 0.2)
    assert len(data.y_val) == len(val) == 2
    train, attack = split_indices(len(rest), ATTACK_FRACTION, label=ATTACK_LABEL)
    assert len(data.y_train) == len(train) and len(data.y_attack) == len(attack) == 3
    assert data.attack_source == "held_out"


def test_rgb_folder_with_train_val_and_attack_splits(tmp_path):
    root = tmp_path / "imgs"
    for split in ("train", "val", "attack"):
        _class_folder(root / split, {"cat": [10, 10], "dog": [200, 200]}, mode="RGB")
    cfg = _config(tmp_path, "image_folder=imgs", shape=(3, 5, 6))
    data = load_dataset(cfg)
    assert data.x_train.shape == (4, 3, 5, 6) and len(data.x_val) == 4 and len(data.x_attack) == 4
    assert data.attack_source == "vendor"
    cat = data.x_train[data.y_train == 0][0]
    assert np.allclose(cat[0], 10 / 255) and np.allclose(cat[1], 0.0) and np.allclose(cat[2], 1.0)  # channels R, G, B
    assert data.attacker_share() == {"source": "vendor", "size": 4}


def test_attack_folder_beside_class_folders_is_the_attacker_share(tmp_path):
    root = tmp_path / "imgs"
    _class_folder(root, {"a": [0] * 5, "b": [255] * 5})
    _class_folder(root / "attack", {"a": [0, 0], "b": [255]})
    data = load_dataset(_config(tmp_path, "image_folder=imgs"))
    assert data.attack_source == "vendor" and data.y_attack.tolist() == [0, 0, 1]
    assert len(data.y_train) + len(data.y_val) == 10  # the attack/ folder is no third class


def test_val_class_folders_must_match_train(tmp_path):
    root = tmp_path / "imgs"
    _class_folder(root / "train", {"cat": [0], "dog": [255]})
    _class_folder(root / "val", {"cats": [0], "dog": [255]})
    with pytest.raises(ConfigError, match="differ from train"):
        load_dataset(_config(tmp_path, "image_folder=imgs"))


def test_unreadable_image_is_a_config_error_naming_the_file(tmp_path):
    _class_folder(tmp_path / "imgs", {"a": [0, 0], "b": [255, 255]})
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="broken.png"):
        load_dataset(_config(tmp_path, "image_folder=imgs"))


def test_npz_x_y_keeps_its_attacker_share(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((30, 1, 4, 4)), np.arange(30) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, x_attack=x[:5], y_attack=y[:5])
    data = load_dataset(_config(tmp_path, "npz=d.npz"))
    assert data.attack_source == "vendor" and len(data.x_attack) == 5
    assert len(data.x_train) + len(data.x_val) == 30


def test_npz_without_share_holds_one_out_of_training(tmp_path):
    rng = np.random.default_rng(1)
    x_tr, y_tr = rng.random((21, 1, 4, 4)), np.arange(21) % 2
    np.savez(tmp_path / "d.npz", x_train=x_tr, y_train=y_tr, x_val=x_tr[:4], y_val=y_tr[:4])
    data = load_dataset(_config(tmp_path, "npz=d.npz"))
    assert data.attack_source == "held_out" and len(data.x_attack) == 7 and len(data.x_train) == 14
    both = np.concatenate([data.x_train, data.x_attack]).reshape(21, -1)
    assert len({row.tobytes() for row in both}) == 21  # disjoint, and together the whole training data
    assert {r.tobytes() for r in both} == {r.astype(np.float32).tobytes() for r in x_tr.reshape(21, -1)}
    again = load_dataset(_config(tmp_path, "npz=d.npz"))
    assert np.array_equal(again.x_attack, data.x_attack)  # deterministic
    assert data.attacker_share() == {"source": "held_out", "size": 7, "fraction": ATTACK_FRACTION, "label": ATTACK_LABEL}


def test_attacker_share_cases():
    z = np.zeros((3, 2), dtype=np.float32)
    y = np.zeros(3, dtype=np.int64)
    vendor = Dataset(z, y, z, y, z, y, attack_source="vendor")
    held = Dataset(z, y, z, y, z, y, attack_source="held_out")
    assert attacker_share_case(vendor, None) == ("vendor", "given by the vendor")
    assert attacker_share_case(held, held.attacker_share()) == ("held_out", "held out from training by tracer (3 inputs)")
    case, text = attacker_share_case(held, None)  # a copy issued before shares were held out trained on them
    assert case == "legacy" and text.startswith("LEGACY: part of the training data")
    assert attacker_share_case(Dataset(z, y, z, y), None)[0] == "legacy"


def test_gate_resolution_warns_when_one_sample_outweighs_the_gate(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.random((180, 1, 4, 4)), y=np.arange(180) % 2)
    data = load_dataset(_config(tmp_path, "npz=d.npz"))
    res = gate_resolution(data, _config(tmp_path, "npz=d.npz"))
    assert res.validation_size == 36 and "2.78 accuracy points" in res.message() and res.errors_allowed == 0
    assert "more validation data" in res.warning() and "at least 200 validation inputs" in res.warning()
    assert gate_resolution(data, _config(tmp_path, "npz=d.npz", drop=0.03)).warning() is None
    assert GateResolution(400, 0.005).errors_allowed == 2 and GateResolution(400, 0.005).warning() is None
