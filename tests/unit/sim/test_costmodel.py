"""The simulator's cost model: the decode step's KV-read term, cold-start parts, engine limits, profiles."""

import dataclasses
import json

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.costmodel import (ENGINE_INIT_RANGE_S, FAST_LOAD_BYTES_PER_S, SCHEMA, CostModel, EngineLimits,
                                    GpuType, ModelCost, prefill_fixed_s)


def test_decode_step_with_kv_read_matches_hand_computed_step():
    cm = CostModel()  # H100 SXM: 3.35e12 B/s peak x 0.68 achievable = 2.278e12 B/s
    read_bps = 3.35e12 * 0.68
    assert cm.gpu.decode_read_bytes_per_s == pytest.approx(2.278e12)

    # Llama-2 7B, tp 1, 64 sequences of 1000 tokens of context each:
    #   weight floor = 13.5e9 B / 2.278e12 B/s = 5.926 ms, below the paper's 15 ms step, so the step starts at 15 ms
    #   KV read      = 64 x 1000 tokens x 524,288 B/token = 3.3554e10 B; / 2.278e12 B/s = 14.730 ms
    #   step         = 15 ms + 14.730 ms = 29.730 ms
    c7 = cm.cost("llama2-7b")
    assert c7.weight_bytes / read_bps == pytest.approx(5.926e-3, rel=1e-3)
    assert cm.decode_step_s(c7, 64, context_tokens=64 * 1000) == pytest.approx(0.015 + 3.3554432e10 / read_bps)
    assert cm.decode_step_s(c7, 64, context_tokens=64 * 1000) == pytest.approx(29.730e-3, rel=1e-4)

    # Llama-2 70B on 4 GPUs, 256 sequences of 1500 tokens: each GPU reads a quarter of weights and KV
    #   weight floor = 138e9 / 4 = 3.45e10 B / 2.278e12 B/s = 15.145 ms, below the paper's 30 ms
    #   KV read      = 384,000 tokens x 327,680 B / 4 = 3.1457e10 B; / 2.278e12 B/s = 13.809 ms
    #   step         = 30 ms + 13.809 ms = 43.809 ms
    c70 = cm.cost("llama2-70b")
    assert cm.decode_step_s(c70, 256, context_tokens=256 * 1500) == pytest.approx(43.809e-3, rel=1e-4)


def test_weight_floor_takes_over_from_a_small_step_figure():
    # PAPER.md: "a decode step of a 13.5 GB model cannot be faster than about 4 ms" at the 3.35 TB/s peak
    peak = CostModel(gpu=GpuType(hbm_achievable_fraction=1.0))
    fast = ModelCost(13.5e9, 1, 524288, 0.001, 1e-5, decode_base_s=0.001)
    assert peak.decode_step_s(fast, 1, context_tokens=0) == pytest.approx(13.5e9 / 3.35e12)  # 4.03 ms
    assert peak.decode_step_s(fast, 1, context_tokens=0) == pytest.approx(4.03e-3, rel=1e-3)
    assert peak.decode_step_s(fast, 1) == pytest.approx(0.001)  # without a context: the figure as given


def test_kv_term_uses_the_gpu_bandwidth_and_base_keeps_compute_scale():
    a100 = CostModel.for_gpu("A100-80GB")
    c = a100.cost("llama2-7b")
    # base 15 ms x 1.6 = 24 ms; KV 10,000 tokens x 524,288 B = 5.24288e9 B / (2.039e12 x 0.68 B/s) = 3.781 ms
    assert a100.decode_step_s(c, 8, context_tokens=10_000) == pytest.approx(0.024 + 5.24288e9 / (2.039e12 * 0.68))
    # more context, longer step: linear in the tokens read
    s1, s2 = (a100.decode_step_s(c, 8, context_tokens=n) for n in (10_000, 20_000))
    assert s2 - s1 == pytest.approx(5.24288e9 / (2.039e12 * 0.68))


def test_decode_step_without_context_is_unchanged():
    cm = CostModel()
    for name, step in (("llama2-7b", 0.015), ("llama2-13b", 0.020), ("llama2-70b", 0.030)):
        c = cm.cost(name)
        for batch in (1, 16, 256):
            assert cm.decode_step_s(c, batch) == step
        # with no KV to read, the paper's figures stand: each is above its weight floor on an H100
        assert cm.decode_step_s(c, 16, context_tokens=0) == step
    tab = ModelCost(1e8, 1, 8192, 0.0, 0.0, 0.0, decode_table=((1, 0.01), (32, 0.02)))
    assert cm.decode_step_s(tab, 16) == pytest.approx(0.01 + 0.01 * 15 / 31)
    with pytest.raises(InvalidArgumentError, match="negative"):
        cm.decode_step_s(cm.cost("llama2-7b"), 1, context_tokens=-1)


def test_kv_capacity_is_the_pool_less_weights_in_whole_blocks():
    cm = CostModel()  # pool = 0.9 x 80e9 = 72e9 B per GPU
    # 7B: (72e9 - 13.5e9) B / 524,288 B per token = 111,579.9 tokens -> 435 blocks of 256 = 111,360
    assert cm.kv_capacity_tokens(cm.cost("llama2-7b")) == 111_360
    # 70B on 4 GPUs: (72e9 - 34.5e9) B / (327,680 / 4) B per token = 457,763.7 -> 1,788 blocks = 457,728
    assert cm.kv_capacity_tokens(cm.cost("llama2-70b")) == 457_728
    assert cm.kv_capacity_tokens(ModelCost(100e9, 1, 1024, 0.0, 0.0, 0.01)) == 0  # shard larger than the pool


def test_cold_start_parts_reproduce_the_published_figures():
    cm = CostModel()
    # ServerlessLLM: Llama-3.1-8B (16.06 GB of bf16 weights) in 0.7 s from host memory, when a profile sets it
    llama31_8b = ModelCost(16.06e9, 1, 131072, 0.0, 0.0, 0.015)
    sllm = dataclasses.replace(cm, fast_load_bytes_per_s=FAST_LOAD_BYTES_PER_S)
    assert sllm.fast_load_s(llama31_8b) == pytest.approx(0.7)
    # by default the baseline loads at the link, as warmserve's loads do: 16.06e9 / 32e9 = 0.502 s
    assert cm.fast_load_s(llama31_8b) == pytest.approx(16.06e9 / 32e9) == cm.load_s(llama31_8b)
    # a vanilla vLLM start: 14 s engine init + 13.5e9 / 32e9 = 0.422 s of weights
    assert cm.vllm_cold_start_s(cm.cost("llama2-7b")) == pytest.approx(14.0 + 13.5e9 / 32e9)
    # 70B on 4 GPUs: no communicator charge (none published), each GPU loads a quarter: 14 + 34.5e9 / 32e9
    assert cm.vllm_cold_start_s(cm.cost("llama2-70b")) == pytest.approx(14.0 + 34.5e9 / 32e9)
    # the earlier engine start (no longer charged): 6 s, and no tp extra
    assert cm.engine_s(cm.cost("llama2-7b")) == 6.0 and cm.engine_s(cm.cost("llama2-13b")) == 6.0
    assert cm.load_s(cm.cost("llama2-13b")) == pytest.approx(13e9 / 32e9)


def test_with_cold_start_s_sets_the_engine_part_of_both_cold_starts():
    cm = CostModel()
    c7, c13 = cm.cost("llama2-7b"), cm.cost("llama2-13b")
    hi = cm.with_cold_start_s(ENGINE_INIT_RANGE_S[1])  # 35 s
    assert (hi.engine_start_s, hi.engine_init_s) == (35.0, 35.0)
    assert hi.engine_s(c7) == 35.0 and hi.engine_s(c13) == 35.0  # no tp extra
    assert hi.vllm_cold_start_s(c7) - cm.vllm_cold_start_s(c7) == pytest.approx(35.0 - 14.0)
    assert hi.load_s(c7) == cm.load_s(c7) and hi.fast_load_s(c7) == cm.fast_load_s(c7)
    assert cm.engine_start_s == 6.0  # the original is untouched
    assert cm.with_cold_start_s(0).engine_s(c7) == 0.0
    with pytest.raises(InvalidArgumentError, match=">= 0.*published vLLM range is 14-35 s"):
        cm.with_cold_start_s(-1.0)
    with pytest.raises(InvalidArgumentError):
        cm.with_cold_start_s(float("nan"))


def test_profile_round_trip_with_the_new_fields(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({
        "schema": SCHEMA, "engine_init_s": 25.0, "fast_load_bytes_per_s": 20e9,
        "gpu": {"hbm_bytes_per_s": 2.039e12, "hbm_achievable_fraction": 0.5},
        "engine_limits": {"max_running_seqs": 128, "max_batched_tokens": 8192}}))
    cm = CostModel.from_profile(str(path))
    assert cm.engine_init_s == 25.0 and cm.fast_load_bytes_per_s == 20e9
    assert cm.gpu.decode_read_bytes_per_s == pytest.approx(2.039e12 * 0.5)
    assert cm.limits == EngineLimits(max_running_seqs=128, block_size_tokens=256, max_model_len_tokens=2048,
                                     max_batched_tokens=8192)
    assert cm.engine_start_s == 6.0 and cm.gpu.h2d_bytes_per_s == 32e9  # what the profile does not name stays
    prof = cm.to_profile()
    assert prof["engine_limits"]["max_running_seqs"] == 128 and prof["gpu"]["hbm_achievable_fraction"] == 0.5
    back = CostModel.from_profile(json.loads(json.dumps(prof)))
    assert back == cm and back.to_profile() == prof
    c = back.cost("llama2-7b")
    assert back.decode_step_s(c, 4, context_tokens=1000) == pytest.approx(0.015 + 1000 * 524288 / (2.039e12 * 0.5))


def test_profile_without_the_new_fields_keeps_their_defaults():
    old = {"schema": SCHEMA, "gpu": {"name": "cpu-worker-1t", "memory_bytes": 8e9, "pool_fraction": 1.0,
                                     "h2d_bytes_per_s": 2e9, "compute_scale": 1.0},
           "engine_start_s": 0.01, "tp_init_s": 0.0, "activation_s": 0.001, "kv_map_s_per_gib": 0.0}
    cm = CostModel.from_profile(old)
    assert cm.engine_start_s == 0.01 and cm.gpu.h2d_bytes_per_s == 2e9
    assert cm.engine_init_s == 14.0 and cm.limits == EngineLimits()
    assert cm.gpu.hbm_bytes_per_s == 3.35e12 and cm.gpu.hbm_achievable_fraction == 0.68


def test_profile_with_an_unknown_key_is_refused():
    with pytest.raises(InvalidArgumentError, match="max_num_seqs"):
        CostModel.from_profile({"schema": SCHEMA, "engine_limits": {"max_num_seqs": 256}})
    with pytest.raises(InvalidArgumentError, match="hbm_bandwidth"):
        CostModel.from_profile({"schema": SCHEMA, "gpu": {"hbm_bandwidth": 1e12}})
    with pytest.raises(InvalidArgumentError, match="hbm_achievable_fraction"):
        CostModel.from_profile({"schema": SCHEMA, "gpu": {"hbm_achievable_fraction": 0.0}})


@pytest.mark.parametrize("text, says", [("[1, 2]", "JSON list, not the object"), ("{", "not valid JSON")])
def test_a_profile_file_that_is_no_profile_object_names_the_file(tmp_path, text, says):
    """Found in review: a profile whose top level was a list ended in an AttributeError traceback."""
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError, match=says) as e:
        CostModel.from_profile(str(path))
    assert str(path) in str(e.value) and "warmserve calibrate --out" in str(e.value)


@pytest.mark.parametrize("name", ["missing.json", "."])
def test_a_profile_path_that_cannot_be_read_is_refused_naming_it(tmp_path, name):
    """Found in review: `warmserve simulate --profile missing.json` ended in a bare FileNotFoundError (exit 1)."""
    path = tmp_path / name
    with pytest.raises(InvalidArgumentError, match="cannot read it") as e:
        CostModel.from_profile(str(path))
    assert str(path) in str(e.value) and "warmserve calibrate --out" in str(e.value)


def test_engine_limits_are_the_artifacts_and_refuse_zero():
    lim = CostModel().limits
    assert (lim.max_running_seqs, lim.block_size_tokens, lim.max_model_len_tokens, lim.max_batched_tokens) == \
        (256, 256, 2048, 100_000)
    with pytest.raises(InvalidArgumentError, match="max_running_seqs"):
        EngineLimits(max_running_seqs=0)
    # 1 is the least each limit takes (one sequence, one token), not a refusal
    one = EngineLimits(max_running_seqs=1, max_model_len_tokens=1, max_batched_tokens=1)
    assert (one.max_running_seqs, one.max_model_len_tokens, one.max_batched_tokens) == (1, 1, 1)


def test_a_batch_of_prompts_pays_each_prompts_measured_time_and_the_fixed_part_once():
    """A measured table is one sequence per step, superlinear from attention; a batch of sequences attends within
    each. Table (tokens, s): 16 -> 20 ms, 64 -> 35 ms, 256 -> 100 ms, 512 -> 250 ms.
      fixed part    = 20 ms - 16 x (35 - 20) / (64 - 16) ms = 15 ms
      128 tokens    = 35 + 64 x (100 - 35) / (256 - 64) ms = 56.667 ms
      4 x 128       = 4 x 56.667 - 3 x 15 = 181.667 ms (read at their total, 512 tokens: 250 ms)
    One sequence is its table time; the paper's linear form (no table) is the total's, as before."""
    c = ModelCost(1e9, 1, 1024, 0.0, 0.0, 0.01, prefill_table=((16, 0.02), (64, 0.035), (256, 0.1), (512, 0.25)))
    cm = CostModel()
    assert prefill_fixed_s(c.prefill_table) == pytest.approx(0.015)
    assert cm.prefill_batch_s(c, [128] * 4) == pytest.approx(4 * (0.035 + 64 * 0.065 / 192) - 3 * 0.015)
    assert cm.prefill_batch_s(c, [128] * 4) == pytest.approx(0.181667, abs=1e-6)
    assert cm.prefill_s(c, 512) == pytest.approx(0.25)
    assert cm.prefill_batch_s(c, [300]) == pytest.approx(cm.prefill_s(c, 300))
    slow = CostModel(gpu=GpuType(compute_scale=2.0))
    assert slow.prefill_batch_s(c, [128] * 4) == pytest.approx(2 * 0.181667, abs=1e-6)
    c7 = cm.cost("llama2-7b")
    assert cm.prefill_batch_s(c7, [100, 200, 700]) == pytest.approx(cm.prefill_s(c7, 1000))


def test_host_cores_charge_busy_cpu_workers_by_processor_sharing():
    assert [GpuType(host_cores=2).host_slowdown(n) for n in (0, 1, 2, 3, 4)] == [1, 1, 1, 1.5, 2]
    assert GpuType().host_slowdown(16) == 1  # GPUs share no compute
    with pytest.raises(InvalidArgumentError, match="host_cores"):
        GpuType(host_cores=-1)
    prof = CostModel(gpu=GpuType(host_cores=2.5)).to_profile()
    assert CostModel.from_profile(prof).gpu.host_cores == 2.5


def test_a_measured_table_extrapolates_its_last_slope_and_never_below_its_last_point():
    """Past a measured table's last point the time grows along its last two points' slope; a noisy table ending on
    a dip is held at its last point instead of extrapolated downward (the module doc's schema)."""
    cm = CostModel()
    rising = ModelCost(1e8, 1, 8192, 0.0, 0.0, 0.0, decode_table=((1, 0.01), (16, 0.014), (32, 0.02)))
    # last slope (0.02 - 0.014) / (32 - 16) = 0.375 ms per sequence: batch 64 is 20 ms + 32 x 0.375 ms = 32 ms
    assert cm.decode_step_s(rising, 64) == pytest.approx(0.032)
    assert cm.decode_step_s(rising, 32) == pytest.approx(0.02)
    dip = ModelCost(1e8, 1, 8192, 0.0, 0.0, 0.0, prefill_table=((16, 0.02), (512, 0.25), (1024, 0.24)))
    assert cm.prefill_s(dip, 2048) == pytest.approx(0.24)  # held at the last point, not 0.23 or below
    assert cm.prefill_s(dip, 1024) == pytest.approx(0.24)


def test_tp_init_is_charged_to_tensor_parallel_cold_starts_only():
    """``tp_init_s`` (0 by default: TP_INIT_S, none published) is what a profile sets for building a cold engine's
    tensor-parallel communicators: charged where tp > 1, never to a one-GPU engine."""
    cm = dataclasses.replace(CostModel(), tp_init_s=2.0)
    c7, c13 = cm.cost("llama2-7b"), cm.cost("llama2-13b")  # tp 1 and tp 2
    assert cm.engine_s(c7) == 6.0 and cm.engine_s(c13) == 8.0  # LEGACY_ENGINE_START_S, + 2 s at tp 2
    # 14 s engine init (+ 2 s at tp 2) + the shard over the 32 GB/s link: 13.5e9 / 32e9, 26e9 / 2 / 32e9
    assert cm.vllm_cold_start_s(c7) == pytest.approx(14.0 + 13.5e9 / 32e9)
    assert cm.vllm_cold_start_s(c13) == pytest.approx(14.0 + 2.0 + 13e9 / 32e9)


def test_a_decode_step_grows_by_its_per_sequence_slope():
    # decode_step_s = base + per_seq x batch (the profile's "decode_step_s": {"base_s", "per_seq_s"}):
    # 10 ms + 8 x 1 ms = 18 ms, x 2 on a GPU at compute_scale 2
    c = ModelCost(1e8, 1, 8192, 0.0, 0.0, decode_base_s=0.010, decode_per_seq_s=0.001)
    assert CostModel().decode_step_s(c, 8) == pytest.approx(0.018)
    assert CostModel(gpu=GpuType(compute_scale=2.0)).decode_step_s(c, 8) == pytest.approx(0.036)


@pytest.mark.parametrize("times, lacks", [
    ({"decode_step_s": {"base_s": 0.015}}, r"lacks prefill_s \(or prefill_table\):"),
    ({"prefill_s": {"base_s": 0.01}}, r"lacks decode_step_s \(or decode_table\):"),
])
def test_a_new_profile_model_without_prefill_or_decode_times_is_refused_naming_the_part(times, lacks):
    # sizes given, one of the two step times missing: taken, it would default to a step of 0 s
    new = {"weight_bytes": 1e9, "tp": 1, "kv_bytes_per_token": 1024, **times}
    with pytest.raises(InvalidArgumentError, match=lacks):
        CostModel.from_profile({"schema": SCHEMA, "models": {"new": new}})


def test_the_fixed_part_of_a_prefill_table_is_its_first_two_points_line_at_zero_kept_within_the_first_time():
    # (16, 20 ms), (64, 35 ms): 20 - 16 x (35 - 20) / (64 - 16) = 15 ms, whatever follows (or nothing)
    assert prefill_fixed_s(((16, 0.02), (64, 0.035))) == pytest.approx(0.015)
    assert prefill_fixed_s(((16, 0.02), (64, 0.035), (256, 0.1))) == pytest.approx(0.015)
    assert prefill_fixed_s(((16, 0.02),)) == 0.0  # one point: no line
    # (100, 10 ms), (200, 50 ms): the line is at -30 ms at 0 tokens, kept at 0
    assert prefill_fixed_s(((100, 0.01), (200, 0.05))) == 0.0
    # a noisy start falling (16, 20 ms), (64, 10 ms): 23.3 ms at 0 tokens, kept at the first point's 20 ms
    assert prefill_fixed_s(((16, 0.02), (64, 0.01))) == pytest.approx(0.02)
