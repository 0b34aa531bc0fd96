"""Loads, found in review of csrc/loader.cpp and csrc/bindings.cpp: a finished load kept its checkpoint files open
and its source buffers referenced for as long as its job object lived (the engine keeps it for the model's whole
life, so a deleted checkpoint's disk space was never freed); a file that could not be opened for want of
descriptors (EMFILE) came back as InvalidArgumentError with its errno lost; and a load whose driver thread could
not start came back as a bare RuntimeError."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest

from warmserve.errors import CancelledError, InvalidArgumentError
from warmserve.memory import PagePool

PAGE = 4096
HERE = os.path.dirname(os.path.abspath(__file__))


def _fds_naming(path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor os.listdir itself used, closed since
            continue
        if target.startswith(str(path)):
            out.append(target)
    return out


def _wait_done(job, timeout_s: float = 30.0) -> None:
    t0 = time.monotonic()
    while not job.done:
        assert time.monotonic() - t0 < timeout_s, "the load did not finish"
        time.sleep(0.001)


# A finished load, its job object still referenced: the checkpoint file is closed as soon as the job is done (no
# wait() needed), a deleted checkpoint's space goes, and the buffer it copied from goes with the caller's last
# reference once wait() has returned.
def test_a_finished_load_closes_its_file_and_lets_go_of_its_buffer(tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(os.urandom(64 * PAGE))
    with PagePool(256 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(128 * PAGE, "s")
        job = slot.load([(str(path), 0, 0, 64 * PAGE)])
        _wait_done(job)
        assert _fds_naming(path) == []  # before: ['.../ckpt.bin'] while `job` lived
        assert job.wait() == 64 * PAGE
        buf = np.ones(64 * PAGE, dtype=np.uint8)
        ref = weakref.ref(buf)
        job2 = slot.load([(buf, 0, 64 * PAGE, 64 * PAGE)])
        assert job2.wait() == 64 * PAGE
        del buf
        gc.collect()
        assert ref() is None  # before: alive until job2 went
        assert job.progress == (64 * PAGE, 64 * PAGE) and job2.done
        slot.close()


# The same for a load that is cancelled: once it has ended its file is closed, and the buffer goes after wait()
# raised CancelledError, the job object still referenced.
def test_a_cancelled_load_closes_its_file_and_lets_go_of_its_buffer(tmp_path):
    n = 16 << 20
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x05" * n)
    buf = np.ones(n, dtype=np.uint8)
    ref = weakref.ref(buf)
    with PagePool(2 * n, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(2 * n, "s")
        job = slot.load([(str(path), 0, 0, n), (buf, 0, n, n)], threads=1, chunk_bytes=1024)
        job.cancel()
        _wait_done(job)
        assert _fds_naming(path) == []  # before: still open
        del buf
        try:
            job.wait()
        except CancelledError:
            pass
        gc.collect()
        assert ref() is None  # before: alive until the job went
        slot.close()


_EMFILE = r"""
import json, os, resource, sys
from warmserve.memory import PagePool
path = sys.argv[1]
out = {}
with PagePool(16 * 4096, page_bytes=4096, prefault=False) as pool:
    slot = pool.create_slot(8 * 4096, "s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd, hard))  # the lowest free descriptor is at the limit: EMFILE
    try:
        slot.load([(path, 0, 0, 4 * 4096)]).wait()
        out["raised"] = None
    except Exception as e:
        out.update(raised=type(e).__name__, code=getattr(e, "code", None), name=getattr(e, "name", None), msg=str(e))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    out["after"] = slot.load([(path, 0, 0, 4 * 4096)]).wait()
print(json.dumps(out))
"""


# Out of descriptors: a DriverError with the errno (EMFILE) and the fix, not "your argument is wrong"; the next load,
# descriptors back, works. A missing file is still the caller's argument.
def test_a_file_that_cannot_be_opened_for_want_of_descriptors_is_a_driver_error_with_its_errno(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(4 * PAGE))
    r = subprocess.run([sys.executable, "-c", _EMFILE, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # before: InvalidArgumentError, code None, name None
    assert (out["raised"], out["code"], out["name"]) == ("DriverError", 24, "EMFILE"), out
    assert str(path) in out["msg"] and "ulimit -n" in out["msg"], out["msg"]
    assert out["after"] == 4 * PAGE
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(8 * PAGE, "s")
        with pytest.raises(InvalidArgumentError, match="No such file"):
            slot.load([(str(tmp_path / "missing.bin"), 0, 0, PAGE)])
        slot.close()


_NO_DRIVER_THREAD = r"""
import ctypes, json, sys
# A numpy source needs no torch, whose import for a tensor check (memory/pool.py) took 1.5 s of this child's 1.9 s
sys.modules["torch"] = None
import numpy as np
from warmserve.memory import PagePool
ctl = ctypes.c_int.in_dll(ctypes.CDLL(sys.argv[1]), "fail_threads")
out = {}
with PagePool(16 * 4096, page_bytes=4096, prefault=False) as pool:
    slot = pool.create_slot(4 * 4096, "s")
    a = np.ones(4096, dtype=np.uint8)
    ctl.value = 1
    try:
        slot.load([(a, 0, 0, 4096)], threads=1, chunk_bytes=1024)
        out["raised"] = None
    except Exception as e:
        out.update(raised=type(e).__name__, code=getattr(e, "code", None), name=getattr(e, "name", None), msg=str(e))
    finally:
        ctl.value = 0
    out.update(mapped=slot.mapped_pages, free=pool.free_pages, total=pool.total_pages)
    out["after"] = slot.load([(a, 0, 0, 4096)]).wait()
print(json.dumps(out))
"""


# pthread_create fails (EAGAIN, an LD_PRELOAD shim) for the load's driver thread: a DriverError naming the cause and
# the fix, with the errno; nothing stays mapped and the next load works.
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc for the LD_PRELOAD shim")
def test_a_load_whose_driver_thread_cannot_start_is_a_typed_driver_error(tmp_path):
    so = str(tmp_path / "failthr.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so, os.path.join(HERE, "failthr.c"), "-ldl"], check=True)
    r = subprocess.run([sys.executable, "-c", _NO_DRIVER_THREAD, so], env=dict(os.environ, LD_PRELOAD=so),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # before: RuntimeError "Resource temporarily unavailable", no code
    assert (out["raised"], out["code"], out["name"]) == ("DriverError", 11, "EAGAIN"), out
    assert "thread" in out["msg"] and "Fix:" in out["msg"], out["msg"]
    assert out["mapped"] == 0 and out["free"] == out["total"], out
    assert out["after"] == PAGE
