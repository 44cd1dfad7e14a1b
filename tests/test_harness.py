"""The test harness itself: one shared build of the issued workspaces for all processes, and subprocesses bounded by CPU time."""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_limited
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


def test_a_process_waiting_for_one_build_makes_another_meanwhile(tmp_path):
    import fcntl
    import threading

    results: list[Path | None] = []
    with open(tmp_path / "a.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is building "a"
        assert shared_build(tmp_path, "a", _build, wait=False) is None
        done_meanwhile = threading.Event()

        def meanwhile() -> None:
            results.append(shared_build(tmp_path, "b", _build, wait=False))
            done_meanwhile.set()

        waiter = threading.Thread(target=lambda: results.append(shared_build(tmp_path, "a", _build, meanwhile=meanwhile)))
        waiter.start()
        assert done_meanwhile.wait(timeout=600)  # a hang limit only
        assert results == [tmp_path / "b"] and (tmp_path / "b" / ".complete").exists()
        assert waiter.is_alive()  # still waiting for "a"
    waiter.join()
    assert results == [tmp_path / "b", tmp_path / "a"] and (tmp_path / "build-calls").read_text() == "xx"


def test_a_subprocess_is_killed_for_cpu_time_not_for_wall_time():
    slow = run_limited([sys.executable, "-c", "import time; time.sleep(2); print('done')"], cpu_s=1.5)
    assert slow.returncode == 0 and slow.stdout == "done\n"  # 2 s of wall time, a fraction of a second of CPU
    with pytest.raises(pytest.fail.Exception, match=r"killed, it used \d+ s of CPU time \(limit 1\)"):
        run_limited([sys.executable, "-c", "while True: pass"], cpu_s=1)
