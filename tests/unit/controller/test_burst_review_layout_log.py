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


def _flood(model: str, ticks: int, caplog, after_tick=None) -> list[str]:
    """Flood ``model`` with 200 clients from the second tick, ticking 0.5 s apart, each instance ending two requests
    a tick (``after_tick(policy, state, driver, t)`` after each tick); returns the log lines."""
    models = [ModelInfo(n, w, 1, kv, 0.01, 0.005, max_context_tokens=ctx) for n, w, kv, ctx in DEMO]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=GiB)
    pol = make_policy("warmserve", models=models, config=PolicyConfig())
    d = instant_driver(pol, st)
    said, rid = LayoutLog(), 0
    caplog.set_level(logging.INFO, logger="warmserve.controller")
    for k in range(ticks):
        t = k * 0.5
        held = sum(i.in_flight for i in st.instances.values() if i.model == model) + st.queued(model)
        for _ in range(200 - held if k else 0):
            rid += 1
            d.submit(model, (model, rid), t, prompt_tokens=64)
        d.tick(t)
        if after_tick is not None:
            after_tick(pol, st, d, t)
        said.after_tick(pol, st.live_gpus())
        for iid, reqs in list(d.executor.running.items()):
            inst = st.instances.get(iid)
            for r in reqs[:2] if inst is not None and inst.ready else ():
                reqs.remove(r)
                d.prefill_done(r, t)
                d.request_finished(inst.model, iid, t)
    return _lines(caplog)


def test_a_busy_model_that_takes_no_slot_is_said_once_with_why(caplog):
    # Found in the burst review: flooded llama-90m sat at TTFT p50 40 s beside an idle worker, unsaid; the only
    # spare slot, qwen2-30m's, holds too few bytes for its weights and one request at its 4,096-token context
    lines = _flood("llama-90m", 240, caplog)
    unmet = [line for line in lines if "takes no slot" in line]
    assert len(unmet) == 1, lines
    assert unmet[0].startswith("policy: llama-90m, busy,") and "of qwen2-30m hold too few bytes" in unmet[0], unmet
    assert not any("takes the idle spare slot" in line for line in lines), lines


def test_a_busy_model_that_takes_a_slot_says_no_shortfall(caplog):
    lines = _flood("llama-20m", 240, caplog)
    assert sum("llama-20m, busy, takes the idle spare slot of qwen2-30m" in line for line in lines) == 1, lines
    assert not any("takes no slot" in line for line in lines), lines


def test_a_move_whose_instance_fails_is_said_once_with_the_spare_back(caplog):
    from warmserve.errors import WarmServeError

    def fail_the_move(pol, st, d, t):
        if pol.layout_moves == 1 and not pol.layout_undone:
            busy, _, gpus = pol.last_layout_move
            new = next((i for i in st.instances.values() if i.model == busy and i.gpus == gpus), None)
            if new is not None:
                d.instance_failed(new.instance_id, t, WarmServeError("out of memory while starting"))

    lines = _flood("llama-20m", 240, caplog, after_tick=fail_the_move)
    undone = [line for line in lines if "was lost" in line]
    assert len(undone) == 1, lines
    assert undone[0].startswith("policy: llama-20m's instance in the slot it took from qwen2-30m on GPU(s) 1"), undone
    assert "qwen2-30m is back in its slot" in undone[0] and "not made again" in undone[0], undone
    assert sum("takes the idle spare slot" in line for line in lines) == 1, lines
