"""The shared-build lock behind the issued-workspace fixtures: one build for all processes, none half-used."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from tests.fixtures_issued import BUILD_LOG, shared_build

CHILDREN = 4


def _build(folder: Path) -> None:
    (folder / "payload").write_text("built")
    with open(folder.parent / "build-calls", "a") as fh:
        fh.write("x")


def _build_when_all_started(folder: Path) -> None:
    """Build only once every child is on its way: without the lock, each would then build too."""
    give_up = time.monotonic() + 600  # only a child that died before starting can keep this waiting
    while not all((folder.parent / f"started-{i}").exists() for i in range(CHILDREN)) and time.monotonic() < give_up:
        time.sleep(0.01)
    _build(folder)


def _child(shared: Path, i: int) -> None:
    (shared / f"started-{i}").write_text("")
    folder = shared_build(shared, "thing", _build_when_all_started)
    (shared / f"result-{i}").write_text(f"{folder}\n{(folder / 'payload').read_text()}")


def test_concurrent_processes_build_once_and_all_see_the_finished_build(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # fresh processes, like xdist workers
    children = [ctx.Process(target=_child, args=(tmp_path, i)) for i in range(CHILDREN)]
    for c in children:
        c.start()
    for c in children:
        c.join()
    assert [c.exitcode for c in children] == [0] * CHILDREN
    assert (tmp_path / "build-calls").read_text() == "x"
    assert len((tmp_path / BUILD_LOG).read_text().splitlines()) == 1
    results = {(tmp_path / f"result-{i}").read_text() for i in range(CHILDREN)}
    assert results == {f"{tmp_path / 'thing'}\nbuilt"}


def test_a_failed_or_killed_build_is_removed_and_built_again(tmp_path):
    def broken(folder: Path) -> None:
        (folder / "half").write_text("")
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        shared_build(tmp_path, "thing", broken)
    assert (tmp_path / "thing" / "half").exists() and not (tmp_path / BUILD_LOG).exists()
    folder = shared_build(tmp_path, "thing", _build)
    assert sorted(p.name for p in folder.iterdir()) == [".complete", "payload"]  # the half-built file is gone
    assert shared_build(tmp_path, "thing", broken) == folder  # finished: never built again
    assert (tmp_path / "build-calls").read_text() == "x"
