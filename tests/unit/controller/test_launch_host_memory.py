"""Local CPU workers whose pools together pass the host memory there is are refused before any is spawned
(controller/launch.py ``check_host_memory``). Found in review: each worker's pool is checked alone as it is made, and
workers started together each saw room for their own: 3 workers of 9 GiB on this 24 GiB VM ended with one
SIGKILLed by the OOM killer before it registered ("exited with status -9"), nothing said why. Run in a memory
cgroup of 1 GiB (tests/memory_cgroup.py), so that a regression's overcommit kills only the test's own processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from memory_cgroup import memory_cgroup

MiB = 1 << 20

CHILD = """
import json, os, sys, time
import warmserve
from warmserve import errors
from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
path = write_checkpoint(sys.argv[2], "tiny", config_dict(DemoSpec("llama", 64, 128, 1, 4, 2, vocab_size=256)),
                        tokenizer=build_tokenizer(256))
with open(sys.argv[1], "w") as f:  # into the limited group once the imports are charged to this test's own
    f.write(str(os.getpid()))
t0 = time.monotonic()
try:
    warmserve.Cluster([path], cpu_workers=2, cpu_worker_memory_bytes=768 << 20, start_timeout_s=60).close()
    out = {"raised": None}
except errors.WarmServeError as e:
    out = {"raised": type(e).__name__, "message": str(e), **e.fields}
out["s"] = time.monotonic() - t0
print(json.dumps(out))
"""


@pytest.mark.parametrize("limit_mib", [
    1024,  # the pools alone pass it
    1800,  # the pools fit, with too little left for the processes (found in review: killed at start, no word why)
])
def test_cpu_workers_whose_pools_pass_the_host_memory_are_refused_before_any_is_spawned(tmp_path, limit_mib):
    with memory_cgroup(limit_mib * MiB) as procs:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), procs, str(tmp_path)],
                           capture_output=True, text=True, timeout=180)
        time.sleep(0.2)  # a regression's workers (killed with their cluster) leave the group before its removal
    assert r.returncode == 0, f"child exited with {r.returncode}\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["raised"] == "OutOfMemoryError", out
    assert (out["workers"], out["pool_bytes"], out["asked_bytes"]) == (2, 768 * MiB, 2560 * MiB), out
    assert 0 <= out["free_bytes"] <= limit_mib * MiB and out["process_bytes"] == 512 * MiB, out
    for words in ("2 local CPU workers", "768.0 MiB", "2.5 GiB", "512.0 MiB for its process", "cgroup",
                  "lower cpu_workers"):
        assert words in out["message"], (words, out["message"])
    assert out["s"] < 10, out  # refused at once: no worker was started and waited for
