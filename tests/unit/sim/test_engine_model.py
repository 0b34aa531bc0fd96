"""The vLLM-like engine model, through the simulator: step times by hand, admission limits, cold starts."""

from dataclasses import replace

import numpy as np
import pytest

from warmserve.policy import actions as A
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, EngineLimits, GpuType
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

MODEL = "llama2-7b"


def _workload(arrivals, prompt, output):
    n = len(arrivals)
    tr = Trace([MODEL], np.asarray(arrivals, float), np.zeros(n, np.int32), np.full(n, prompt), np.full(n, output))
    return Workload("hand", tr, Trace.empty([MODEL]), float(max(arrivals)) + 1.0)


def _run(arrivals, prompt, output, policy="dedicated", cost=None, **cfg):
    cost = cost or CostModel()
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=600, warmup_s=0.0, **cfg)
    sim = Simulator(_workload(arrivals, prompt, output), [ServedModel(MODEL)], policy, config=config, cost=cost)
    r = sim.run()
    return sim, r


def test_decode_step_matches_hand_computed_time_for_batch_and_context():
    """Two requests arrive before the instance is ready: one prefill of both, then 10 decode steps of a batch of
    2. Step k reads 2 x (1000 prompt + 1 first token + k) KV tokens at the H100's achievable bandwidth."""
    prompt, output = 1000, 11
    sim, r = _run([0.0, 0.0], prompt, output)
    read_bps = 3.35e12 * 0.68  # H100 SXM datasheet x measured achievable share (CONSTANTS.md)
    weight_floor = 13.5e9 / read_bps  # 5.9 ms, under the paper's 15 ms step
    assert weight_floor < 0.015
    steps = [0.015 + 2 * (prompt + 1 + k) * 524288 / read_bps for k in range(output - 1)]
    first = np.asarray(sim.first)
    fin = np.asarray(sim.finish)
    assert first[0] == first[1]  # one prefill batch
    prefill = 0.1 * 0.035 + 0.9 * 0.035 / 1024 * 2 * prompt  # fixed 10% + linear in the batch's tokens
    ready = first[0] - prefill
    assert ready == pytest.approx(13.5e9 / 32e9 + 0.1, abs=1e-9)  # warm engine: load at 32 GB/s + activation
    assert fin[0] == fin[1]
    assert fin[0] - first[0] == pytest.approx(sum(steps), rel=1e-9)
    assert sum(steps) == pytest.approx(0.15463, abs=1e-5)  # 10 x 15 ms + about 0.46 ms of KV reads per step


def test_a_request_arriving_mid_step_is_prefilled_when_the_step_ends():
    """Found in review: a request routed while a batch decoded was prefilled at once, cutting into the step under
    way (vLLM schedules between steps), so its TTFT was short by the rest of that step. Two requests decode
    together (1000 prompt, long output); the third arrives 40% into the decode's 20th step. Its TTFT is the rest
    of that step plus its own prefill, each step computed by hand as above."""
    prompt = 1000
    read_bps = 3.35e12 * 0.68

    def step(k):  # decode step k of the batch of 2
        return 0.015 + 2 * (prompt + 1 + k) * 524288 / read_bps

    sim0, _ = _run([0.0, 0.0], prompt, 200)
    t0 = sim0.first[0]
    ends = t0 + np.cumsum([step(k) for k in range(30)])
    arrive = float(ends[18] + 0.4 * step(19))  # 40% into step 19 (0-based), which ends at ends[19]
    sim, _ = _run([0.0, 0.0, arrive], prompt, 200)
    prefill = 0.1 * 0.035 + 0.9 * 0.035 / 1024 * prompt
    assert sim.first[0] == t0
    assert sim.first[2] - arrive == pytest.approx(ends[19] - arrive + prefill, rel=1e-6)
    assert sim.first[2] - arrive > prefill + 0.5 * step(19)  # before: prefill only


def test_fluid_engine_model_keeps_the_flat_step():
    prompt, output = 1000, 11
    sim, _ = _run([0.0, 0.0], prompt, output, engine_model="fluid")
    assert sim.finish[0] - sim.first[0] == pytest.approx(10 * 0.015, rel=1e-9)


def test_admission_stops_at_max_running_seqs():
    cost = replace(CostModel(), limits=EngineLimits(max_running_seqs=4))
    sim, r = _run([0.0] * 10, 500, 50, cost=cost)
    first = np.asarray(sim.first)
    assert r.summary["completed"] == 10
    assert (first[:4] == first[0]).all() and (first[4:] > first[0]).all()
    # the fifth is admitted only when a sequence finishes: after the first batch's decode
    assert first[4] > sim.finish[0] - 1e-9


def test_admission_stops_at_kv_memory():
    """A GPU whose pool holds the weights and KV blocks for 3.5 requests admits 3 at once."""
    block_bytes = 256 * 524288  # one 256-token block of Llama-2 7B
    per_req = 4 * block_bytes  # 1000 + 11 tokens -> 4 blocks
    gpu = GpuType(memory_bytes=(13.5e9 + 3.5 * per_req) / 0.9)
    cost = replace(CostModel(), gpu=gpu)
    sim, r = _run([0.0] * 10, 1000, 11, cost=cost)
    first = np.asarray(sim.first)
    assert r.summary["completed"] == 10
    assert (first[:3] == first[0]).all() and first[3] > first[0]


def test_prefill_batch_is_limited_by_max_batched_tokens():
    cost = replace(CostModel(), limits=EngineLimits(max_batched_tokens=2000))
    sim, _ = _run([0.0] * 4, 1000, 5, cost=cost)
    first = np.asarray(sim.first)
    assert first[0] == first[1] and first[2] > first[1] and first[2] == first[3]


def test_a_prefill_batch_of_short_prompts_costs_each_prompt_not_their_total():
    """With a measured table (``warmserve calibrate``), four 128-token prompts prefilled together take
    4 x 56.667 ms - 3 x the 15 ms fixed part = 181.667 ms (the table read at 512 tokens: 250 ms)."""
    base = CostModel()
    table = ((16, 0.02), (64, 0.035), (256, 0.1), (512, 0.25))
    cost = replace(base, models={**base.models, MODEL: replace(base.cost(MODEL), prefill_table=table)})
    sim, _ = _run([0.0] * 4, 128, 2, cost=cost)
    first = np.asarray(sim.first)
    assert (first == first[0]).all()
    ready = 13.5e9 / 32e9 + 0.1  # warm engine: load at 32 GB/s + activation (as above)
    assert first[0] - ready == pytest.approx(0.181667, abs=1e-6)


def test_autoscale_cold_start_is_a_fresh_vllm_engine_with_a_fast_loader():
    """TTFT of the first request = engine init (14 s) + weights from host memory at the link's 32 GB/s (as
    warmserve's loads) + prefill; no KV page mapping."""
    prompt = 1024
    sim, _ = _run([0.0], prompt, 2, policy="autoscale")
    load = 13.5e9 / 32e9
    assert sim.first[0] == pytest.approx(14.0 + load + 0.035, abs=1e-9)
    assert CostModel().vllm_cold_start_s(CostModel().cost(MODEL)) == pytest.approx(14.0 + load)
    sim35, _ = _run([0.0], prompt, 2, policy="autoscale", cost=CostModel().with_cold_start_s(35.0))
    assert sim35.first[0] == pytest.approx(35.0 + load + 0.035, abs=1e-9)


def test_dropping_a_chain_of_queued_prewarms_frees_the_link():
    """Three prewarm copies queued on one link; dropping the second and then the third must leave the link
    busy only until the first copy ends (before the fix it stayed busy until the second one's end)."""
    config = SimConfig(n_servers=1, gpus_per_server=1, warmup_s=0.0)
    sim = Simulator(_workload([0.0], 100, 2), [ServedModel(MODEL)], "warmserve", config=config)
    sim._reset()
    sim.now = 0.0
    load = 13.5e9 / 32e9
    for k in "abc":  # three shards fit the 72 GB pool: 40.5 GB
        sim.driver.apply(A.Prewarm(f"p-{k}", MODEL, (0,), 1.0), 0.0)
    assert sim.loading["p-c"][1] == pytest.approx(3 * load)
    sim.driver.apply(A.Evict("p-b"), 0.0)
    sim.driver.apply(A.Evict("p-c"), 0.0)
    assert sim.link_free[0] == pytest.approx(load)
    sim.driver.apply(A.Prewarm("p-d", MODEL, (0,), 1.0), 0.0)
    assert sim.loading["p-d"] == pytest.approx((load, 2 * load))


def test_chunked_prefill_splits_the_prompt_and_mixes_decode_steps():
    """512-token steps: a 1000-token prompt alone takes two prefill steps (512 + 488 tokens); a second request
    arriving while the first decodes is prefilled in steps that also advance the first by one token each."""
    cost = CostModel()
    c = cost.cost(MODEL)
    sim, r = _run([0.0], 1000, 3, chunked_prefill_tokens=512)
    ready = 13.5e9 / 32e9 + 0.1
    assert sim.first[0] - ready == pytest.approx(cost.prefill_s(c, 512) + cost.prefill_s(c, 488), rel=1e-9)
    sim2, r2 = _run([0.0, 5.0], 1000, 400, chunked_prefill_tokens=512)
    assert r2.summary["completed"] == 2
    # the second prompt's two steps carry one decode token of the first: 511 + 489 prompt tokens, each step
    # costing a decode step plus the per-token part of the prefill
    per_token = cost.prefill_s(c, 1) - cost.prefill_s(c, 0)
    assert sim2.first[1] - 5.0 > 2 * 0.015 + 1000 * per_token - 1e-9
    assert sim2.first[1] - 5.0 < 2 * 0.015 + 1000 * per_token + 0.015 + 0.002  # at most one step in progress


def test_a_chunk_beside_decode_pays_the_per_token_part_of_a_measured_table():
    """With a measured table the fixed part is prefill_fixed_s (15 ms here), as prefill_batch_s splits a batch.
    256-token steps: the first prompt alone, then the second in two chunks of 255 and 1 tokens, each beside one
    decode token of the first: decode step + the table's growth over the chunk (the first: prefill(255) less the
    15 ms; the 1-token chunk after 255 cached tokens: prefill(256) - prefill(255), ``test_chunk_cached_context``).
    Found in review: the table's first point was taken off instead of its fixed part, so each such step (the
    replay twin's) was 5 ms short here."""
    base = CostModel()
    table = ((16, 0.02), (64, 0.035), (256, 0.1), (512, 0.25))
    cost = replace(base, models={**base.models, MODEL: replace(base.cost(MODEL), prefill_table=table)})
    cost = replace(cost, kv_map_s_per_gib=0.0)  # the second prompt's KV pages mapped for free, to isolate the steps
    sim, _ = _run([0.0, 0.0], 256, 20, cost=cost, chunked_prefill_tokens=256)
    decode = [0.015 + ctx * 524288 / (3.35e12 * 0.68) for ctx in (257, 258)]  # one sequence's KV read
    prefill_255 = 0.035 + (255 - 64) * (0.1 - 0.035) / (256 - 64)
    assert sim.first[1] - sim.first[0] == pytest.approx(sum(decode) + (prefill_255 - 0.015) + (0.1 - prefill_255),
                                                        rel=1e-9)


def test_requests_on_a_lost_gpu_resume_after_their_tokens_on_another_instance():
    """Three 1000-token prompts decode 200 tokens on the first of two instances; its GPU is lost at t = 2 s. They
    keep their first-token times, and the other instance prefills each prompt with the g tokens it had out
    (one at the prefill and one per whole decode step done by then), then runs the 199 - g steps left."""
    cost = CostModel()
    c = cost.cost(MODEL)
    config = SimConfig(n_servers=1, gpus_per_server=2, drain_s=600, warmup_s=0.0)
    base = Simulator(_workload([0.0] * 3, 1000, 200), [ServedModel(MODEL)], "dedicated", config=config)
    base.run()
    sim = Simulator(_workload([0.0] * 3, 1000, 200), [ServedModel(MODEL)], "dedicated", config=config,
                    gpu_losses=[(2.0, (0,))])
    r = sim.run()
    assert sim.first == base.first  # the first tokens came out before the loss
    assert r.summary["completed"] == 3 and r.summary["unanswered"] == 0
    kv_s = c.kv_bytes_per_token / cost.gpu.decode_read_bytes_per_s

    def steps(prompt, n):  # n decode steps of the batch of 3, from its first token on
        return [cost.decode_step_s(c, 3, 0) + kv_s * 3 * (prompt + 1 + k) for k in range(n)]

    done = np.cumsum(steps(1000, 199))
    g = 1 + int(np.searchsorted(done, 2.0 - base.first[0], side="right"))
    assert 1 < g < 200
    want = 2.0 + cost.prefill_batch_s(c, [1000 + g] * 3) + sum(steps(1000 + g, 199 - g))
    assert sim.finish == pytest.approx([want] * 3, rel=1e-9)
    assert sim.finish[0] > base.finish[0]  # the prompt and g tokens prefilled again


def _two_models(arrivals, models, prompt, output, policy, host_cores, engine_model="fluid", gpu_losses=()):
    names = [MODEL, "copy-7b"]
    n = len(arrivals)
    tr = Trace(names, np.asarray(arrivals, float), np.asarray(models, np.int32), np.full(n, prompt),
               np.asarray(output))
    w = Workload("hand", tr, Trace.empty(names), float(max(arrivals)) + 1.0)
    cost = CostModel(gpu=GpuType(host_cores=host_cores))
    config = SimConfig(n_servers=1, gpus_per_server=2, drain_s=600, warmup_s=0.0, engine_model=engine_model)
    sim = Simulator(w, [ServedModel(MODEL), ServedModel("copy-7b", MODEL)], policy, config=config, cost=cost,
                    gpu_losses=gpu_losses)
    return sim, sim.run()


def test_cpu_workers_sharing_one_core_each_run_at_half_speed_while_both_compute():
    """Two devices on one server with one core between them (``host_cores`` 1): model A decodes 200 flat 15 ms
    steps; while model B's request runs on the other device (a prefill at half speed, then one decode step at
    half speed), A's run goes at half speed too, so A ends half of B's busy time later. With two cores (or none
    modelled, 0) both run as if alone."""
    c = CostModel().cost(MODEL)
    args = ([0.0, 1.0], [0, 1], 1000, [201, 2], "dedicated")
    alone, _ = _two_models(*args, host_cores=0)
    two, _ = _two_models(*args, host_cores=2)
    one, r = _two_models(*args, host_cores=1)
    assert two.first == alone.first and two.finish == alone.finish
    assert r.summary["completed"] == 2
    prefill = CostModel().prefill_s(c, 1000)
    assert alone.first[1] == pytest.approx(1.0 + prefill, abs=1e-9)
    assert one.first[1] == pytest.approx(1.0 + 2 * prefill, abs=1e-9)
    b_busy = 2 * prefill + 2 * 0.015
    assert one.finish[1] == pytest.approx(1.0 + b_busy, abs=1e-9)
    assert alone.finish[0] - alone.first[0] == pytest.approx(200 * 0.015, abs=1e-9)
    assert one.finish[0] == pytest.approx(alone.finish[0] + b_busy / 2, abs=1e-9)


def test_fresh_engines_starting_together_share_the_cores():
    """Under ``autoscale`` two models' first requests start two fresh engine processes at once on a server with
    one core: they share it, so each 14 s start (lone) takes 28 s; with two cores each takes 14 s. Weights then
    load at the fast loader's rate and the prompts are prefilled; on one core the two prefills, which start at
    the same instant, both run at half speed (the first is re-timed when the second starts)."""
    c = CostModel().cost(MODEL)
    load, prefill = CostModel().fast_load_s(c), CostModel().prefill_s(c, 1000)
    two, _ = _two_models([0.0, 0.0], [0, 1], 1000, [2, 2], "autoscale", host_cores=2)
    one, _ = _two_models([0.0, 0.0], [0, 1], 1000, [2, 2], "autoscale", host_cores=1)
    assert two.first == pytest.approx([14.0 + load + prefill] * 2, abs=1e-9)
    assert one.first == pytest.approx([28.0 + load + 2 * prefill] * 2, abs=1e-9)


def test_a_prefill_under_way_is_re_timed_when_the_cores_get_busier_or_freer():
    """One core for two devices, both instances up by 1 s: model A's prompt (prefill p alone) arrives at 1 s;
    model B's arrives p / 2 later on the other device. From then both run at half speed: A's last half takes p,
    so A's first token is out at 1 s + 1.5 p, by when B has done p / 2 of its own; B's last half then runs alone,
    out at 1 s + 2 p. (A prefill keeping the factor it started with would give 1 s + p and 1 s + 2.5 p.) On a
    time-shared GPU, where `shared` runs, it still does."""
    p = CostModel().prefill_s(CostModel().cost(MODEL), 1000)
    one, r = _two_models([1.0, 1.0 + p / 2], [0, 1], 1000, [1, 1], "dedicated", host_cores=1)
    assert r.summary["completed"] == 2
    assert one.first == pytest.approx([1.0 + 1.5 * p, 1.0 + 2.0 * p], abs=1e-9)
    two, _ = _two_models([1.0, 1.0 + p / 2], [0, 1], 1000, [1, 1], "dedicated", host_cores=2)
    assert two.first == pytest.approx([1.0 + p, 1.0 + 1.5 * p], abs=1e-9)


def test_a_fresh_engine_lost_while_starting_gives_its_share_of_the_cores_back():
    """The two fresh engines above share one core; the first's GPU is lost at 5 s, 2.5 s into each one's 14 s
    start. The second then has 11.5 s of its start left and runs alone: up at 16.5 s, not 28 s. The lost one's
    request waits for a GPU and is answered by the end."""
    c = CostModel().cost(MODEL)
    load, prefill = CostModel().fast_load_s(c), CostModel().prefill_s(c, 1000)
    sim, r = _two_models([0.0, 0.0], [0, 1], 1000, [2, 2], "autoscale", host_cores=1, gpu_losses=[(5.0, (0,))])
    assert r.summary["completed"] == 2 and r.summary["unanswered"] == 0
    lost = 0 if sim.first[0] > sim.first[1] else 1
    assert sim.first[1 - lost] == pytest.approx(16.5 + load + prefill, abs=1e-9)
    assert sim.first[lost] > sim.first[1 - lost]
