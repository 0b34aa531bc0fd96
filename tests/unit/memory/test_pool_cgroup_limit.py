"""A host pool larger than its container's memory limit is refused with the limit, what is left under it and the fix
(csrc/cgroup_memory.h). Found in review: the pool's check read the machine's MemAvailable only, and under a cgroup
limit below it the pool's fallocate was answered by the group's OOM killer: the process died with SIGKILL and no
word. Each test runs a child interpreter in a memory cgroup of its own (tests/memory_cgroup.py: root and a writable
cgroup hierarchy, skipped elsewhere)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from memory_cgroup import memory_cgroup

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


def test_a_pool_past_the_cgroup_limit_is_refused_with_the_numbers_not_killed():
    with memory_cgroup(256 * MiB) as procs:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), procs, str(512 * MiB)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"child exited with {r.returncode} (-9: the cgroup's OOM killer)\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.splitlines()[-1])
    big = out["big"]
    assert big["raised"] == "OutOfMemoryError", big
    assert (big["limit"], big["limit_value"], big["total_bytes"]) == ("cgroup memory", 256 * MiB, 256 * MiB), big
    assert big["asked_bytes"] == 512 * MiB and 64 * MiB < big["free_bytes"] <= 256 * MiB, big
    for words in ("512.0 MiB", "256.0 MiB", "cgroup", "memory", "lower capacity_bytes"):
        assert words in big["message"], (words, big["message"])
    assert out["small"] == {"raised": None}, out  # a pool that fits the limit is made as before
