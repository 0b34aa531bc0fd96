"""The controller's worker socket with CURVE on, from a security review: a --curve-dir without server.key_secret was
a bare FileNotFoundError where every other bad key file is a typed error; and a hub dropped without close() hung the
process when collected or at exit (its context was terminated while the authenticator's socket was open), leaving
the temp dir that holds the local workers' secret key."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

import warmserve
from warmserve.controller.workers import WorkerHub
from warmserve.errors import InvalidArgumentError

from controller_harness import curve_dir, demo_path


def test_a_curve_dir_without_server_key_secret_is_a_typed_error_naming_the_file(tmp_path, monkeypatch):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    d = tmp_path / "empty"
    d.mkdir()
    threads = set(threading.enumerate())
    with pytest.raises(InvalidArgumentError, match="server.key_secret is missing") as e:
        WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=str(d))
    assert e.value.path == str(d / "server.key_secret")
    assert "create_certificates" in str(e.value)  # the fix
    with pytest.raises(InvalidArgumentError, match="server.key_secret is missing"):
        warmserve.Cluster(demo_path(), cpu_workers=1, curve_dir=str(d), start_timeout_s=60)
    assert os.listdir(private_tmp) == []
    assert set(threading.enumerate()) - threads == set()


_DROP = textwrap.dedent("""
    import gc, os, sys, tempfile
    tempfile.tempdir = sys.argv[2]
    from warmserve.controller.workers import WorkerHub
    h = WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=sys.argv[1])
    tmp = h.curve_keys.dir
    assert os.path.exists(os.path.join(tmp, "local.key_secret"))
    if sys.argv[3] == "del":
        del h
        gc.collect()
        print("after del, temp dir left:", os.path.exists(tmp), flush=True)
    print("exiting", flush=True)
""")


@pytest.mark.parametrize("how", ["del", "exit"])
def test_a_curve_hub_dropped_without_close_neither_hangs_nor_leaves_its_secret_key(tmp_path, how):
    d = curve_dir(tmp_path)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    try:
        r = subprocess.run([sys.executable, "-c", _DROP, str(d), str(private_tmp), how], capture_output=True,
                           text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the process hung ({how}): {e.stdout!r}")
    assert r.returncode == 0, r.stderr
    assert "exiting" in r.stdout and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    if how == "del":
        assert "after del, temp dir left: False" in r.stdout
    assert os.listdir(private_tmp) == []


def test_close_then_collect_is_still_clean(tmp_path, monkeypatch):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    threads = set(threading.enumerate())
    hub = WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=None, curve_dir=str(curve_dir(tmp_path)))
    assert hub.auth is not None and len(os.listdir(private_tmp)) == 1
    hub.close()
    hub.close()  # twice: nothing stopped twice
    assert hub.auth is None and hub.curve_keys.dir is None
    del hub
    assert os.listdir(private_tmp) == []
    assert set(threading.enumerate()) - threads == set()
