"""A Slot.close() refused with ViewsAliveError has no side effects: the slot's running loads go on (found in review:
the refused close had already cancelled and rolled them back, csrc/pool.cpp Slot::close)."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

# LD_PRELOAD shim: while hold_reads is set, every pread (the loader's file reads) waits, and says so in reads_held.
# It keeps a load running for as long as the test needs, with no timing involved.
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/types.h>
#include <unistd.h>
int hold_reads = 0;
int reads_held = 0;
ssize_t pread(int fd, void* buf, size_t n, off_t off) {
  static ssize_t (*real)(int, void*, size_t, off_t);
  if (!real) real = (ssize_t (*)(int, void*, size_t, off_t))dlsym(RTLD_NEXT, "pread");
  while (__atomic_load_n(&hold_reads, __ATOMIC_SEQ_CST)) {
    __atomic_store_n(&reads_held, 1, __ATOMIC_SEQ_CST);
    usleep(1000);
  }
  return real(fd, buf, n, off);
}
"""

# The child: a load is held inside its first file read while a pinned view lives on another page of the slot. The
# close must be refused at once; the helper thread lets the read go on only after the close has returned (or after
# 10 s: a close that cancels the load waits for it, and the load must be able to end for the close to return).
CHILD = textwrap.dedent(r"""
    import ctypes, sys, threading, time
    import numpy as np, torch
    from warmserve.errors import ViewsAliveError
    from warmserve.memory import PagePool
    shim = ctypes.CDLL(sys.argv[1])
    hold = ctypes.c_int.in_dll(shim, "hold_reads")
    held = ctypes.c_int.in_dll(shim, "reads_held")
    PB, N = 4096, 8
    data = np.random.default_rng(1).integers(0, 256, N * PB, dtype=np.uint8)
    data.tofile(sys.argv[2])
    with PagePool(4 * N * PB, page_bytes=PB, prefault=False) as pool:
        s = pool.create_slot((N + 1) * PB, "s")
        s.map(N, 1)
        view = s.tensor(N * PB, PB, torch.uint8)  # a live pinned view on the page after the load's
        hold.value = 1
        job = s.load([(sys.argv[2], 0, 0, N * PB)], threads=1, chunk_bytes=1024)
        deadline = time.monotonic() + 60
        while not held.value:
            assert time.monotonic() < deadline, "the load never read"
        closed = threading.Event()
        def release():
            closed.wait(10)
            hold.value = 0
        t = threading.Thread(target=release)
        t.start()
        try:
            s.close()
            print("CLOSED")
        except ViewsAliveError as e:
            print("REFUSED", str(e).splitlines()[0])
        finally:
            closed.set()
            t.join()
        print("SLOT", s.closed, s.mapped_pages)
        try:
            print("LOADED", job.wait(timeout_s=60))
            print("SAME", s.tensor(0, N * PB, torch.uint8).numpy().tobytes() == data.tobytes())
        except Exception as e:
            print("LOADFAILED", type(e).__name__, str(e)[:200])
        del view
        s.close()
        print("FREE", pool.free_pages == pool.total_pages)
""")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc for the LD_PRELOAD shim")
def test_refused_close_leaves_the_running_load_alone(tmp_path):
    src = tmp_path / "holdread.c"
    src.write_text(SHIM)
    so = str(tmp_path / "holdread.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so, str(src), "-ldl"], check=True)
    env = dict(os.environ, LD_PRELOAD=so)
    r = subprocess.run([sys.executable, "-c", CHILD, so, str(tmp_path / "w.bin")], env=env, capture_output=True,
                       text=True, timeout=180)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "REFUSED" in out and "CLOSED" not in out, out
    assert "live pinned tensor view" in out, out
    assert "SLOT False 9" in out, out  # still open, the load's 8 pages and the view's page mapped
    assert f"LOADED {8 * 4096}" in out, out  # the load was not cancelled: it finished after the refused close
    assert "SAME True" in out and "FREE True" in out, out
