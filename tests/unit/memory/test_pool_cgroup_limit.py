"""A host pool larger than its container's memory limit is refused with the limit, what is left under it and the fix
(csrc/cgroup_memory.h). Found in review: the pool's check read the machine's MemAvailable only, and under a cgroup
limit below it the pool's fallocate was answered by the group's OOM killer: the process died with SIGKILL and no
word. Each test runs a child interpreter in a memory cgroup of its own (v1, or v2 where the memory controller is
delegated to this process's group), which needs root and a writable cgroup hierarchy: skipped elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

MiB = 1 << 20

CHILD = """
import json, sys
from warmserve import errors
from warmserve.memory import PagePool
MiB = 1 << 20
with open(sys.argv[1], "w") as f:  # into the limited group once the imports are charged to this test's own
    f.write(str(__import__("os").getpid()))
def outcome(f):
    try:
        f().close()
        return {"raised": None}
    except errors.WarmServeError as e:
        return {"raised": type(e).__name__, "message": str(e), **e.fields}
big = outcome(lambda: PagePool(int(sys.argv[2]), prefault=False))
small = outcome(lambda: PagePool(64 * MiB, prefault=False))
print(json.dumps({"big": big, "small": small}))
"""


def _mounts() -> dict[str, str]:
    """fstype or memory -> mount point of the cgroup hierarchies whose mount root is /."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, (fstype, _, opts) = pre.split(), post.split()[:3]
            if fields[3] != "/":
                continue
            if fstype == "cgroup2":
                out["cgroup2"] = fields[4]
            elif fstype == "cgroup" and "memory" in opts.split(","):
                out["memory"] = fields[4]
    return out


@pytest.fixture
def limited_group(tmp_path):
    """(the cgroup.procs file of a new memory cgroup under this process's, a function setting its limit)."""
    if os.geteuid() != 0:
        pytest.skip("making a memory cgroup needs root")
    mounts = _mounts()
    with open("/proc/self/cgroup") as f:
        lines = [ln.rstrip("\n").split(":", 2) for ln in f]
    v1 = next((p for _, c, p in lines if "memory" in c.split(",")), None)
    v2 = next((p for i, c, p in lines if i == "0" and not c), None)
    name = f"warmserve-test-{uuid.uuid4().hex[:8]}"
    if v1 is not None and "memory" in mounts:
        group, limit_file = os.path.join(mounts["memory"] + v1, name), "memory.limit_in_bytes"
    elif v2 is not None and "cgroup2" in mounts:
        parent = mounts["cgroup2"] + v2.rstrip("/")
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                delegated = "memory" in f.read().split()
        except OSError:
            delegated = False
        if not delegated:
            pytest.skip("cgroup v2 without the memory controller delegated to this process's group")
        group, limit_file = os.path.join(parent, name), "memory.max"
    else:
        pytest.skip("no memory cgroup hierarchy mounted")
    try:
        os.mkdir(group)
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here: {e}")

    def set_limit(nbytes: int) -> None:
        with open(os.path.join(group, limit_file), "w") as f:
            f.write(str(nbytes))

    try:
        yield os.path.join(group, "cgroup.procs"), set_limit
    finally:
        os.rmdir(group)  # its one process has exited


def test_a_pool_past_the_cgroup_limit_is_refused_with_the_numbers_not_killed(limited_group):
    procs, set_limit = limited_group
    set_limit(256 * MiB)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), procs, str(512 * MiB)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"child exited with {r.returncode} (-9: the cgroup's OOM killer)\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.splitlines()[-1])
    big = out["big"]
    assert big["raised"] == "OutOfMemoryError", big
    assert (big["limit"], big["limit_value"], big["total_bytes"]) == ("cgroup memory", 256 * MiB, 256 * MiB), big
    assert big["asked_bytes"] == 512 * MiB and 64 * MiB < big["free_bytes"] <= 256 * MiB, big
    for words in ("512.0 MiB", "256.0 MiB", "cgroup", "memory", "lower capacity_bytes"):
        assert words in big["message"], (words, big["message"])
    assert out["small"] == {"raised": None}, out  # a pool that fits the limit is made as before
