"""Odd arguments to PagePool and Slot, found in review: a load path with an embedded NUL loaded the file named by its
prefix (C++ opened path.c_str()); tensors() with an entry ending past 2**64 and PagePool(device=2**31) came back
as bare TypeErrors from pybind; a load started `threads` copier threads however few pieces it had (threads=10000
for a 10-byte load: 1 s of thread starts)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool

PAGE = 4096


@pytest.fixture
def slot():
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        s = pool.create_slot(8 * PAGE, "s")
        s.map(0, 2)
        yield s
        s.close(force=True)


@pytest.mark.parametrize("wrap", [str, pathlib.Path])
def test_a_load_path_with_a_nul_is_refused_naming_it(slot, tmp_path, wrap):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    path = str(f) + "\0zz"
    with pytest.raises(InvalidArgumentError, match="NUL") as info:
        slot.load([(str(f), 0, 0, 1), (wrap(path), 0, PAGE, 1)]).wait()  # before: loaded 1 byte of f
    assert repr(path) in str(info.value) and "source 1" in str(info.value)
    assert slot.load([(str(f), 0, 0, 3)]).wait() == 3  # the plain path still loads


def test_the_core_refuses_a_nul_path_from_any_caller(slot, tmp_path):
    # The host cache hands paths to the core through _start_load, past Slot.load's check: the C++ refuses too.
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    with pytest.raises(InvalidArgumentError, match="NUL byte at"):
        slot._start_load([(str(f) + "\0zz", 0, None, 0, 0, 1)], 1, 1 << 20).wait()  # before: loaded f's first byte


@pytest.mark.parametrize("layout", [
    {"a": (0, (4,), torch.uint8), "b": (2**64 - 1, (1,), torch.uint8)},
    {"a": (0, (1,), torch.uint8), "w": (2**64 - 8, (2,), torch.float64)},
])
def test_tensors_with_an_entry_ending_past_2_64_is_refused(slot, layout):
    with pytest.raises(InvalidArgumentError, match="outside slot 's'"):  # before: TypeError from dlpack()
        slot.tensors(layout)


@pytest.mark.parametrize("device", [2**31, 2**40])
def test_a_device_past_an_int_is_refused(device):
    with pytest.raises(InvalidArgumentError, match="device"):  # before: TypeError from _C.Pool.__init__
        PagePool(16 * PAGE, page_bytes=PAGE, device=device)


def test_a_load_starts_no_more_copier_threads_than_it_has_pieces():
    # Under an address-space limit with room for a dozen thread stacks (8 MiB each), not for 64: a load of 1 or 5
    # pieces asking for 64 threads needs 1 or 5 copiers. Before, it started 64 and failed with DriverError.
    # MALLOC_ARENA_MAX=1: no 64 MiB malloc arena per thread, so the stacks are what the limit counts.
    code = textwrap.dedent("""
        import resource
        import numpy, torch  # imported before the limit: their own start allocates (OpenBLAS buffers)
        from warmserve.errors import DriverError
        from warmserve.memory import PagePool
        PAGE = 4096
        pool = PagePool(16 * PAGE, page_bytes=PAGE, prefault=False)
        s = pool.create_slot(8 * PAGE, "s")
        s.map(0, 2)  # mapped before: the view below reads them whatever the loads did
        data = bytes(range(10)) * 410
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (160 << 20), resource.RLIM_INFINITY))
        for n, chunk in ((10, 1 << 10), (4100, 1 << 10)):  # 1 piece, then 5 pieces
            try:
                print(s.load([(data, 0, 0, n)], threads=64, chunk_bytes=chunk).wait())
            except DriverError as e:
                print("DriverError", "thread" in str(e))
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        view = s.tensor(0, (4100,), torch.uint8)
        print(bytes(view.tolist()) == data[:4100])
    """)
    env = dict(os.environ, MALLOC_ARENA_MAX="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["10", "4100", "True"], r.stdout
