"""A long prompt to an instance whose worker's free pages are held by another model's prewarm: the engine stalls
for room, reports the blocks its step wants (``KvStats.kv_blocks_wanted``), and the policy evicts the prewarm for
them. Found in review: the KV target (total x in_flight / B, 2 blocks for one request) never reached the 8 blocks
a 2,000-token prompt wanted, nothing evicted the prewarm, and the request (and every one queued behind it) waited
out request_timeout_s to fail with "produced no token".

Two CPU workers of 99 pages of 2 MiB; llama-20m (37 pages) serves, qwen2-30m (57 pages) is forecast bursty from a
history and prewarmed twice, one copy beside llama-20m once the plan shrinks llama-20m's idle KV for it (PAPER
§6); replan_s lowered to 1 s so that this happens within a second or two (on the tree before the fix, the long
prompt still waits out request_timeout_s at 1 s)."""

import json
import time

import pytest
import serving

import warmserve
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.policy.config import PolicyConfig

SERVED, BURSTY = "llama-20m", "qwen2-30m"
WINDOW_S = 300.0
TIMEOUT_S = 60.0


def _history(path) -> str:
    first = (int(time.time() // WINDOW_S) - 2 * 288) * WINDOW_S
    starts = [first + i * WINDOW_S for i in range(2 * 288)]
    rows = {SERVED: 2.0, BURSTY: 64.0}  # peaks: qwen2-30m bursts, llama-20m stays light
    json.dump({m: {"window_start_s": starts, "avg": [1.0] * len(starts), "peak": [p] * len(starts)}
               for m, p in rows.items()}, open(path, "w"))
    return str(path)


def _prewarm_beside(c) -> bool:
    s = c.stats()
    served_on = {i["worker"] for i in s["instances"] if i["model"] == SERVED}
    return any(p["model"] == BURSTY and p["worker"] in served_on and p["progress"] == 1.0 for p in s["prewarms"])


def test_a_long_prompt_gets_the_pages_a_prewarm_beside_it_held(tmp_path):
    paths = serving.demo_paths((SERVED, BURSTY))
    cfg = ClusterConfig(
        models=(ModelSpec(path=paths[SERVED]), ModelSpec(path=paths[BURSTY])), cpu_workers=2,
        cpu_worker_memory_bytes=99 * (2 << 20), cpu_worker_threads=1,
        controller=ControllerConfig(policy_config=PolicyConfig(window_s=WINDOW_S, replan_s=1.0),
                                    request_timeout_s=TIMEOUT_S, history_path=_history(tmp_path / "h.json")))
    with warmserve.Cluster(None, config=cfg) as c:
        assert c.generate(SERVED, [5, 6, 7], max_tokens=4, temperature=0).completion_tokens == 4
        deadline = time.monotonic() + 60
        while not _prewarm_beside(c) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not _prewarm_beside(c):
            pytest.fail(f"no {BURSTY} prewarm came beside {SERVED} within 60 s: {c.stats()}")
        t0 = time.monotonic()
        # ignore_eos: a sampled EOS ended it at 38 tokens in a local CI run (2026-12-04), which is no stall
        out = c.generate(SERVED, [10 + i % 500 for i in range(2000)], timeout_s=TIMEOUT_S + 30,
                         params=warmserve.SamplingParams(max_tokens=40, ignore_eos=True))
        took_s = time.monotonic() - t0
        assert out.completion_tokens == 40 and out.finish_reason == "length"
        assert took_s < TIMEOUT_S / 2, f"{took_s:.1f} s: it waited for room"
        assert c.generate(SERVED, [8, 9], max_tokens=4, temperature=0).completion_tokens == 4
