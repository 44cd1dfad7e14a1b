"""tracer.toml is validated whole at load: every bad value is one ConfigError line naming ``table.key``."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tracer.config import _TABLES, TaskConfig, load_config, parse_config
from tracer.errors import ConfigError
from tracer.examples import example_config
from tracer.workspace import GENERIC_CONFIG, STARTER_MODULE

ROOT = Path(".")


def _with(table: str, line: str, base: str = GENERIC_CONFIG) -> str:
    """``base`` with ``line`` set in ``[table]`` (replacing that key's line), or prepended when ``table`` is ""."""
    if not table:
        return line + "\n" + base
    key = line.split(" =")[0]
    out, inside = [], False
    for ln in base.splitlines():
        if ln.startswith("["):
            inside = ln == f"[{table}]"
            out.append(ln)
            if inside:
                out.append(line)
            continue
        if not (inside and ln.startswith(f"{key} =")):
            out.append(ln)
    return "\n".join(out) + "\n"


def _refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), ROOT)
    err = info.value
    assert "\n" not in err.message and err.message.startswith("tracer.toml: "), err.message
    assert err.hint, "every configuration error says where the keys are documented"
    return err


def _assert_names(err: ConfigError, key: str) -> None:
    assert err.message.startswith(f"tracer.toml: {key} "), err.message


# -- what loads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["digits", "tabular", "init"])
def test_the_examples_and_the_init_template_load(source):
    text = GENERIC_CONFIG if source == "init" else example_config(source)
    cfg = parse_config(tomllib.loads(text), ROOT)
    assert cfg.task.num_classes >= 2 and cfg.probes_per_set >= 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.embedding.steps = 3  # type: ignore[misc]


def test_the_workspace_written_by_init_loads(fresh_workspace):
    cfg = fresh_workspace.config
    assert cfg.model.factory == "mymodel:make_model" and cfg.data.loader == "mymodel:load_data"
    assert (fresh_workspace.root / STARTER_MODULE).is_file()


def test_numbers_are_kept_with_their_types_and_tuples():
    cfg = parse_config(tomllib.loads(_with("embedding", "learning_rate = 1")), ROOT)
    assert cfg.embedding.learning_rate == 1.0 and isinstance(cfg.embedding.learning_rate, float)
    assert cfg.task.input_shape == (1, 28, 28) and cfg.task.low == (0.0,)
    rec = cfg.as_record()
    assert set(rec) == {"task", "model", "data", "fingerprint", "embedding", "gates", "alpha"}
    assert rec["fingerprint"]["probes_per_set_effective"] == 64 and rec["alpha"] == 1e-6


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_documented_device_form_loads(device):
    cfg = parse_config(tomllib.loads(_with("embedding", f'device = "{device}"')), ROOT)
    assert cfg.embedding.device == device


# -- what is refused, with the key named ---------------------------------------------------------------


WRONG_TYPES = [
    ("embedding", 'steps = "200"', "embedding.steps", 'must be an integer, not "200"'),
    ("embedding", "steps = true", "embedding.steps", "must be an integer, not true"),
    ("embedding", "steps = 2.5", "embedding.steps", "must be an integer, not 2.5"),
    ("fingerprint", 'probe_sets = "2"', "fingerprint.probe_sets", "integer"),
    ("fingerprint", "probe_sets = 2.5", "fingerprint.probe_sets", "integer"),
    ("task", 'levels = "256"', "task.levels", "integer"),
    ("task", 'num_classes = "10"', "task.num_classes", "integer"),
    ("task", "input_shape = [true, 8, 8]", "task.input_shape", "(item 1) must be an integer, not true"),
    ("task", "input_shape = 784", "task.input_shape", "list of positive integers"),
    ("task", 'low = "0"', "task.low", "a number or a list of numbers"),
    ("task", "high = [1.0, true]", "task.high", "(item 2) must be a number, not true"),
    ("identify", 'alpha = "abc"', "identify.alpha", 'must be a number, not "abc"'),
    ("identify", "alpha = [1]", "identify.alpha", "must be a number, not [1]"),
    ("identify", "alpha = true", "identify.alpha", "must be a number, not true"),
    ("gates", 'max_accuracy_drop = "0.005"', "gates.max_accuracy_drop", "number"),
    ("embedding", "device = 0", "embedding.device", "must be a string, not 0"),
    ("model", "weights = 3", "model.weights", "must be a string"),
    ("data", "loader = false", "data.loader", "must be a string"),
    ("task", 'domain = "audio"', "task.domain", 'must be "image" or "tabular", not "audio"'),
    ("task", 'input_dtype = "int8"', "task.input_dtype", '"float32", "float16" or "float64"'),
    ("embedding", 'anchor_targets = "teacher"', "embedding.anchor_targets", '"base" or "original"'),
    ("", "task = 3", "task", "must be a table, not 3"),
]


@pytest.mark.parametrize("table, line, key, says", WRONG_TYPES, ids=[c[1] for c in WRONG_TYPES])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(table, line, key, says):
    if table:
        text = _with(table, line)
    else:  # a top-level `task = 3` instead of the table
        text = line + "\n[model]" + GENERIC_CONFIG.split("[model]", 1)[1]
    err = _refused(text)
    _assert_names(err, key)
    assert says in err.message
    assert isinstance(err.__cause__, ValidationError), "chained from the validation error, for --verbose"


FLOAT_KEYS = [(table, f.name) for table, cls in _TABLES.items() for f in dataclasses.fields(cls)
              if f.type in ("Float", "Bounds")]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("table, key", FLOAT_KEYS, ids=[f"{t}.{k}" for t, k in FLOAT_KEYS])
def test_every_float_refuses_nan_and_infinity(table, key, value):
    err = _refused(_with(table, f"{key} = {value}"))
    _assert_names(err, f"{table}.{key}")
    assert "finite" in err.message and value in err.message


def test_the_float_keys_cover_the_documented_ones():
    keys = {f"{t}.{k}" for t, k in FLOAT_KEYS}
    assert {"embedding.learning_rate", "embedding.distill_weight", "task.low", "task.high", "data.validation_fraction",
            "identify.alpha", "gates.max_accuracy_drop"} <= keys


@pytest.mark.parametrize("table", list(_TABLES))
def test_an_unknown_key_is_refused_in_every_table(table):
    err = _refused(_with(table, "sharpness = 3"))
    assert err.message == f"tracer.toml: unknown key {table}.sharpness"


def test_a_misspelt_key_gets_a_suggestion():
    err = _refused(_with("embedding", "step = 3"))
    assert err.message == "tracer.toml: unknown key embedding.step (did you mean steps?)"


@pytest.mark.parametrize("text, message", [
    ("[extra]\nx = 1", "tracer.toml: unknown table extra"),
    ("alpha = 1e-6", "tracer.toml: unknown key alpha"),
])
def test_unknown_top_level_tables_and_keys_are_refused(text, message):
    assert _refused(text + "\n" + GENERIC_CONFIG).message == message


OUT_OF_RANGE = [
    ("data", "validation_fraction = -1", "data.validation_fraction", "must be > 0, not -1"),
    ("data", "validation_fraction = 1.0", "data.validation_fraction", "must be < 1"),
    ("identify", "alpha = 0.0", "identify.alpha", "must be > 0"),
    ("identify", "alpha = 1", "identify.alpha", "must be < 1"),
    ("task", "levels = 1", "task.levels", "must be >= 2"),
    ("task", "levels = 65537", "task.levels", "must be <= 65536"),
    ("task", "num_classes = 1", "task.num_classes", "must be >= 2"),
    ("task", "low = 1.0", "task.low", "below task.high"),
    ("task", "low = [0.0, 0.5]", "task.low", "needs 1 value or 784"),
    ("embedding", "steps = 0", "embedding.steps", "positive"),
    ("embedding", "learning_rate = 0.0", "embedding.learning_rate", "must be > 0"),
    ("embedding", "weight_average = 1.0", "embedding.weight_average", "must be < 1"),
    ("embedding", "feature_pull = -1.0", "embedding.feature_pull", ">= 0"),
    ("embedding", "feature_match = -0.5", "embedding.feature_match", ">= 0"),
    ("embedding", "coded_keys = -1.0", "embedding.coded_keys", ">= 0"),
    ("embedding", "seed = -1", "embedding.seed", ">= 0"),
    ("fingerprint", "probe_sets = 0", "fingerprint.probe_sets", "positive"),
    ("gates", "min_trigger_accuracy = 1.5", "gates.min_trigger_accuracy", "<= 1"),
    ("data", 'npz = "data.npz"', "data", "exactly one of loader, npz, image_folder (found: loader, npz)"),
    ("model", 'factory = "mymodel.make_model"', "model.factory", "package.module:function"),
]


@pytest.mark.parametrize("table, line, key, says", OUT_OF_RANGE, ids=[c[1] for c in OUT_OF_RANGE])
def test_a_value_out_of_range_is_one_line_naming_the_key(table, line, key, says):
    err = _refused(_with(table, line))
    _assert_names(err, key)
    assert says in err.message


ABSURD = [
    ("task", "input_shape = [1, 8, 8000000000]", "task.input_shape", "must be <= 16777216"),
    ("task", "input_shape = [3, 4096, 4096]", "task.input_shape", "at most 16777216 (2**24)"),
    ("task", "input_shape = [1, 1, 1, 1, 1, 1, 1, 1, 1]", "task.input_shape", "at most 8 items"),
    ("task", "num_classes = 1000000", "task.num_classes", "<= 65536"),
    ("fingerprint", "probes_per_set = 1000000000", "fingerprint.probes_per_set", "<= 65536"),
    ("embedding", "steps = 1000000000", "embedding.steps", "<= 1000000"),
    ("embedding", "batch_size = 100000000", "embedding.batch_size", "<= 65536"),
    ("task", "high = 1e300", "task.high", "<= 1000000000000000"),
]


@pytest.mark.parametrize("table, line, key, says", ABSURD, ids=[c[1] for c in ABSURD])
def test_absurd_sizes_are_refused_before_anything_is_allocated(table, line, key, says):
    err = _refused(_with(table, line))
    _assert_names(err, key)
    assert says in err.message


def test_probes_times_features_is_capped():
    text = _with("task", "input_shape = [3, 224, 224]", _with("fingerprint", "probes_per_set = 65536"))
    err = _refused(text)
    _assert_names(err, "fingerprint.probes_per_set")
    assert "65536 x 150528 values per probe set; at most 268435456 (2**28)" in err.message
    parse_config(tomllib.loads(_with("task", "input_shape = [3, 224, 224]", _with("fingerprint", "probes_per_set = 1024"))), ROOT)


@pytest.mark.parametrize("device", ["bogus", "CPU", "cuda:", "cuda:x", "cuda:0 ", "cuda:1234", "tpu", ""])
def test_a_bad_device_is_refused(device):
    err = _refused(_with("embedding", f'device = "{device}"'))
    _assert_names(err, "embedding.device")


def test_a_missing_table_or_key_is_named():
    assert _refused("[model]\nfactory = 'a:b'\nweights = 'w'\n[data]\nloader = 'a:b'\n").message == "tracer.toml: table task is required"
    assert _refused(GENERIC_CONFIG.replace("num_classes = 10", "")).message == "tracer.toml: task.num_classes is required"


def test_several_problems_are_one_line_that_counts_the_rest():
    err = _refused(_with("embedding", 'steps = "200"', _with("embedding", "polishes = -1")))
    assert err.message.startswith("tracer.toml: embedding.steps ") and err.message.endswith("(and 1 more problem)")


def test_replace_validates_too():
    cfg = parse_config(tomllib.loads(GENERIC_CONFIG), ROOT)
    assert dataclasses.replace(cfg.embedding, steps=3).steps == 3
    with pytest.raises(ValidationError):
        dataclasses.replace(cfg.embedding, steps="3")


# -- the file itself ----------------------------------------------------------------------------------


def test_a_non_utf8_file_is_one_line(tmp_path):
    path = tmp_path / "tracer.toml"
    path.write_bytes(GENERIC_CONFIG.replace('domain = "image"', 'domain = "imäge"').encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message.startswith("tracer.toml is not UTF-8 text (line ") and "\n" not in info.value.message
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("body, says", [
    ("[task\n", "is not valid TOML"),
    ("x = " + "[" * 5000 + "]" * 5000, "is not valid TOML"),
    ("# " + "x" * (2 << 20), "larger than 1 MiB"),
])
def test_unreadable_toml_is_one_line(tmp_path, body, says):
    path = tmp_path / "tracer.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=says) as info:
        load_config(path)
    assert "\n" not in info.value.message


# -- through the CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, needle", [
    (lambda t: _with("embedding", 'steps = "200"', t).encode(), 'tracer.toml: embedding.steps must be an integer, not "200"'),
    (lambda t: _with("embedding", 'device = "bogus"', t).encode(), "tracer.toml: embedding.device must be"),
    (lambda t: ("[extra]\nx = 1\n" + t).encode(), "tracer.toml: unknown table extra"),
    (lambda t: t.replace("image", "imäge").encode("latin-1"), "tracer.toml is not UTF-8 text"),
], ids=["wrong-type", "bad-device", "unknown-table", "not-utf8"])
def test_the_cli_reports_a_bad_config_in_one_line_with_exit_3(fresh_workspace, run_cli, edit, needle):
    path = fresh_workspace.config_path
    path.write_bytes(edit(path.read_text()))
    r = run_cli(["issue", "--customer", "a"], cwd=fresh_workspace.root)
    assert r.returncode == 3, r
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert len(lines) <= 2 and all(ln.startswith(("error:", "hint:")) for ln in lines), r.stderr


# -- tracer init's starter ----------------------------------------------------------------------------


def test_init_writes_a_starter_that_fails_with_fill_me_in(tmp_path, run_cli, passphrase):
    env = {"TRACER_PASSPHRASE": passphrase, "TRACER_WORKSPACE": None}
    assert run_cli(["init", tmp_path / "ws"], env=env).returncode == 0
    root = tmp_path / "ws"
    assert (root / STARTER_MODULE).is_file() and (root / "models").is_dir()
    r = run_cli(["issue", "--customer", "x"], env=env, cwd=root)
    assert r.returncode == 3, r
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert lines[0].startswith("error: fill me in: edit mymodel.py"), r.stderr
    assert lines[1].startswith("hint: mymodel.py") and len(lines) == 2, r.stderr


def test_the_starter_data_stub_fails_the_same_way(tmp_path):
    import importlib.util

    from tracer.workspace import STARTER_CODE

    path = tmp_path / STARTER_MODULE
    path.write_text(STARTER_CODE)
    spec = importlib.util.spec_from_file_location("mymodel_stub", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for fn in ("make_model", "load_data"):
        with pytest.raises(ConfigError, match=r"^fill me in: edit mymodel\.py: " + fn) as info:
            getattr(module, fn)()
        assert "mymodel.py" in info.value.hint


def test_init_keeps_a_vendors_own_mymodel(tmp_path, passphrase):
    from tests.conftest import LOW_SCRYPT
    from tracer.workspace import init_workspace

    tmp_path.joinpath(STARTER_MODULE).write_text("# mine\n")
    init_workspace(tmp_path, passphrase=passphrase, scrypt=LOW_SCRYPT)
    assert tmp_path.joinpath(STARTER_MODULE).read_text() == "# mine\n"


def test_an_example_workspace_gets_no_starter(tmp_path, passphrase):
    from tests.conftest import LOW_SCRYPT
    from tracer.workspace import init_workspace

    init_workspace(tmp_path, passphrase=passphrase, scrypt=LOW_SCRYPT, config_text=example_config("digits"))
    assert not tmp_path.joinpath(STARTER_MODULE).exists()


# -- TaskConfig.bounds ---------------------------------------------------------------------------------


def test_bounds_broadcast_one_number_or_take_one_per_feature():
    task = TaskConfig(num_classes=3, input_shape=(2, 3), low=(-1.0,), high=(1.0,))
    low, high = task.bounds()
    assert low.shape == (2, 3) and low.dtype == np.float64 and np.all(low == -1.0) and np.all(high == 1.0)
    per = TaskConfig(num_classes=3, input_shape=(2, 3), low=tuple(float(i) for i in range(6)), high=tuple(i + 0.5 for i in range(6)))
    low, high = per.bounds(flat=True, dtype=np.float32)
    assert low.shape == (6,) and low.dtype == np.float32 and low.tolist() == list(range(6))
    low[0] = 99.0  # fresh arrays: the configuration is untouched
    assert per.bounds(flat=True)[0][0] == 0.0 and not math.isnan(float(high[5]))



# -- [embedding] settings that follow the key style ------------------------------------------------------


def test_embedding_settings_left_out_follow_the_key_style():
    from tracer.config import STYLE_DEFAULTS, with_key_style

    older = "\n".join(ln for ln in GENERIC_CONFIG.splitlines() if not ln.startswith("style ="))  # a tracer.toml from before styles
    for text, style in ((GENERIC_CONFIG, "natural-mix/v3"), (older, "uniform-grid/v1"),
                        (with_key_style(GENERIC_CONFIG, "uniform-grid/v1"), "uniform-grid/v1"),
                        (with_key_style(GENERIC_CONFIG, "natural-mix/v1"), "natural-mix/v1"),
                        (with_key_style(GENERIC_CONFIG, "natural-mix/v2"), "natural-mix/v2")):
        cfg = parse_config(tomllib.loads(text), ROOT)
        assert cfg.fingerprint.style == style
        for key, value in STYLE_DEFAULTS[style].items():
            assert getattr(cfg.embedding, key) == value, (style, key)
        assert cfg.as_record()["embedding"]["steps"] == STYLE_DEFAULTS[style]["steps"]  # the ledger records concrete values
    assert STYLE_DEFAULTS["uniform-grid/v1"] == {"steps": 250, "trigger_batch": 64, "trigger_noise": 0.03, "trigger_margin": 6.0, "rank_code": 0.2}
    natural = with_key_style(_with("embedding", "steps = 300", _with("embedding", "rank_code = 0.2")), "natural-mix/v1")
    cfg = parse_config(tomllib.loads(natural), ROOT)
    assert (cfg.embedding.steps, cfg.embedding.rank_code, cfg.embedding.trigger_batch) == (300, 0.2, 128)  # set: kept


def test_the_key_separation_gate_follows_the_style_and_an_explicit_value_wins():
    from tracer.config import GATE_STYLE_DEFAULTS, with_key_style

    for style, limit in (("uniform-grid/v1", 1.0), ("natural-mix/v1", 1.0), ("natural-mix/v2", 1.0), ("natural-mix/v3", 0.6)):
        assert GATE_STYLE_DEFAULTS[style] == {"max_key_separation": limit}
        cfg = parse_config(tomllib.loads(with_key_style(GENERIC_CONFIG, style)), ROOT)
        assert cfg.gates.max_key_separation == limit and cfg.as_record()["gates"]["max_key_separation"] == limit
        assert cfg.gates.max_accuracy_drop == 0.005  # the other gates do not follow the style
    mine = parse_config(tomllib.loads(_with("gates", "max_key_separation = 0.65")), ROOT)
    assert mine.fingerprint.style == "natural-mix/v3" and mine.gates.max_key_separation == 0.65
    for bad, says in (("0.4", ">= 0.5"), ("1.5", "<= 1"), ('"0.6"', "must be a number")):
        with pytest.raises(ConfigError, match=re.escape("gates.max_key_separation")) as err:
            parse_config(tomllib.loads(_with("gates", f"max_key_separation = {bad}")), ROOT)
        assert says in str(err.value), str(err.value)


def test_the_template_leaves_the_style_settings_commented_so_they_follow_a_changed_style():
    lines = GENERIC_CONFIG.splitlines()
    for key, value, grid in (("steps", "2000", "250"), ("trigger_batch", "128", "64"), ("trigger_noise", "0.0", "0.03"),
                             ("trigger_margin", "3.0", "6.0"), ("rank_code", "0.0", "0.2")):
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"# {key} = "))
        assert lines[i].startswith(f"# {key} = {value} ")  # the template's style: natural-mix
        assert f"[by style: uniform-grid {grid}, natural-mix {value}]" in lines[i] + lines[i + 1]  # the comment may wrap once
    assert 'style = "natural-mix/v3"' in lines[next(i for i, ln in enumerate(lines) if ln == "[fingerprint]") + 1]
    assert tomllib.loads(GENERIC_CONFIG)["fingerprint"]["pool_size"] == 0  # automatic: follows the training rows


def test_the_digits_example_with_natural_mix_keys_takes_the_wide_cnn_and_the_rank_code():
    from tracer.examples import STYLE_VARIANTS

    own = tomllib.loads(example_config("digits"))
    assert own["fingerprint"]["style"] == "uniform-grid/v1" and own["model"]["factory"] == "tracer.examples.digits:make_model"
    for style in ("natural-mix/v1", "natural-mix/v2", "natural-mix/v3"):
        natural = tomllib.loads(example_config("digits", key_style=style))
        assert natural["model"]["factory"] == "tracer.examples.digits:make_model_wide" and natural["embedding"]["rank_code"] == 0.2
        assert natural["fingerprint"]["style"] == style
        keys = {k: natural["embedding"][k] for k in ("coded_keys", "feature_match", "trigger_margin")}
        assert keys == {"coded_keys": 6.0, "feature_match": 0.25, "trigger_margin": 2.0}  # keys answered as natural inputs are
    assert tomllib.loads(example_config("digits", key_style="uniform-grid/v1")) == own
    for (name, _), changes in STYLE_VARIANTS.items():  # each variant's lines are in its bundled file
        assert all(old in example_config(name) for old in changes)


def test_with_key_style_replaces_or_adds_the_style_line():
    from tracer.config import with_key_style

    text = with_key_style(GENERIC_CONFIG, "natural-mix/v1")
    assert text.count('style = "natural-mix/v1"') == 1 and 'style = "uniform-grid/v1"' not in text
    assert tomllib.loads(text)["fingerprint"]["style"] == "natural-mix/v1"
    assert tomllib.loads(with_key_style("[task]\nnum_classes = 3\n", "natural-mix/v1"))["fingerprint"] == {"style": "natural-mix/v1"}
    bare = with_key_style("[fingerprint]\nprobe_sets = 2\n", "uniform-grid/v1")
    assert tomllib.loads(bare)["fingerprint"] == {"style": "uniform-grid/v1", "probe_sets": 2}
    for name in ("digits", "tabular", "shapes"):
        assert tomllib.loads(example_config(name, key_style="natural-mix/v1"))["fingerprint"]["style"] == "natural-mix/v1"
    with pytest.raises(ConfigError, match="unknown key style 'natural-mix/v9'"):
        with_key_style(GENERIC_CONFIG, "natural-mix/v9")


def test_natural_mix_keys_are_refused_for_a_two_class_task_before_anything_is_built(tmp_path):
    from tracer.config import with_key_style
    from tracer.fingerprint.keysets import issuing_key_sets

    cfg = parse_config(tomllib.loads(with_key_style(example_config("tabular"), "natural-mix/v1")), ROOT)
    built = []
    with pytest.raises(ConfigError, match="needs 3 or more classes; this task has 2") as info:
        issuing_key_sets(cfg, b"\0" * 32, tmp_path, data=lambda: built.append(1))  # type: ignore[arg-type, return-value]
    assert "uniform-grid/v1" in (info.value.hint or "") and not built and not list(tmp_path.iterdir())
