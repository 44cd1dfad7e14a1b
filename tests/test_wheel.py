"""The built wheel carries the package's data files (issue 14: a wheel without examples/*.toml broke `tracer demo`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_the_examples_and_py_typed(tmp_path):
    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ and egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "tracer", src / "tracer", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip_env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True, cwd=tmp_path, env=pip_env, timeout=300)
    (wheel,) = wheels.glob("tracer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tracer/py.typed", "tracer/examples/digits.toml", "tracer/examples/tabular.toml"} <= names
    assert not any(n.startswith("tracer/templates") for n in names)

    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True, cwd=tmp_path, env=pip_env, timeout=300)
    for rel in ("py.typed", "examples/digits.toml", "examples/tabular.toml"):
        assert (target / "tracer" / rel).is_file(), rel
    # the installed copy first on the path (the editable checkout's finder comes after sys.path); checked below
    code = ("import tracer, tracer.examples as ex; print(tracer.__file__); "
            "assert all('[task]' in ex.example_config(n) for n in ex.EXAMPLES)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).resolve().is_relative_to(target.resolve())
