"""A failed mremap on the host backend (found in review): the kernel unmaps a MREMAP_FIXED destination before
checks that can still fail (RLIMIT_AS here), so a failed move into the park or into a slot leaves that range
unmapped, and any later mmap of the process may land in it. The pool must map the range again (never over what
another mmap put there) or treat it as a hole for good: never move foreign memory into a slot, never unmap it.

Each scenario that puts a foreign mapping where the pool's memory was runs in a child interpreter: an unmap of
that mapping would crash the reading process, and RLIMIT_AS is process-wide."""

import ctypes
import subprocess
import sys
import textwrap

import pytest

from warmserve import _C
from warmserve.memory import PagePool

PAGE = 4096

PRELUDE = """
import ctypes, gc, mmap, re, resource
from warmserve import _C
from warmserve.errors import SlotUnusableError
from warmserve.memory import PagePool
PAGE = 4096
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
def pool_mappings():
    for line in open("/proc/self/maps"):
        if "warmserve-pool" in line:
            yield tuple(int(x, 16) for x in line.split()[0].split("-"))
def park_covers(addr):
    return any(lo <= addr < hi for lo, hi in pool_mappings())
def foreign_at(addr):  # what malloc, numpy or torch would get: an anonymous mapping, only where nothing is
    p = libc.mmap(addr, PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x100000,
                  -1, 0)  # MAP_FIXED_NOREPLACE
    if p != addr:
        return False
    ctypes.memset(addr, 0x77, PAGE)
    return True
def byte(addr):
    return hex(ctypes.string_at(addr, 1)[0])
pool = PagePool(PAGE, page_bytes=PAGE)  # one page: every map takes it
if not pool.stats()["moves_page_tables"]:
    print("no-mremap")
    raise SystemExit(0)
park = min(lo for lo, hi in pool_mappings())  # nothing else maps the memfd yet
"""


def run_child(body: str, timeout_s: float = 60) -> list[str]:
    """Runs PRELUDE + body in a fresh interpreter; returns its stdout lines (skips where mremap cannot move
    shared pages). Fails on a crash or a hang."""
    try:
        r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"child hung for {timeout_s} s; stdout so far: {e.stdout!r}")
    assert r.returncode == 0, (f"child exited with {r.returncode} (negative: killed by that signal)\n{r.stdout}\n"
                               f"{r.stderr[-3000:]}")
    out = r.stdout.split()
    if out == ["no-mremap"]:
        pytest.skip("this kernel cannot mremap shared pages (stats()['moves_page_tables'] is False)")
    return out


@pytest.fixture(autouse=True)
def _disarm_faults():
    yield
    for op in ("mmap", "mremap", "protect", "noreplace", "protect_hard"):
        _C._debug_fail_after(op, 0)


def test_an_unmap_under_an_address_space_limit_leaves_no_hole_foreign_memory_can_use():
    # The reviewer's reproduction: with RLIMIT_AS below the process's size, mremap(slot -> park) unmaps the park's
    # page, then fails. The park cannot be mapped again under that limit either: it must become a hole the pool
    # never uses again (a foreign mmap lands there), not the place the next map of that page moves into the slot.
    out = run_child("""
        s = pool.create_slot(PAGE, "s")
        s.map(0, 1)
        ctypes.memset(s.base_address, 0x5A, PAGE)
        size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (size - PAGE // 2, hard))  # no growth at all
        try:
            s.unmap(0, 1)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        hole = not park_covers(park)
        print("hole" if hole else "park", pool.stats()["moves_page_tables"])
        foreign = hole and foreign_at(park)
        s.map(0, 1)
        print(byte(s.base_address), byte(park) if foreign else "-")
        s.close()
        pool.close()
        gc.collect()
        print(byte(park) if foreign else "-")  # read after the pool is gone: SIGSEGV if it unmapped the hole
    """)
    if out[0] == "park":  # a kernel that checks the limit before it unmaps: the park stayed whole
        assert out == ["park", "True", "0x5a", "-", "-"]
    else:  # remaps end for good; pages map from the memfd, which holds the slot's bytes
        assert out == ["hole", "False", "0x5a", "0x77", "0x77"]


def test_a_failed_remap_into_the_park_maps_that_part_of_the_park_again():
    out = run_child("""
        s = pool.create_slot(PAGE, "s")
        s.map(0, 1)
        ctypes.memset(s.base_address, 0x5A, PAGE)
        _C._debug_fail_after("mremap", 1)  # unmaps its destination (the park's page), then fails
        s.unmap(0, 1)
        print(park_covers(park), pool.stats()["moves_page_tables"])  # the park is whole: remaps go on
        s.map(0, 1)
        print(byte(s.base_address))
    """)
    assert out == ["True", "True", "0x5a"]


def test_a_park_hole_another_mmap_takes_is_never_used_nor_unmapped():
    # The refill of the park fails as if another thread's mmap had taken the range first ("noreplace").
    out = run_child("""
        s = pool.create_slot(PAGE, "s")
        s.map(0, 1)
        ctypes.memset(s.base_address, 0x5A, PAGE)
        _C._debug_fail_after("mremap", 1)
        _C._debug_fail_after("noreplace", 1)
        s.unmap(0, 1)
        print(park_covers(park), pool.stats()["moves_page_tables"], foreign_at(park))
        s.map(0, 1)
        print(byte(s.base_address), byte(park))
        s.unmap(0, 1)
        s.map(0, 1)
        print(byte(s.base_address), byte(park))
        s.close()
        pool.close()
        gc.collect()
        print(byte(park))
    """)
    assert out == ["False", "False", "True", "0x5a", "0x77", "0x5a", "0x77", "0x77"]


@pytest.mark.parametrize("op", ["map", "move"])
def test_a_failed_remap_into_a_slot_falls_back_to_the_memfd(op):
    p = PagePool(2 * PAGE, page_bytes=PAGE)
    a, b = p.create_slot(2 * PAGE, "a"), p.create_slot(2 * PAGE, "b")
    a.map(0, 2)
    ctypes.memset(a.base_address, 0x11, PAGE)
    ctypes.memset(a.base_address + PAGE, 0x22, PAGE)
    a.unmap(1, 1)
    _C._debug_fail_after("mremap", 1)  # unmaps the slot range it moves into, then fails
    if op == "map":
        b.map(1, 1)
        assert ctypes.string_at(b.base_address + PAGE, 1) == b"\x22"
    else:
        a.move_pages(0, 1, b, 1)
        assert ctypes.string_at(b.base_address + PAGE, 1) == b"\x11" and a.mapped_pages == 0
    assert b.mapped_ranges() == [(1, 1)]
    b.unmap(1, 1)  # the slot is whole: every page of it maps again
    a.close()
    b.map(0, 2)
    p.close()


@pytest.mark.parametrize("op", ["map", "move"])
def test_a_slot_range_another_mmap_takes_after_a_failed_remap_is_a_hole(op):
    # The failed mremap unmapped the slot's range and another thread's mmap took it before the pool could fill it
    # again ("noreplace"): mapping the pages there (MAP_FIXED) would have replaced that mapping. The slot must
    # refuse further use instead, and its close must not unmap the range.
    out = run_child(f"""
        pool.close()
        pool = PagePool(2 * PAGE, page_bytes=PAGE)
        a, b = pool.create_slot(2 * PAGE, "a"), pool.create_slot(2 * PAGE, "b")
        a.map(0, 1)
        ctypes.memset(a.base_address, 0x11, PAGE)
        _C._debug_fail_after("mremap", 1)
        _C._debug_fail_after("noreplace", 1)
        try:
            if "{op}" == "map":
                b.map(1, 1)
            else:
                a.move_pages(0, 1, b, 1)
            print("no-error")
        except SlotUnusableError as e:
            print("unusable", e.hole_bytes == PAGE)
        hole = b.base_address + PAGE
        print(foreign_at(hole), a.mapped_pages, b.mapped_pages, pool.free_pages)
        b.close()
        del b
        gc.collect()
        print(byte(hole))  # the other mapping survived the slot's release
        c = pool.create_slot(2 * PAGE, "c")
        c.map(0, pool.free_pages)
        print(pool.free_pages)
    """)
    # a keeps its page (a failed move leaves the source as it was); the page b did not get is free
    assert out == ["unusable", "True", "True", "1", "0", "1", "0x77", "0"]
