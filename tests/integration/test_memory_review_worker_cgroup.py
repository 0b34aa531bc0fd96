"""A local CPU worker answering prompts near its models' context inside a memory cgroup sized as the controller
plans it (controller/launch.py ``check_host_memory``: the controller's own usage, then the pool and
``WORKER_PROCESS_BYTES`` a worker) is not OOM-killed. Found in review (2026-12-07, ``cpu_workers = 1``, the default
1 GiB pool): with 256 MiB planned a worker, one llama-20m answering one 1,900-token prompt under a 1,370 MiB limit
(the controller's ~75 MiB, the pool, 256 MiB and ~15 MiB spare) was SIGKILLed twice and the request failed; six
co-served demo models with 1,900-3,900-token prompts peaked at 1,514 MiB of the group's RSS and shmem. Run in a
memory cgroup (tests/memory_cgroup.py), so a regression kills only the test's own processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from memory_cgroup import memory_cgroup
from warmserve.engine.demo import DEMO_MODELS, build_tokenizer, config_dict, write_checkpoint

CHILD = """
import os, sys
procs, path, words = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(procs, "w") as f:  # in first: the controller's imports are charged to the group, as under a real limit
    f.write(str(os.getpid()))
import json
import warmserve
from warmserve.controller.launch import WORKER_PROCESS_BYTES
group = os.path.dirname(procs)
v1 = os.path.exists(os.path.join(group, "memory.limit_in_bytes"))
with open(os.path.join(group, "memory.usage_in_bytes" if v1 else "memory.current")) as f:
    used = int(f.read())
pool_bytes = 1 << 30  # what cpu_worker_memory_bytes sizes for the demo models
with open(os.path.join(group, "memory.limit_in_bytes" if v1 else "memory.max"), "w") as f:
    # what check_host_memory plans for 1 worker, and 32 MiB the controller's state grows by before its check
    f.write(str(used + (32 << 20) + pool_bytes + WORKER_PROCESS_BYTES))
with warmserve.Cluster([path], cpu_workers=1, cpu_worker_memory_bytes=pool_bytes, start_timeout_s=60) as c:
    got = c.generate("llama-20m", "hello " * words, max_tokens=4, temperature=0).completion_tokens
with open(os.path.join(group, "memory.oom_control" if v1 else "memory.events")) as f:
    kills = int(dict(ln.split() for ln in f)["oom_kill"])
print(json.dumps({"got": got, "oom_kills": kills}))
"""


def test_a_worker_answering_a_prompt_near_its_context_fits_the_memory_the_controller_plans(tmp_path):
    # written out here: its page cache is not charged to the group, which a limit sized from usage would count
    path = write_checkpoint(str(tmp_path), "llama-20m", config_dict(DEMO_MODELS["llama-20m"]),
                            tokenizer=build_tokenizer())
    with memory_cgroup(8 << 30) as procs:  # the child lowers it to the planned size once its imports are charged
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), procs, path, "470"],
                           capture_output=True, text=True, timeout=240)
        time.sleep(0.2)  # the cluster's processes leave the group before its removal
    lost = [ln for ln in r.stderr.splitlines() if " lost" in ln][:3]
    assert r.returncode == 0, f"child exited with {r.returncode}\n{lost}\n{r.stderr[-2000:]}"
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["oom_kills"] == 0, (out, lost)  # "hello " * 470: 1,880 prompt tokens of the model's 2,048
    assert out["got"] == 4, out
