"""Loads into a slot, found in review of the memory path: two overlapping loads both cancelled left the first one's
pages mapped for good (its rollback "kept" them for views that did not exist, the second mapped none of them);
counts past 2**64 and a file range that wraps it came back untyped; and load_bytes lost updates when loads started
on several threads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from warmserve.errors import CancelledError, InvalidArgumentError
from warmserve.memory import PagePool

PAGE = 4096


# Two loads over one range, both cancelled: neither leaves a page mapped.
def test_two_cancelled_loads_into_one_range_map_nothing():
    n_pages = 8192  # 32 MiB
    a = np.ones(n_pages * PAGE, dtype=np.uint8)
    b = np.full(n_pages * PAGE, 2, dtype=np.uint8)
    seen = None
    with PagePool(2 * n_pages * PAGE, page_bytes=PAGE, prefault=False) as pool:
        for _ in range(30):
            slot = pool.create_slot(n_pages * PAGE, "s")
            j1 = slot.load([(a, 0, 0, a.nbytes)], threads=1, chunk_bytes=1024)
            j2 = slot.load([(b, 0, 0, b.nbytes)], threads=1, chunk_bytes=1024)
            while j1.progress[0] == 0 or j2.progress[0] == 0:
                pass
            j1.cancel()
            j2.cancel()
            outcomes = []
            for j in (j1, j2):
                try:
                    j.wait()
                    outcomes.append("done")
                except CancelledError:
                    outcomes.append("cancelled")
            if outcomes == ["cancelled", "cancelled"]:
                seen = (slot.mapped_pages, j1.pages_mapped, j1.pages_kept, j2.pages_mapped, j2.pages_kept)
                if slot.mapped_pages:
                    break
            slot.close()
    assert seen is not None, "never caught both loads running"
    assert seen[0] == 0, f"mapped after both loads were cancelled, kept pages: {seen}"


# Counts past 2**64, and a file range that wraps it: InvalidArgumentError.
@pytest.fixture
def slot(tmp_path):
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        yield pool.create_slot(8 * PAGE, "s")


@pytest.mark.parametrize("call", ["map", "tensor", "load_src", "load_threads"])
def test_counts_past_uint64_are_invalid_argument(slot, tmp_path, call):
    f = tmp_path / "x"
    f.write_bytes(b"a" * 2 * PAGE)
    with pytest.raises(InvalidArgumentError):
        if call == "map":
            slot.map(2**64, 1)
        elif call == "tensor":
            slot.tensor(2**64, 1, torch.uint8)
        elif call == "load_src":
            slot.load([(str(f), 2**64, 0, 10)]).wait()
        else:
            slot.load([(str(f), 0, 0, 10)], threads=2**31).wait()


def test_file_range_that_wraps_uint64_is_invalid_argument(slot, tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"a" * 2 * PAGE)
    # loader.cpp:187 st_size < src_offset + nbytes wraps to 4096: the check passes, pread gets a negative offset
    with pytest.raises(InvalidArgumentError):
        slot.load([(str(f), 2**64 - PAGE, 0, 2 * PAGE)]).wait()


class _YieldingInt(int):
    """An int whose addition gives the GIL away: a `+=` of it is read, then other threads run, then written. CPython
    3.11 switches threads only at calls and backward jumps, so a plain int's `+=` is never split and the race it
    guards against would not show here (the first version of this test, 4 rounds at a 1 us switch interval, passed
    without the lock in 44 s)."""

    def __add__(self, other):
        time.sleep(0.001)
        return _YieldingInt(int(self) + other)


# load_bytes counts every load, from several threads at once: without a lock, the threads' `+=` lose updates.
def test_load_bytes_counts_every_load_started_from_several_threads():
    buf = np.zeros(PAGE, dtype=np.uint8)
    srcs = [(buf, 0, 0, 1)] * 4
    n_each, n_threads = 10, 3
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(8 * PAGE, "s")
        slot.map(0, 1)
        slot._load_bytes = _YieldingInt(0)
        errors: list[BaseException] = []

        def run():
            try:
                for _ in range(n_each):
                    slot.load(srcs, chunk_bytes=1024).wait()
            except BaseException as e:  # reaches the test's thread below
                errors.append(e)

        ts = [threading.Thread(target=run) for _ in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        assert type(slot._load_bytes) is _YieldingInt  # still the counter (not a name the slot no longer reads)
        assert slot.load_bytes == n_threads * n_each * len(srcs)
        slot.close()


# Found in a review of the fix above: a load whose driver thread could not start stood in pool.jobs while an
# overlapping cancelled load handed it pages, and never ran the rollback that undoes them.
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc for the LD_PRELOAD shim")
def test_pages_handed_to_a_load_whose_thread_never_started_are_rolled_back(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    so = str(tmp_path / "failthr.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so, os.path.join(here, "failthr.c"), "-ldl"], check=True)
    r = subprocess.run([sys.executable, os.path.join(here, "heir_window.py"), "8", so],
                       env=dict(os.environ, LD_PRELOAD=so), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1].startswith("CLEAN"), r.stdout
