"""The cuda backend's mapping bookkeeping (csrc/cuda_backend.cpp: pages carved from large allocations, one
cuMemMap per run, runs cut and mapped again on a partial unmap) run on the host against csrc/testing/
fake_libcuda.c, a stand-in libcuda that enforces the driver rules the backend relies on (cuMemUnmap takes exactly
one mapped range; no range mapped twice; cuMemSetAccess only over mapped pages). The real driver runs the same
paths in tests/gpu/test_memory.py; this one runs where there is no GPU, in a subprocess (libcuda is dlopened
once per process)."""

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

SCENARIO = textwrap.dedent("""
    import ctypes
    from warmserve.errors import InvalidArgumentError
    from warmserve.memory import PagePool
    fake = ctypes.CDLL("libcuda.so.1")  # the same library the backend dlopens
    fake.fake_cuda_stat.restype = ctypes.c_long
    MAPS, MAP_CALLS, UNMAP_CALLS, ACCESS_CALLS, CREATE_CALLS = range(5)
    st = fake.fake_cuda_stat
    PB = 64 << 10

    pool = PagePool(32 * PB, backend="cuda", page_bytes=PB)
    assert st(CREATE_CALLS) == 1, st(CREATE_CALLS)  # 32 pages carved from one allocation
    assert pool.stats()["pages_per_allocation"] == 32
    s = pool.create_slot(16 * PB, "s")
    base = s.base_address
    m0, a0 = st(MAP_CALLS), st(ACCESS_CALLS)
    s.map(0, 8)
    assert (st(MAP_CALLS) - m0, st(ACCESS_CALLS) - a0, st(MAPS)) == (1, 1, 1)  # one run, one access call
    for i in range(8):
        ctypes.memset(base + i * PB, i + 1, PB)

    s.unmap(3, 2)  # cuts the run: it goes whole, [0,3) and [5,8) are mapped again with their contents
    assert s.mapped_ranges() == [(0, 3), (5, 3)], s.mapped_ranges()
    assert st(MAPS) == 2
    for i in (0, 1, 2, 5, 6, 7):
        assert ctypes.string_at(base + i * PB, PB) == bytes([i + 1]) * PB, i
    s.map(3, 2)
    assert st(MAPS) == 3 and s.physical_pages(0, 8) == list(range(8))

    t = pool.create_slot(16 * PB, "t")
    u0 = st(UNMAP_CALLS)
    s.move_pages(0, 8, t, 4)  # adjacent physical pages: one run at the destination; the 3 source runs go
    assert st(UNMAP_CALLS) - u0 == 3 and st(MAPS) == 1, (st(UNMAP_CALLS) - u0, st(MAPS))
    assert t.physical_pages(4, 8) == list(range(8)) and s.mapped_ranges() == []
    for i in (0, 1, 2, 5, 6, 7):
        assert ctypes.string_at(t.base_address + (4 + i) * PB, PB) == bytes([i + 1]) * PB, i

    t.shrink(1)  # the highest page: cuts the run again
    assert t.mapped_ranges() == [(4, 7)] and st(MAPS) == 1
    t.move_pages(6, 2, s, 0)  # the middle of a run moves: three runs remain (two at t, one at s)
    assert st(MAPS) == 3 and t.mapped_ranges() == [(4, 2), (8, 3)] and s.mapped_ranges() == [(0, 2)]
    assert ctypes.string_at(s.base_address, PB) == bytes([3]) * PB
    t.close(force=False)
    s.close(force=False)
    assert st(MAPS) == 0 and pool.free_pages == 32
    pool.close()

    # Pages from two allocations (1 GiB each at most): a run never crosses one; memfds are sparse, so the 2 GiB
    # costs nothing.
    big = PagePool(2 << 30, backend="cuda", page_bytes=PB)
    per_chunk = (1 << 30) // PB
    assert st(CREATE_CALLS) == 3
    w = big.create_slot(per_chunk * PB + 4 * PB, "w")
    m0 = st(MAP_CALLS)
    w.map(per_chunk - 2, 4)  # pool pages 0..3 come first: one run
    w.map(0, per_chunk - 2)
    w.map(per_chunk + 2, 2)  # pool pages per_chunk-2 .. per_chunk+1: split at the allocation boundary
    assert st(MAP_CALLS) - m0 == 4 and st(MAPS) == 4, (st(MAP_CALLS) - m0, st(MAPS))
    w.close(force=False)
    big.close()
    assert st(MAPS) == 0
    print("fake driver scenario OK")
""")


# A driver that maps no page from inside an allocation (a non-zero offset: CUDA_ERROR_NOT_SUPPORTED, as an H200
# with driver 580 answered): the pool finds out with one probe and makes one allocation per page.
NO_OFFSET_SCENARIO = textwrap.dedent("""
    import ctypes
    from warmserve.memory import PagePool
    fake = ctypes.CDLL("libcuda.so.1")
    fake.fake_cuda_stat.restype = ctypes.c_long
    MAPS, MAP_CALLS, UNMAP_CALLS, ACCESS_CALLS, CREATE_CALLS = range(5)
    st = fake.fake_cuda_stat
    PB = 64 << 10

    pool = PagePool(32 * PB, backend="cuda", page_bytes=PB)
    assert st(CREATE_CALLS) == 1 + 32 and pool.stats()["pages_per_allocation"] == 1, st(CREATE_CALLS)
    s = pool.create_slot(16 * PB, "s")
    base = s.base_address
    m0, a0 = st(MAP_CALLS), st(ACCESS_CALLS)
    s.map(0, 8)
    assert (st(MAP_CALLS) - m0, st(ACCESS_CALLS) - a0, st(MAPS)) == (8, 1, 8)  # a map per page, one access call
    for i in range(8):
        ctypes.memset(base + i * PB, i + 1, PB)
    u0 = st(UNMAP_CALLS)
    s.unmap(3, 2)
    assert st(UNMAP_CALLS) - u0 == 2 and s.mapped_ranges() == [(0, 3), (5, 3)] and st(MAPS) == 6
    t = pool.create_slot(16 * PB, "t")
    s.move_pages(5, 3, t, 0)
    for i in range(3):
        assert ctypes.string_at(t.base_address + i * PB, PB) == bytes([6 + i]) * PB, i
    t.close(force=False)
    s.close(force=False)
    assert st(MAPS) == 0 and pool.free_pages == 32
    pool.close()
    print("fake driver scenario OK")
""")


# Found in review (never seen on a GPU): a slot whose cut run could not be mapped again (a hole) freed its
# reservation in pieces around the hole, which cuMemAddressFree refuses (the size must match the reservation), so
# the range leaked; and unmapping pages beside a live pinned view in the same run unmapped the view's page too
# for a while (the run goes whole), under a running load's DMA or a tensor in use.
HOLE_AND_PIN_SCENARIO = textwrap.dedent("""
    import ctypes
    from warmserve.errors import ViewsAliveError
    from warmserve.memory import PagePool
    fake = ctypes.CDLL("libcuda.so.1")
    fake.fake_cuda_stat.restype = ctypes.c_long
    st = fake.fake_cuda_stat
    MAPS, MAP_CALLS, UNMAP_CALLS, RESERVATIONS, BAD_FREES = 0, 1, 2, 8, 9
    PB = 64 << 10

    pool = PagePool(32 * PB, backend="cuda", page_bytes=PB)
    r0 = st(RESERVATIONS)
    s = pool.create_slot(16 * PB, "s")
    assert st(RESERVATIONS) == r0 + 1
    s.map(0, 8)  # one run
    # a pinned view of page 6 (the DLPack capsule a tensor would wrap; torch cannot wrap cuda memory here)
    view = s._slot.dlpack(6 * PB, PB, True)
    try:
        s.unmap(3, 2)
        raise AssertionError("unmapping pages 3-4 cut the run under the pinned page 6")
    except ViewsAliveError as e:
        assert "page 6 shares one driver mapping" in str(e), e
    assert s.mapped_ranges() == [(0, 8)] and st(MAPS) == 1  # nothing moved
    try:
        s.shrink(1)  # page 7: its run holds page 6 too
        raise AssertionError("shrink cut the run under the pinned page 6")
    except ViewsAliveError:
        pass
    del view
    s.unmap(3, 2)  # no view left: the run is cut, [0,3) and [5,8) mapped again
    assert s.mapped_ranges() == [(0, 3), (5, 3)] and st(MAPS) == 2

    # closing the pool unmaps what no view pins, but not by cutting the mapping under page 6 of another slot: that
    # run stays whole until its view goes (found in a second review)
    o = pool.create_slot(16 * PB, "o")
    o.map(0, 8)
    v = o._slot.dlpack(6 * PB, PB, True)
    fake.fake_cuda_fail_maps(1)  # the next cut cannot map [0,2) again: a hole
    try:
        s.unmap(2, 1)
    except Exception:
        pass  # the slot is unusable now; only close is left
    s.close(force=True)
    del s  # the reservation goes with the last handle
    assert st(BAD_FREES) == 0, st(BAD_FREES)
    assert st(RESERVATIONS) == r0 + 1, (st(RESERVATIONS), r0)  # the reservation went whole, hole included
    m0, u0 = st(MAP_CALLS), st(UNMAP_CALLS)
    pool.close()
    assert (st(MAP_CALLS) - m0, st(UNMAP_CALLS) - u0) == (0, 0), (st(MAP_CALLS) - m0, st(UNMAP_CALLS) - u0)
    del v, o  # the view goes: the slot unmaps its run whole and frees its reservation
    assert st(MAPS) == 0 and st(RESERVATIONS) == r0 and st(BAD_FREES) == 0, (st(MAPS), st(RESERVATIONS))
    print("fake driver scenario OK")
""")


# Found in review: a pool drain (a context synchronize, before an unmap or a move) on one thread while another
# thread captures a CUDA graph invalidates that capture. The drain now waits for captures to end
# (_C.cuda_capture_enter / _exit, which engine/graphs.py brackets each capture with), and on the capturing thread
# itself it is refused (it would wait for itself).
CAPTURE_SCENARIO = textwrap.dedent("""
    import threading
    from warmserve import _C
    from warmserve.errors import InvalidArgumentError
    from warmserve.memory import PagePool
    PB = 64 << 10

    pool = PagePool(32 * PB, backend="cuda", page_bytes=PB)
    s = pool.create_slot(16 * PB, "s")
    s.map(0, 8)
    entered, release, done, errors = threading.Event(), threading.Event(), threading.Event(), []

    def capture():
        _C.cuda_capture_enter()
        entered.set()
        release.wait(10)
        _C.cuda_capture_exit()

    def unmap():
        try:
            s.unmap(0, 2)
            done.set()
        except BaseException as e:
            errors.append(e)

    c = threading.Thread(target=capture)
    c.start()
    assert entered.wait(10)
    u = threading.Thread(target=unmap)
    u.start()
    assert not done.wait(0.5), "the unmap did not wait for the capture on the other thread"
    assert s.mapped_ranges() == [(0, 8)]
    release.set()
    c.join()
    assert done.wait(10), errors
    u.join()
    assert not errors and s.mapped_ranges() == [(2, 6)], (errors, s.mapped_ranges())

    _C.cuda_capture_enter()  # on the capturing thread itself: refused before anything is unmapped
    try:
        s.unmap(2, 1)
        raise AssertionError("an unmap on the capturing thread went ahead")
    except InvalidArgumentError as e:
        assert "capturing a CUDA graph" in str(e), e
    finally:
        _C.cuda_capture_exit()
    assert s.mapped_ranges() == [(2, 6)]
    s.unmap(2, 1)  # after the capture: as usual
    s.close(force=False)
    pool.close()
    print("fake driver scenario OK")
""")


def run_on_fake_driver(tmp_path, scenario: str, **env_extra: str) -> None:
    lib = tmp_path / "libcuda.so.1"
    subprocess.run(["cc", "-std=c11", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", f"-I{CUDA_H}/include",
                    str(ROOT / "csrc/testing/fake_libcuda.c"), "-o", str(lib)], check=True)
    env = dict(os.environ, LD_LIBRARY_PATH=f"{tmp_path}:{os.environ.get('LD_LIBRARY_PATH', '')}", **env_extra)
    r = subprocess.run([sys.executable, "-c", scenario], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fake driver scenario OK" in r.stdout


def test_runs_on_fake_driver(tmp_path):
    run_on_fake_driver(tmp_path, SCENARIO)


def test_a_slot_with_a_hole_frees_its_whole_reservation_and_no_cut_unmaps_a_pinned_page(tmp_path):
    run_on_fake_driver(tmp_path, HOLE_AND_PIN_SCENARIO)


def test_a_drain_waits_for_a_graph_capture_on_another_thread_and_is_refused_on_its_own(tmp_path):
    run_on_fake_driver(tmp_path, CAPTURE_SCENARIO)


def test_one_allocation_per_page_where_the_driver_maps_no_offset(tmp_path):
    run_on_fake_driver(tmp_path, NO_OFFSET_SCENARIO, FAKE_CUDA_NO_OFFSET="1")
