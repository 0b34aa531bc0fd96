"""A Prewarm on a worker whose address-space limit (`ulimit -v`) leaves no room for the model's slot: the worker's
error says what the slot reserves and gives the fixes a server or worker user has. Found in review (`warmserve
serve` under `ulimit -v 3000000`): the instances failed with the memory core's fix "reserve less (reserve_bytes:
what the slot can use)", an argument of the Python memory API that neither `serve` nor `worker` has.

RLIMIT_AS is process-wide: the worker core runs in a child interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from driven_core import DrivenCore
from warmserve import protocol as P
import warmserve.engine.loader  # imported before the limit: the worker imports it at its first Prewarm
d = DrivenCore(64, worker_id="w-limited")
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
limit = vm + (32 << 20)  # less than the slot's weights + the 64 MiB pool's KV room
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
rid = d.send(P.Prewarm, path=sys.argv[2], name="m")
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
(err,) = [m for _, m in d.replies if getattr(m, "id", None) == rid]
d.prewarm(sys.argv[2], "m")  # the worker goes on: the same Prewarm with no limit loads
print(json.dumps({"limit": limit, "type": type(err).__name__, "err_type": err.type, "message": err.message,
                  "fields": err.fields, "models": sorted(d.core.models)}))
d.close()
"""


def test_a_prewarm_past_the_address_space_limit_names_the_reservation_and_the_users_fixes(tiny_models):
    env = dict(os.environ, MALLOC_ARENA_MAX="1")  # no new malloc arena (64 MiB of address space) under the limit
    r = subprocess.run([sys.executable, "-c", CHILD, os.path.dirname(__file__), tiny_models["tiny-llama"]],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, f"child exited with {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.splitlines()[-1])
    assert (out["type"], out["err_type"]) == ("Error", "OutOfMemoryError"), out
    f, msg = out["fields"], out["message"]
    assert (f["limit"], f["limit_value"], f["model"], f["worker"]) == ("RLIMIT_AS", out["limit"], "m", "w-limited"), f
    assert f["asked_bytes"] > 64 << 20, f  # the weights and the pool's size
    for words in ("'m'", "w-limited", "RLIMIT_AS", "64.0 MiB", "ulimit -v unlimited", "cpu_worker_memory_bytes",
                  "--memory-gib"):
        assert words in msg, (words, msg)
    assert "reserve_bytes" not in msg, msg  # before: the memory API's argument
    assert out["models"] == ["m"]
