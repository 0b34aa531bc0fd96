"""The replay benchmark's pieces: the open-loop client against a real local HTTP server, the statistics, the
workload scaling, the history handed to the controller and the sim-vs-live comparison."""

import asyncio
import json
import math

import numpy as np
import pytest

from replay_harness import replay_args
from stub_server import serve_in_thread
from warmserve.bench import replay as R
from warmserve.workload.replay_client import ClientConfig, Outcome, ReplayRequest, replay


# --------------------------------------------------------------------------------------------- client

_RELEASE: list = []


async def _handler(request):
    """Streams like an OpenAI server: model 'slow' never answers, 'bad' gets a 400, 'err' an error event."""
    from aiohttp import web

    body = await request.json()
    if body["model"] == "bad":
        return web.json_response({"error": {"message": "no such model"}}, status=400)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    if body["model"] == "slow":
        try:
            await asyncio.wait_for(_RELEASE[0].wait(), 30)
        except asyncio.TimeoutError:
            pass
    if body["model"] == "err":
        await resp.write(b'data: {"error": {"message": "worker lost"}}\n\n')
        return resp
    assert body["stream"] and isinstance(body["prompt"], list)
    await asyncio.sleep(0.05)
    for i in range(body["max_tokens"]):
        msg = {"choices": [{"index": 0, "text": f"t{i}", "finish_reason": None}]}
        await resp.write(f"data: {json.dumps(msg)}\n\n".encode())
        await asyncio.sleep(0.01)
    await resp.write(b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}\n\n')
    usage = {"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}}
    await resp.write(f"data: {json.dumps(usage)}\n\n".encode() + b"data: [DONE]\n\n")
    return resp


def test_client_open_loop_and_every_outcome():
    _RELEASE[:] = [asyncio.Event()]
    reqs = [ReplayRequest(0.0, "m", [5, 6, 7], 4), ReplayRequest(0.2, "m", [5], 1),
            ReplayRequest(0.1, "slow", [5], 2), ReplayRequest(0.1, "bad", [5], 2),
            ReplayRequest(0.1, "err", [5], 2)]
    reqs.sort(key=lambda r: r.arrival_s)
    seen = []
    with serve_in_thread([("POST", "/v1/completions", _handler)]) as srv:
        try:
            outs = asyncio.run(replay(ClientConfig(srv.url, drain_s=0.6), reqs, progress=seen.append))
        finally:
            srv.loop.call_soon_threadsafe(_RELEASE[0].set)
    by = {(o.model, o.max_tokens): o for o in outs}
    ok = by[("m", 4)]
    assert ok.status == "ok" and ok.completion_tokens == 4
    assert ok.sent_s >= 0 and ok.ttft_s >= 0.04 and ok.end_s > ok.first_s
    assert 0.005 < ok.tpot_s < 0.2
    assert by[("m", 1)].sent_s >= 0.19  # sent at its arrival time, not before
    assert by[("slow", 2)].status == "unanswered" and math.isnan(by[("slow", 2)].first_s)
    assert by[("bad", 2)].status == "http_error" and "400" in by[("bad", 2)].error
    assert by[("err", 2)].status == "stream_error" and "worker lost" in by[("err", 2)].error
    assert len(seen) == len(reqs)


def test_client_connection_refused_is_an_error():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    outs = asyncio.run(replay(ClientConfig(f"http://127.0.0.1:{port}", drain_s=2), [ReplayRequest(0, "m", [1], 1)]))
    assert outs[0].status == "error"


# --------------------------------------------------------------------------------------------- statistics

def _o(i, model, status, first=None, end=None, tokens=0):
    o = Outcome(i, model, 1.0, 10, 8, status=status, sent_s=1.0, completion_tokens=tokens)
    if first is not None:
        o.first_s = first
    if end is not None:
        o.end_s = end
    return o


def test_summarize_accounts_for_every_request():
    outs = [_o(0, "a", "ok", 1.5, 2.2, 8), _o(1, "a", "ok", 1.1, 1.1, 1), _o(2, "b", "unanswered"),
            _o(3, "b", "http_error", end=1.2)]
    s, per_model, ttft = R.summarize(outs, 10.0, {"prewarm_hits": 3.0, "prewarm_misses": 1.0}, deadline_s=12.0)
    assert s["requests"] == 4 and s["answered"] == 2 and s["completed"] == 2 and s["dropped"] == 2
    assert s["outcomes"] == {"ok": 2, "http_error": 1, "stream_error": 0, "error": 0, "unanswered": 1}
    assert s["accounted"]
    assert s["prewarm_hit_rate"] == 0.75 and s["instance_starts"] == 4
    # no first token: waited for from the arrival (1.0) until the client's deadline
    assert sorted(ttft.tolist()) == pytest.approx([0.1, 0.5, 11.0, 11.0])
    assert s["tpot_p50_s"] == pytest.approx(0.1)
    assert per_model["a"]["requests"] == 2 and per_model["b"]["answered"] == 0
    for k in ("ttft_p50_s", "ttft_p99_s", "requests", "answered"):
        assert k in s


def test_parse_prewarm_metrics():
    text = ('# HELP warmserve_prewarm_hits x\n# TYPE warmserve_prewarm_hits counter\n'
            'warmserve_prewarm_hits{model="a"} 2\nwarmserve_prewarm_hits{model="b"} 1\n'
            'warmserve_prewarm_misses{model="a"} 4\nwarmserve_prewarmed_replicas{model="a"} 7\n'
            'warmserve_migrated_requests_total{model="a"} 5\n'
            'warmserve_prewarm_loading_starts_total{model="b"} 6\n')
    assert R.parse_prewarm_metrics(text) == {"prewarm_hits": 3.0, "prewarm_misses": 4.0, "prewarm_loading_starts": 6.0,
                                             "migrated_requests": 5.0}


def test_validation_flags_outside_25_percent():
    live = {"p": {"ttft_p50_s": 1.0, "ttft_p99_s": 2.0}, "q": {"ttft_p50_s": 1.0, "ttft_p99_s": 1.0}}
    sim = {"p": {"ttft_p50_s": 1.2, "ttft_p99_s": 1.6}, "q": {"ttft_p50_s": 1.0, "ttft_p99_s": 2.0}}
    v = R.validation(live, sim)
    assert v["p"]["within_25pct"] and not v["q"]["within_25pct"]
    assert v["q"]["sim_over_live_p99"] == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------- workload

def test_workload_is_scaled_named_and_capped():
    a = replay_args("--duration-s", "600", "--time-scale", "0.2", "--rate", "2", "--max-output-tokens", "8",
              "--max-prompt-tokens", "64")
    w, served = R.build_workload(a)
    w2, _ = R.build_workload(a)
    assert np.array_equal(w.trace.arrival_s, w2.trace.arrival_s)  # seeded
    assert w.duration_s == pytest.approx(120.0)
    assert len({n for n, _ in served}) == 6 and {c for _, c in served} == set(R.CHECKPOINTS)
    assert sorted(w.models) == sorted(n for n, _ in served)
    assert w.trace.output_tokens.max() <= 8 and w.trace.prompt_tokens.max() <= 64
    assert w.history.output_tokens.max() <= 8
    assert (w.trace.arrival_s >= 0).all() and (w.history.arrival_s < 0).all()
    # the busiest models get the cheapest checkpoint
    counts = {w.models[i]: int(c) for i, c in enumerate(np.bincount(w.trace.model, minlength=6))}
    ckpt = dict(served)
    assert (max(counts, key=counts.get).startswith(R.CHECKPOINTS[0])
            and ckpt[max(counts, key=counts.get)] == R.CHECKPOINTS[0])
    reqs = R.replay_requests(w, 8192, 0)
    assert len(reqs) == len(w.trace) and all(len(r.prompt) == p for r, p in zip(reqs, w.trace.prompt_tokens))
    assert all(3 <= t < 8192 for r in reqs[:20] for t in r.prompt)


def test_history_rows_land_before_the_replay_on_whole_days():
    from warmserve.sim.config import ServedModel
    from warmserve.sim.costmodel import CostModel

    a = replay_args("--duration-s", "1200", "--time-scale", "0.15", "--rate", "0.6")
    w, served = R.build_workload(a)
    cost = CostModel.from_profile(_profile())
    rows = R.history_rows(w, [ServedModel(n, c) for n, c in served], cost, 45.0, 1_000_000.0)
    assert rows and {r[0] for r in rows} <= set(w.models)
    starts = np.array([r[1] for r in rows])
    assert (starts < 1_000_000.0).all()
    # the earlier days' segments sit one and two days before the replay
    assert (starts < 1_000_000.0 - 86400 + 200).any() and (starts > 1_000_000.0 - 2 * 86400 - 400).all()
    assert all(r[2] >= 0 and r[3] >= r[2] - 1e-9 for r in rows)


def _profile():
    from warmserve.bench.calibrate import build_profile

    m = lambda wb: {"weight_bytes": wb, "tp": 1, "kv_bytes_per_token": 65536,
                    "prefill_table": [[16, 0.02], [256, 0.2]], "decode_table": [[1, 0.01], [8, 0.02]],
                    "measured": {"load_s": wb / 2e9 + 0.01, "activation_s": 0.001,
                                 "cold_start_first_token_s": 0.1, "prewarmed_first_token_s": 0.03}}
    return build_profile({"llama-20m": m(75e6), "qwen2-30m": m(117e6), "llama-90m": m(352e6)}, 1 << 30, 1)


def test_endpoint_mode_end_to_end(tmp_path):
    """`bench replay --endpoint` against a server on a real socket: JSON in the simulator's per-policy shape."""
    _RELEASE[:] = [asyncio.Event()]
    out = tmp_path / "r.json"
    with serve_in_thread([("POST", "/v1/completions", _handler)]) as srv:
        try:
            a = replay_args("--endpoint", srv.url, "--policy", "other-server", "--served-names", "m", "--duration-s",
                            "200", "--time-scale", "0.02", "--rate", "3", "--max-output-tokens", "3", "--drain-s", "5",
                            "--json", str(out), "--plot", str(tmp_path / "p.png"), "--quiet")
            assert R.main(a) == 0
        finally:
            srv.loop.call_soon_threadsafe(_RELEASE[0].set)
    doc = json.loads(out.read_text())
    s = doc["policies"]["other-server"]
    assert s["requests"] == doc["workload"]["requests"] > 0
    assert s["answered"] == s["requests"] and s["outcomes"]["ok"] == s["requests"]
    assert 0 < s["ttft_p50_s"] <= s["ttft_p99_s"] < 5 and s["prewarm_hit_rate"] is None
    assert doc["simulated"] is None and (tmp_path / "p.png").exists()


# --------------------------------------------------------------------------------------------- simulated twin

def test_twin_runs_the_engine_the_live_cluster_runs():
    """Live CPU engines run B sequences (EngineConfig.resolved fills max_num_seqs from the policy's
    instance_capacity) with chunked steps of max_batch_tokens; the twin must not run vLLM's 256."""
    from warmserve.policy.config import PolicyConfig
    from warmserve.protocol import EngineConfig
    from warmserve.sim.config import ServedModel
    from warmserve.sim.costmodel import CostModel
    from warmserve.sim.simulator import Simulator

    cfg = R.twin_config(4, 45.0, 30.0)
    assert cfg.max_num_seqs == PolicyConfig().instance_capacity == 32
    assert cfg.chunked_prefill_tokens == EngineConfig().max_batch_tokens
    assert cfg.policy_config.window_s == 45.0 and cfg.gpus_per_server == 4
    a = replay_args("--duration-s", "300", "--time-scale", "0.2", "--rate", "2", "--max-output-tokens", "8",
              "--max-prompt-tokens", "64")
    w, served = R.build_workload(a)
    sim = Simulator(w, [ServedModel(n, c) for n, c in served], "warmserve", config=cfg,
                    cost=CostModel.from_profile(_profile()))
    assert sim.max_batch == 32
    s, ttft = R.run_sim("warmserve", w, [ServedModel(n, c) for n, c in served],
                        replay_args("--duration-s", "300", "--time-scale", "0.2", "--cpu-workers", "4",
                              "--window-s", "225", "--drain-s", "30"), CostModel.from_profile(_profile()))
    assert s["requests"] == len(w.trace) == len(ttft) and s["answered"] == s["requests"]
