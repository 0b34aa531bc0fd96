"""The controller's log says when the first tick's colocation stands, holding the scaling rules off, and when it
is given up. Found in review: a flooded model on a fresh demo server (three models, two CPU workers, no history)
kept its one instance with 168 requests queued for a whole 90 s flood, the other worker near idle, and no line said
why. Driven through the real policy and driver (the instant executor), with the demo's sizes as the controller
reads them."""

import logging

from warmserve.controller.layout_log import LayoutLog
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
#: (name, weights, KV bytes a token, context): llama-20m, qwen2-30m and llama-90m as the controller reads them.
DEMO = [("llama-20m", 75_523_584, 8192, 2048), ("qwen2-30m", 117_508_096, 16384, 4096),
        ("llama-90m", 352_398_336, 24576, 4096)]


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "warmserve.controller"]


def test_the_layout_is_said_once_when_laid_out_and_once_when_given_up(caplog):
    models = [ModelInfo(n, w, 1, kv, 0.01, 0.005, max_context_tokens=ctx) for n, w, kv, ctx in DEMO]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig())
    d = instant_driver(pol, st)
    said = LayoutLog()
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    for t in (0.0, 0.5, 1.0):
        d.tick(t)
        said.after_tick(pol, st.live_gpus())
    (line,) = _lines(caplog)
    assert "llama-20m, llama-90m, qwen2-30m on 2 GPU(s)" in line and "scaling rules stand aside" in line, line
    assert "--history" in line, line
    d.add_gpus(st.servers[0].server_id, [GiB])  # a GPU joins: the rules take over
    for t in (1.5, 2.0):
        d.tick(t)
        said.after_tick(pol, st.live_gpus())
    lines = _lines(caplog)
    assert len(lines) == 2 and "given up" in lines[1], lines


def test_a_policy_with_no_layout_says_nothing(caplog):
    models = [ModelInfo(n, w, 1, kv, 0.01, 0.005, max_context_tokens=ctx) for n, w, kv, ctx in DEMO]
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=GiB)  # one GPU each: nothing laid out
    pol = make_policy("warmserve", models=models, config=PolicyConfig())
    d = instant_driver(pol, st)
    said = LayoutLog()
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    d.tick(0.0)
    said.after_tick(pol, st.live_gpus())
    said.after_tick(make_policy("autoscale", models=models, config=PolicyConfig()), 4)
    assert _lines(caplog) == []
