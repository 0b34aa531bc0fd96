"""A request larger than its instance's whole KV cache is refused at once, as the live engine refuses it
(``Engine.add_request``: PromptTooLongError when prompt + max_tokens need more blocks than ``max_kv_blocks``).
Found in review: the simulated engine queued it for ever, so it waited until the run's end (drain included) and
the run never ended early."""

import math

import numpy as np

from warmserve.geometry import KV_BLOCK_TOKENS, blocks_for_tokens
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, GpuType
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

MODEL = "llama2-7b"
#: a 16 GB GPU: its pool (90%, 14.4 GB) holds the 13.5 GB shard and 6 KV blocks of 128 MiB (256 tokens each)
SMALL_GPU = GpuType(memory_bytes=16e9)
CAP_BLOCKS = 6
DRAIN_S = 600.0


def _sim(prompts, outputs, arrivals, policy="dedicated", models=(MODEL,), which=None, gpu=SMALL_GPU):
    n = len(arrivals)
    names = list(models)
    tr = Trace(names, np.asarray(arrivals, float), np.asarray(which or [0] * n, np.int32), np.asarray(prompts),
               np.asarray(outputs))
    w = Workload("hand", tr, Trace.empty(names), float(max(arrivals)) + 1.0)
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=DRAIN_S, warmup_s=0.0, shared_search=False)
    served = [ServedModel(m, MODEL) for m in names]
    return Simulator(w, served, policy, config=config, cost=CostModel(gpu=gpu))


def test_cap_is_what_the_pool_holds_after_the_shard():
    # the numbers the other tests rest on, by hand: (14.4e9 - 13.5e9 rounded up to 2 MiB pages) // 128 MiB
    shard = math.ceil(13.5e9 / (2 << 20)) * (2 << 20)
    assert (int(16e9 * 0.9) - shard) // (128 << 20) == CAP_BLOCKS
    sim = _sim([100], [100], [0.0])
    sim.run()
    inst = next(iter(sim.state.instances.values()))
    assert inst.kv_blocks_total == CAP_BLOCKS


def test_oversized_request_is_refused_at_once_and_the_run_ends_with_the_rest():
    # request 0 needs 8 blocks (1024 + 1024 tokens) of the 6 the instance can ever hold; request 1 fits exactly
    # (1024 + 512 = 6 blocks) and request 2 is small
    prompts, outputs = [1024, 1024, 200], [1024, 512, 50]
    assert blocks_for_tokens(2048) == 8 and blocks_for_tokens(1536) == CAP_BLOCKS == 1536 // KV_BLOCK_TOKENS
    sim = _sim(prompts, outputs, [0.0, 0.0, 0.5])
    s = sim.run().summary
    assert math.isnan(sim.first[0]) and math.isnan(sim.finish[0])
    assert not math.isnan(sim.finish[1]) and not math.isnan(sim.finish[2])
    inst = next(iter(sim.state.instances.values()))
    assert inst.in_flight == 0 and inst.prefill_tokens_pending == 0  # the driver was told, its counts came down
    # the run ends when the answered requests are done, not after the drain the held request waited for
    assert s["end_s"] == max(sim.finish[1], sim.finish[2]) < DRAIN_S
    assert s["refused"] == 1
    assert s["completed"] == 2 and s["unanswered"] == 1 and s["dropped"] == 1


def test_a_request_within_the_cap_is_not_refused():
    sim = _sim([1024], [512], [0.0])
    s = sim.run().summary
    assert s["refused"] == 0 and s["completed"] == 1


def test_colocated_shares_raised_to_the_context_take_turns_for_the_gpus_memory():
    # `shared` puts both models on one 40 GB GPU (pool 36 GB): the 9.0 GB the two 13.5 GB shards leave holds 67
    # blocks, too few for a floor of one 9,000-token request each (36 blocks), so the layout keeps the shares by
    # demand (33 blocks each); each is then raised to 36, one request at the model's context, as the live
    # executor raises a co-served share (``kv_blocks_for``). Together they pass what the GPU holds: b's long
    # request waits until a's has ended and a's free mapped blocks go back (the live engine takes back its
    # neighbours' headroom when it can run nothing). Before, both long requests were refused here, which the
    # live engine accepts.
    big = GpuType(memory_bytes=40e9)
    sim = _sim([8000, 100, 8000], [1000, 100, 1000], [0.0, 0.1, 0.2], policy="shared", models=("a", "b"),
               which=[0, 1, 1], gpu=big)
    s = sim.run().summary
    assert blocks_for_tokens(9000) == 36 and (36e9 - 2 * 13.5e9) // (128 << 20) == 67
    assert sorted(i.kv_blocks_total for i in sim.state.instances.values()) == [36, 36]
    assert s["refused"] == 0 and s["completed"] == 3
    assert sim.first[2] >= sim.finish[0]  # b's long request ran once a's had given its blocks back
    assert s["end_s"] < DRAIN_S


def test_a_colocated_share_holds_the_models_longest_request():
    # the same GPU, where only model a sends a long request: the simulator passes each model's longest request
    # as its context (``longest_requests``), and `shared` floors a's share to hold it, taking from b's (found on
    # a 2-hour ServeGen replay: a quiet model's share by demand refused its longest requests, which a dedicated
    # instance serves); b keeps what its own 800-token request needs
    big = GpuType(memory_bytes=40e9)
    sim = _sim([8000, 100, 700], [1000, 100, 10], [0.0, 0.1, 0.2], policy="shared", models=("a", "b"),
               which=[0, 1, 1], gpu=big)
    assert {m.name: m.max_context_tokens for m in sim.infos} == {"a": 9000, "b": 710}
    s = sim.run().summary
    totals = {i.model: i.kv_blocks_total for i in sim.state.instances.values()}
    assert totals["a"] >= blocks_for_tokens(9000) and totals["b"] >= blocks_for_tokens(710)
    assert totals["a"] + totals["b"] <= 67
    assert s["refused"] == 0 and s["completed"] == 3


def test_a_stalled_share_gets_its_turn_while_its_neighbours_requests_keep_coming():
    # the same two raised shares, a's requests arriving every 0.5 s from t = 60 to 400 (4,000 + 96 tokens: 16
    # blocks each), b's long request at t = 100. b holds nothing and cannot map its 36 blocks: it is stalled, so a
    # maps nothing ahead and gives back what each finished request freed, which wakes b (the live engine's
    # pool_starved rule). Taking back only when b retried, at a tick, found a's freed blocks already reused:
    # b's first token came at t = 691, after a's stream had ended (found in review).
    assert blocks_for_tokens(4096) == 16
    arrivals = [0.0] + [60.0 + 0.5 * k for k in range(681)]
    arrivals.insert(81, 100.0)  # 60 + 0.5 x 80 = 100: b's request, sent just before a's of the same instant
    which = [0] * len(arrivals)
    which[81] = 1
    prompts = [8000 if m or k == 0 else 4000 for k, m in enumerate(which)]
    outputs = [1000 if m or k == 0 else 96 for k, m in enumerate(which)]
    sim = _sim(prompts, outputs, arrivals, policy="shared", models=("a", "b"), which=which,
               gpu=GpuType(memory_bytes=40e9))
    s = sim.run().summary
    assert sorted(i.kv_blocks_total for i in sim.state.instances.values()) == [36, 36]
    assert 100.0 <= sim.first[81] < 105.0 and s["refused"] == 0


def test_a_request_that_never_fits_beside_the_other_models_weights_is_refused_and_the_queue_moves_on():
    # the same 40 GB GPU: a's longest request (19,000 + 1,000 tokens, 79 blocks) sets its context, and `shared`
    # raises a's share to hold it (within the 167 blocks its own shard leaves), but beside b's weights only 67
    # blocks are ever free. It used to be admitted and to wait at the head of a's queue until the run ended, with
    # a's next request behind it; it is refused now, as the live engine refuses it (Engine.add_request), and the
    # others are answered
    big = GpuType(memory_bytes=40e9)
    sim = _sim([19000, 100, 100], [1000, 100, 100], [0.0, 0.1, 0.2], policy="shared", models=("a", "b"),
               which=[0, 0, 1], gpu=big)
    s = sim.run().summary
    assert blocks_for_tokens(20000) == 79 and (36e9 - 2 * 13.5e9) // (128 << 20) == 67
    assert {i.model: i.kv_blocks_total for i in sim.state.instances.values()}["a"] >= 79
    assert s["refused"] == 1 and s["completed"] == 2 and math.isnan(sim.first[0])
    assert s["end_s"] < DRAIN_S
