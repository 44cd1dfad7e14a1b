"""Wire formats and answer parsing of `tracer probe` (pure functions, no network)."""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest

from tracer._jsonable import jsonable
from tracer.config import TaskConfig
from tracer.errors import ConfigError
from tracer.fingerprint import make_probe_set
from tracer.probing.formats import (
    MalformedResponse,
    ResponseError,
    WireFormat,
    decode_png,
    encode_png,
    follow_path,
    interpret,
    load_label_map,
    make_format,
)
from tracer.probing.session import input_sha256, make_schedule

GRAY = TaskConfig(num_classes=10, input_shape=(1, 8, 8))
RGB = TaskConfig(num_classes=5, input_shape=(3, 4, 6), low=tuple((-1.0, 0.0, 2.0)[i // 24] for i in range(72)),
                 high=tuple((1.0, 1.0, 3.0)[i // 24] for i in range(72)))  # per-feature bounds, one range per channel
TAB = TaskConfig(num_classes=2, input_shape=(30,), domain="tabular")


@pytest.mark.parametrize("task", [GRAY, RGB])
def test_png_is_lossless_for_probe_inputs(task: TaskConfig) -> None:
    ps = make_probe_set(os.urandom(32), "ps1", task, 16)
    for x in ps.inputs:
        png = encode_png(x, task)
        assert png.startswith(b"\x89PNG")
        back = decode_png(png, task)
        assert back.dtype == x.dtype and np.array_equal(back, x)
        assert input_sha256(back, task.input_dtype) == input_sha256(x, task.input_dtype)


def test_png_needs_an_8bit_image_task() -> None:
    with pytest.raises(ConfigError):
        encode_png(np.zeros(30, np.float32), TAB)
    with pytest.raises(ConfigError):
        WireFormat("torchserve", TAB)


def test_kserve_and_open_inference_requests() -> None:
    x = make_probe_set(os.urandom(32), "ps1", GRAY, 1).inputs[0]
    body = json.loads(WireFormat("kserve-v1", GRAY).build(x).content)
    inst = np.asarray(body["instances"][0], dtype=np.float32)
    assert inst.shape == (1, 8, 8) and np.array_equal(inst, x)  # float32 values survive JSON exactly
    body = json.loads(WireFormat("kserve-v1", GRAY, input_encoding="png").build(x).content)
    assert np.array_equal(decode_png(base64.b64decode(body["instances"][0]["b64"]), GRAY), x)
    body = json.loads(WireFormat("open-inference", GRAY, input_name="pixels").build(x).content)
    spec = body["inputs"][0]
    assert spec["name"] == "pixels" and spec["shape"] == [1, 1, 8, 8] and spec["datatype"] == "FP32" and len(spec["data"]) == 64
    req = WireFormat("torchserve", GRAY).build(x)
    assert req.headers["Content-Type"] == "image/png" and np.array_equal(decode_png(req.content, GRAY), x)


def test_template_substitution(tmp_path) -> None:
    x = make_probe_set(os.urandom(32), "ps1", GRAY, 1).inputs[0]
    tpl = tmp_path / "t.json"
    tpl.write_text(json.dumps({"a": {"pixels": "$INPUT", "keep": "$INPUTX"}, "img": "data:image/png;base64,$INPUT_PNG_B64", "n": [1, "$INPUT_PNG_B64"]}))
    fmt = make_format("template", GRAY, request_template=tpl, response_path="result.class_id")
    body = json.loads(fmt.build(x).content)
    assert np.array_equal(np.asarray(body["a"]["pixels"], np.float32), x)
    assert body["a"]["keep"] == "$INPUTX"  # only the exact string "$INPUT" becomes the tensor
    assert np.array_equal(decode_png(base64.b64decode(body["img"].split(",", 1)[1]), GRAY), x)
    assert body["n"][1] == body["img"].split(",", 1)[1]
    assert fmt.classify({"result": {"class_id": 4}}) == 4
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1}')
    with pytest.raises(ConfigError, match="INPUT"):
        make_format("template", GRAY, request_template=bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        make_format("template", GRAY, request_template=bad)
    with pytest.raises(ConfigError, match="needs --request-template"):
        make_format("template", GRAY)
    with pytest.raises(ConfigError, match="only applies"):
        make_format("kserve-v1", GRAY, request_template=tpl)


def test_follow_path() -> None:
    doc = {"predictions": [{"label": "cat"}, 7], "r": {"c": 3}}
    assert follow_path(doc, "predictions.1") == 7
    assert follow_path(doc, "predictions.-1") == 7
    assert follow_path(doc, "r.c") == 3
    with pytest.raises(ResponseError, match="r.d"):
        follow_path(doc, "r.d")
    with pytest.raises(ResponseError, match="predictions.5"):
        follow_path(doc, "predictions.5")
    with pytest.raises(ResponseError):
        follow_path(doc, "r.c.x")


@pytest.mark.parametrize(
    "value,expected",
    [
        (3, 3), (3.0, 3), ("7", 7), ([5], 5), ([[0.1] * 9 + [0.9]], 9), ([0.0] * 4 + [2.0] + [0.0] * 5, 4),
        ({"scores": [0.0] * 2 + [1.0] + [0.0] * 7}, 2), ({"class_id": 8, "confidence": 0.9}, 8),
        ({"0": 0.1, "6": 0.8, "2": 0.1}, 6), ([{"label": "1", "score": 0.2}, {"label": "4", "score": 0.7}], 4),
        ({"three": 0.9, "one": 0.1}, 3), ("three", 3),
    ],
)
def test_interpret_answer_shapes(value, expected) -> None:
    labels = {"one": 1, "three": 3}
    assert interpret(value, 10, labels) == expected


@pytest.mark.parametrize("value", [10, -1, 2.5, [0.1, 0.9], "cat", True, None, {"foo": "bar"}, [float("nan")] * 10, [1, 2, 3]])
def test_interpret_rejects_what_does_not_fit(value) -> None:
    with pytest.raises(ResponseError):
        interpret(value, 10, None)


def test_label_maps(tmp_path) -> None:
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"zero": 0, "one": 1}))
    assert load_label_map(f, 10) == {"zero": 0, "one": 1}
    f.write_text(json.dumps(["zero", "one", "two"]))
    assert load_label_map(f, 10)["two"] == 2
    f.write_text(json.dumps({"0": "zero", "1": "one"}))
    assert load_label_map(f, 10) == {"zero": 0, "one": 1}
    f.write_text("zero\none\n\ntwo\n")
    assert load_label_map(f, 10) == {"zero": 0, "one": 1, "two": 2}
    f.write_text(json.dumps({"x": 12}))
    with pytest.raises(ConfigError, match="outside"):
        load_label_map(f, 10)
    with pytest.raises(ConfigError, match="cannot read"):
        load_label_map(tmp_path / "missing.json", 10)


def test_decode_answers() -> None:
    fmt = WireFormat("kserve-v1", GRAY)
    assert fmt.decode(b'{"predictions": [3]}', "application/json") == {"predictions": [3]}
    assert fmt.decode(b"seven\n", "text/plain") == "seven"
    deep = b'{"predictions": ' + b"[" * 100_000 + b"3" + b"]" * 100_000 + b"}"  # RecursionError in json.loads
    for body in (b'{"predictions": [3', b"", b"\xff\xfe", b"[1, 2", deep, b'{"predictions": [' + b"9" * 5000 + b"]}"):
        with pytest.raises(MalformedResponse):
            fmt.decode(body, "application/json")
    assert fmt.classify({"predictions": [[0.0] * 3 + [1.0] + [0.0] * 6]}) == 3
    with pytest.raises(ResponseError, match="2 predictions"):
        fmt.classify({"predictions": [1, 2]})
    with pytest.raises(ResponseError, match="error"):
        fmt.classify({"error": "model not loaded"})
    oi = WireFormat("open-inference", GRAY)
    assert oi.classify({"outputs": [{"name": "y", "shape": [1, 10], "datatype": "FP32", "data": [0.0] * 9 + [1.0]}]}) == 9
    assert oi.classify({"outputs": [{"name": "y", "shape": [1, 1], "datatype": "INT64", "data": [4]}]}) == 4
    with pytest.raises(ResponseError, match="outputs"):
        oi.classify({"predictions": [1]})


def test_schedule_is_a_seeded_shuffle_with_decoys() -> None:
    seed = os.urandom(32)
    s = make_schedule(seed, 64, 360, 1)
    assert s == make_schedule(seed, 64, 360, 1)  # --resume replays the same order
    assert s != make_schedule(os.urandom(32), 64, 360, 1)
    assert sorted(i for k, i in s if k == "t") == list(range(64))
    decoys = [i for k, i in s if k == "d"]
    assert len(decoys) == 64 and len(set(decoys)) == 64 and all(0 <= i < 360 for i in decoys)
    assert [k for k, _ in s[:20]].count("t") not in (0, 20)  # interleaved, not blocked
    assert len(make_schedule(seed, 64, 10, 3)) == 256  # more decoys than validation inputs: reused
    assert make_schedule(seed, 8, 0, 0) and all(k == "t" for k, _ in make_schedule(seed, 8, 0, 0))
    with pytest.raises(ConfigError):
        make_schedule(seed, 8, 0, 1)


def test_raw_answers_are_made_canonical_json() -> None:
    assert jsonable({"a": [float("nan"), float("inf"), 1.5, 2**60, True, None], 3: "x"}, raw=True) == {"a": ["nan", "inf", 1.5, str(2**60), True, None], "3": "x"}
