"""A host cache entry that host memory cannot take is not filled: the load reads the file, with one warning naming
the numbers and the fix (found in review: a tmpfs fallocate checks no memory, and under a memory cgroup limit the
group's OOM killer answered a fill with SIGKILL; under `warmserve serve` the workers restarted into the same fills,
7 kills in 45 s). A child interpreter in a memory cgroup of its own (tests/memory_cgroup.py: root and a writable
cgroup hierarchy, skipped elsewhere), its cache on a tmpfs (/dev/shm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from memory_cgroup import memory_cgroup
from warmserve.memory.cache_files import FILL_HEADROOM_BYTES, memory_backed

MiB = 1 << 20
BIG = 640 * MiB
SMALL = 8 * MiB
#: The pool holds either file; beyond it the group leaves the headroom and 96 MiB: room for SMALL's entry (and the
#: child's own growth), not for BIG's.
POOL = BIG + SMALL
LIMIT = POOL + FILL_HEADROOM_BYTES + 96 * MiB

CHILD = """
import hashlib, json, logging, os, sys, torch
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache
procs, root, big, small, pool_bytes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
said = []
class Keep(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger("warmserve").addHandler(Keep())
with open(procs, "w") as f:  # into the limited group once the imports are charged to this test's own
    f.write(str(os.getpid()))
out = {}
with PagePool(pool_bytes, page_bytes=2 << 20, prefault=False) as pool, \\
        HostCheckpointCache(HostCacheConfig(root=root, capacity_bytes=4 << 30, chunk_bytes=1 << 20)) as cache:
    for name, path in (("big", big), ("small", small)):
        n = os.path.getsize(path)
        slot = pool.create_slot(n, name)
        cache.load(slot, [(path, 0, 0, n)]).wait()
        got = hashlib.sha256(memoryview(slot.tensor(0, (n,), torch.uint8).numpy())).hexdigest()  # no copy
        out[name] = {"digest": got, "cached": cache.contains(path)}
    out["stats"] = cache.stats()
print(json.dumps({**out, "said": said}))
"""


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_entry_past_the_memory_limit_is_read_from_the_file_not_killed(tmp_path):
    if not os.path.isdir("/dev/shm") or not memory_backed("/dev/shm"):
        pytest.skip("needs /dev/shm on a tmpfs")
    big, small = tmp_path / "big.safetensors", tmp_path / "small.safetensors"
    rng = np.random.default_rng(0)
    for path, n in ((big, BIG), (small, SMALL)):
        # raw 64-bit draws as bytes: as random per byte as integers(0, 256), and 2-3x quicker for BIG's 640 MiB
        path.write_bytes(rng.bit_generator.random_raw(n // 8).tobytes())
    root = f"/dev/shm/warmserve-test-cache-{uuid.uuid4().hex[:8]}"
    try:
        with memory_cgroup(LIMIT) as procs:
            r = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), procs, root, str(big), str(small),
                                str(POOL)], capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert r.returncode == 0, f"child exited with {r.returncode} (-9: the cgroup's OOM killer)\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["big"] == {"digest": _digest(big), "cached": False}, out
    assert out["small"] == {"digest": _digest(small), "cached": True}, out
    assert out["stats"]["bypassed"] == 1 and out["stats"]["fills"] == 1, out["stats"]
    (warning,) = [s for s in out["said"] if "host memory left" in s]
    for words in ("640.0 MiB", "under the memory cgroup limit", "512.0 MiB kept", "--host-cache-gib"):
        assert words in warning, (words, warning)
