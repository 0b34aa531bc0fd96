"""The cuda backend's rollbacks (found in review), run on the host against csrc/testing/fake_libcuda.c as in
test_cuda_runs.py: a rollback whose cuMemUnmap failed was ignored, so the slot's range went on mapping a page the
pool took back (it would show through two slots); such a range must make the slot unusable, as a failed re-map
already did. And a slot close on a thread capturing a CUDA graph skipped the drain it cannot do there and
unmapped under kernels still queued; it is refused now, as an unmap there is.

The driver calls fail where the test says: a shim wraps the fake's cuMemMap and cuMemUnmap with countdowns."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from warmserve.memory import cuda_compiled

ROOT = Path(__file__).resolve().parents[3]
CUDA_H = next((d for d in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda")
               if d and (Path(d) / "include" / "cuda.h").exists()), None)
pytestmark = pytest.mark.skipif(not cuda_compiled() or CUDA_H is None or shutil.which("cc") is None,
                                reason="needs the cuda backend compiled in, cuda.h and a C compiler")

SHIM = r"""
#include <cuda.h>
CUresult inner_cuMemMap(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
CUresult inner_cuMemUnmap(CUdeviceptr, size_t);
static int map_countdown, unmaps_to_fail;
void shim_fail_map_at(int k) { map_countdown = k; }   /* the k-th next cuMemMap fails */
void shim_fail_unmaps(int n) { unmaps_to_fail = n; }  /* the next n cuMemUnmap calls fail */
CUresult cuMemMap(CUdeviceptr p, size_t n, size_t off, CUmemGenericAllocationHandle h, unsigned long long f) {
  if (map_countdown > 0 && --map_countdown == 0) return CUDA_ERROR_OUT_OF_MEMORY;
  return inner_cuMemMap(p, n, off, h, f);
}
CUresult cuMemUnmap(CUdeviceptr p, size_t n) {
  if (unmaps_to_fail > 0) {
    --unmaps_to_fail;
    return CUDA_ERROR_INVALID_VALUE;
  }
  return inner_cuMemUnmap(p, n);
}
"""

PRELUDE = """
import ctypes
from warmserve import _C
from warmserve.errors import InvalidArgumentError, SlotUnusableError, WarmServeError
from warmserve.memory import PagePool
shim = ctypes.CDLL("libcuda.so.1")  # the library the backend dlopens
PB = 64 << 10
pool = PagePool(4 * PB, backend="cuda", page_bytes=PB)
"""


def run_on_fake_driver(tmp_path, body: str) -> list[str]:
    cc = ["cc", "-std=c11", "-O1", "-Wall", "-Werror", "-fPIC", f"-I{CUDA_H}/include", "-c"]
    (tmp_path / "shim.c").write_text(SHIM)
    subprocess.run(cc + ["-DcuMemMap=inner_cuMemMap", "-DcuMemUnmap=inner_cuMemUnmap",
                         str(ROOT / "csrc/testing/fake_libcuda.c"), "-o", str(tmp_path / "fake.o")], check=True)
    subprocess.run(cc + [str(tmp_path / "shim.c"), "-o", str(tmp_path / "shim.o")], check=True)
    subprocess.run(["cc", "-shared", str(tmp_path / "fake.o"), str(tmp_path / "shim.o"), "-o",
                    str(tmp_path / "libcuda.so.1")], check=True)
    env = dict(os.environ, LD_LIBRARY_PATH=f"{tmp_path}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()


def test_a_map_whose_rollback_cannot_unmap_makes_the_slot_unusable(tmp_path):
    out = run_on_fake_driver(tmp_path, """
        a = pool.create_slot(4 * PB, "a")
        a.map(0, 4)
        a.unmap(1, 1)
        a.unmap(3, 1)  # pool pages 1 and 3 are free: a map of two pages is two runs
        b = pool.create_slot(4 * PB, "b")
        shim.shim_fail_map_at(2)  # the second run fails ...
        shim.shim_fail_unmaps(1)  # ... and the rollback of the first cannot unmap it
        try:
            b.map(0, 2)
            print("no-error")
        except WarmServeError as e:
            print(type(e).__name__, getattr(e, "hole_bytes", 0) == PB)
        print(pool.free_pages)
        try:
            b.map(2, 1)
            print("accepted")
        except SlotUnusableError:
            print("refused")
        b.close()
        a.map(1, 1)  # the other slots go on
        print(a.mapped_pages)
    """)
    assert out == ["SlotUnusableError", "True", "2", "refused", "3"]


def test_a_move_whose_rollback_cannot_unmap_makes_the_destination_unusable(tmp_path):
    out = run_on_fake_driver(tmp_path, """
        a, b = pool.create_slot(4 * PB, "a"), pool.create_slot(4 * PB, "b")
        a.map(0, 1)
        shim.shim_fail_unmaps(2)  # the source cannot be unmapped, nor the destination again
        try:
            a.move_pages(0, 1, b, 0)
            print("no-error")
        except WarmServeError as e:
            print(type(e).__name__, "'b'" in str(e))
        print(a.mapped_ranges(), b.closed)  # the page stays the source's
        try:
            b.map(1, 1)
            print("accepted")
        except SlotUnusableError:
            print("refused")
        a.unmap(0, 1)
        print(pool.free_pages)
    """)
    assert out == ["SlotUnusableError", "True", "[(0,", "1)]", "False", "refused", "4"]


def test_a_slot_close_on_a_thread_capturing_a_cuda_graph_is_refused(tmp_path):
    out = run_on_fake_driver(tmp_path, """
        s = pool.create_slot(4 * PB, "s")
        s.map(0, 2)
        _C.cuda_capture_enter()
        try:
            s.close()
            print("closed")
        except InvalidArgumentError as e:
            print("refused", "capturing a CUDA graph" in str(e))
        finally:
            _C.cuda_capture_exit()
        print(s.mapped_ranges(), pool.free_pages)  # nothing was unmapped, the slot is open
        s.close()  # after the capture: as usual
        print(s.closed, pool.free_pages)
    """)
    assert out == ["refused", "True", "[(0,", "2)]", "2", "True", "4"]
