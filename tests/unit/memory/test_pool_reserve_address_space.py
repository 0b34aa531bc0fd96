"""Reservations past the virtual address space: create_slot(2**47) (all of it, which the host backend's 2 MiB alignment
can never fit) is refused as too large, and a reservation the address space left cannot hold (a second 64 TiB slot
beside a first) is an OutOfMemoryError saying the address space is used up, with the bytes asked and the fix;
closing and dropping the first slot lets it through. Found in review: both were a DriverError "ENOMEM" with no fix.
Each test runs in a fresh interpreter: 64 TiB fits only an address space that other tests' mappings have not cut up."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
from warmserve.errors import DriverError, InvalidArgumentError, OutOfMemoryError
from warmserve.memory import PagePool
TiB = 1 << 40
BIG_PAGE = 64 << 20  # a 64 TiB slot's page table is 12 MiB, not the 384 MiB of 2 MiB pages
pool = PagePool(BIG_PAGE, page_bytes=BIG_PAGE, prefault=False)
"""


def run_child(body: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"child exited with {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    return r.stdout.splitlines()


def test_a_slot_as_large_as_the_whole_address_space_is_refused_as_too_large():
    out = run_child("""
        for size in (2**47, 2**47 - BIG_PAGE // 2):  # the second rounds up to whole pages: 2**47 again
            try:
                pool.create_slot(size, "all")
            except Exception as e:
                print(type(e).__name__, "address space" in str(e))
        try:  # at the cap: never a DriverError (the process's own mappings take some of the 128 TiB)
            pool.create_slot(2**47 - BIG_PAGE, "cap").close()
            print("created")
        except OutOfMemoryError as e:
            print(e.asked_bytes == 2**47 - BIG_PAGE)
    """)
    assert out[:2] == ["InvalidArgumentError True"] * 2
    assert out[2] in ("True", "created")


def test_a_reservation_the_address_space_left_cannot_hold_is_out_of_memory_with_the_fix():
    out = run_child("""
        first = pool.create_slot(64 * TiB, "first")
        try:
            pool.create_slot(64 * TiB, "second")
            print("created")
        except Exception as e:
            print(type(e).__name__, isinstance(e, DriverError))
            print(e.asked_bytes == 64 * TiB, e.total_bytes == 2**47)
            print(str(e))
        s = pool.create_slot(BIG_PAGE, "small")  # the pool works on
        s.map(0, 1)
        s.close()
        first.close()
        del first  # the fix the message names: its addresses go with its last reference
        pool.create_slot(64 * TiB, "second").close()
        print("second created")
    """)
    assert out[:2] == ["OutOfMemoryError False", "True True"], out
    msg = out[2]
    for words in ("virtual address space", "'second'", "64.0 TiB", "1 other slot", "Fix", "reserve less",
                  "close the slots no longer needed and drop them"):
        assert words in msg, (words, msg)
    assert out[3:] == ["second created"]
