"""Worker logs (`serve --log-dir`) whose folder turned hostile under a running server, met at a worker's (re)start
(``launch.spawn_worker``): the worker still starts, and the trouble is said once with its path and fix. Found in
review: a folder that could not be made or written failed every restart with a traceback, the worker never
started; one on a full disk took every log line, unsaid."""

from __future__ import annotations

import logging
import os

import pytest

from warmserve.controller import launch


@pytest.fixture(autouse=True)
def _fresh_said():
    said = getattr(launch, "_log_dir_said", {})  # what was said before this test: not this test's
    said.clear()
    yield
    said.clear()


def _spawn(log_dir: str, worker_id: str):
    # a controller nobody listens at: the worker is killed before it would matter
    return launch.spawn_worker("tcp://127.0.0.1:9", "cpu", memory_bytes=64 << 20, threads=1, worker_id=worker_id,
                               heartbeat_interval_s=1.0, log_dir=log_dir)


def _stop(proc) -> None:
    proc.kill()
    proc.wait()


def _said(caplog, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def test_a_log_dir_that_cannot_be_made_starts_the_workers_and_is_said_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    log_dir = tmp_path / "logs"
    log_dir.write_text("a file where the log folder was (it was removed, and this written)\n")
    for i in range(2):
        _stop(_spawn(str(log_dir), f"w{i}"))
    said = _said(caplog, "worker logs: cannot write")
    assert len(said) == 1 and str(log_dir) in said[0] and "--log-dir" in said[0], said
    os.unlink(log_dir)  # mended: the next start writes its log there again, and says so
    _stop(_spawn(str(log_dir), "w2"))
    assert (log_dir / "w2.log").exists() and _said(caplog, "written again")


def test_a_log_dir_on_a_full_disk_is_said_once(full_tmpfs, caplog):
    full_dir = full_tmpfs / "dir"  # tests/conftest.py
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    for i in range(2):
        _stop(_spawn(str(full_dir), f"w{i}"))
    said = _said(caplog, "is full")
    assert len(said) == 1 and str(full_dir) in said[0] and "free space" in said[0], said
