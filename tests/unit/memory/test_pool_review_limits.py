"""Pools and slots refused by a process limit (ulimit) say which limit, its value and the fix. Found in review: under
RLIMIT_AS create_slot blamed the 128 TiB address space and told to close slots (none were open), and pool creation
under RLIMIT_AS, RLIMIT_FSIZE or RLIMIT_NOFILE raised a bare "ENOMEM" / "ftruncate: EFBIG" / "memfd_create: EMFILE".

Limits are process-wide: each test sets its own in a child interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PRELUDE = """
import json, os, resource, sys
import numpy, torch  # imported before a limit: their own start allocates
from warmserve import errors
from warmserve.memory import PagePool
MiB = 1 << 20
def vm_size():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
def outcome(f):
    try:
        f()
        return {"raised": None}
    except errors.WarmServeError as e:
        return {"raised": type(e).__name__, "message": str(e), **e.fields}
"""


def run_child(body: str) -> dict:
    env = dict(os.environ, MALLOC_ARENA_MAX="1")  # no new malloc arena (64 MiB of address space) under the limit
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, f"child exited with {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.splitlines()[-1])


def test_a_slot_past_rlimit_as_names_the_limit_the_virtual_size_and_the_fix():
    out = run_child("""
        pool = PagePool(2 * MiB, prefault=False)
        limit = vm_size() + 64 * MiB
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        big = outcome(lambda: pool.create_slot(1 << 30, "big"))
        small = outcome(lambda: pool.create_slot(2 * MiB, "small").map(0, 1))  # the pool works on
        print(json.dumps({"big": big, "small": small, "limit": limit}))
    """)
    big, limit = out["big"], out["limit"]
    assert big["raised"] == "OutOfMemoryError", big
    assert (big["limit"], big["limit_value"], big["total_bytes"]) == ("RLIMIT_AS", limit, limit), big
    assert big["asked_bytes"] == 1 << 30 and 0 < big["free_bytes"] <= 64 << 20, big
    msg = big["message"]
    for words in ("'big'", "RLIMIT_AS", "VmSize", "Fix", "ulimit -v", "reserve less"):
        assert words in msg, (words, msg)
    assert "128.0 TiB" not in msg and "close the slots" not in msg, msg  # before: blamed the address space
    assert out["small"] == {"raised": None}


def test_a_pool_past_rlimit_as_names_the_limit_and_a_smaller_pool():
    out = run_child("""
        limit = vm_size() + 32 * MiB
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        big = outcome(lambda: PagePool(64 * MiB, prefault=False))
        small = outcome(lambda: PagePool(8 * MiB, prefault=False).close())
        print(json.dumps({"big": big, "small": small, "limit": limit}))
    """)
    big, limit = out["big"], out["limit"]
    assert big["raised"] == "OutOfMemoryError", big  # before: DriverError "mapping the pool of 64.0 MiB: ENOMEM"
    assert (big["limit"], big["limit_value"], big["asked_bytes"]) == ("RLIMIT_AS", limit, 64 << 20), big
    for words in ("64.0 MiB", "RLIMIT_AS", "Fix", "ulimit -v", "smaller pool", "capacity_bytes"):
        assert words in big["message"], (words, big["message"])
    assert out["small"] == {"raised": None}


def test_a_pool_past_rlimit_fsize_names_the_limit_and_a_smaller_pool():
    out = run_child("""
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * MiB, resource.RLIM_INFINITY))
        small = outcome(lambda: PagePool(16 * MiB, prefault=False).close())
        big = outcome(lambda: PagePool(64 * MiB, prefault=False))
        print(json.dumps({"big": big, "small": small}))
    """)
    big = out["big"]
    assert big["raised"] == "OutOfMemoryError", big  # before: DriverError "ftruncate: EFBIG (File too large)"
    assert (big["limit"], big["limit_value"], big["asked_bytes"], big["total_bytes"]) == (
        "RLIMIT_FSIZE", 32 << 20, 64 << 20, 32 << 20), big
    for words in ("64.0 MiB", "RLIMIT_FSIZE", "32.0 MiB", "Fix", "ulimit -f", "smaller pool"):
        assert words in big["message"], (words, big["message"])
    assert out["small"] == {"raised": None}


def test_a_pool_with_no_file_descriptor_left_names_rlimit_nofile_and_the_fix():
    out = run_child("""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        full = outcome(lambda: PagePool(16 * MiB, prefault=False))
        for fd in fds:
            os.close(fd)
        again = outcome(lambda: PagePool(16 * MiB, prefault=False).close())
        print(json.dumps({"full": full, "again": again}))
    """)
    full = out["full"]
    # before: DriverError "memfd_create: EMFILE (Too many open files)", no limit, no fix
    assert (full["raised"], full["code"], full["name"]) == ("DriverError", 24, "EMFILE"), full
    assert (full["limit"], full["limit_value"]) == ("RLIMIT_NOFILE", 64), full
    for words in ("16.0 MiB", "RLIMIT_NOFILE", "64", "Fix", "ulimit -n"):
        assert words in full["message"], (words, full["message"])
    assert out["again"] == {"raised": None}
