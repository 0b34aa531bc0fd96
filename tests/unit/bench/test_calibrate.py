"""Calibration: the load fit, the profile the simulator reads, and one real (small) measurement."""

import pytest

from warmserve.bench import calibrate as C
from warmserve.sim.costmodel import CostModel


def test_fit_load_recovers_fixed_cost_and_bandwidth():
    pts = [(b, 0.005 + b / 3e9) for b in (75e6, 117e6, 352e6)]
    fixed, bw = C.fit_load(pts)
    assert fixed == pytest.approx(0.005, rel=1e-6) and bw == pytest.approx(3e9, rel=1e-6)
    assert C.fit_load([(1e9, 0.5)]) == (0.0, 2e9)
    # noise that makes the slope negative: all of it counts as bandwidth, never a negative time
    fixed, bw = C.fit_load([(1e8, 0.2), (2e8, 0.1)])
    assert fixed == 0.0 and bw == pytest.approx(3e8 / 0.3)


def test_profile_is_what_the_cost_model_reads():
    m = {"weight_bytes": 75e6, "tp": 1, "kv_bytes_per_token": 49152,
         "prefill_table": [[16, 0.02], [256, 0.2]], "decode_table": [[1, 0.01], [8, 0.03]],
         "measured": {"load_s": 0.04, "activation_s": 0.002, "cold_start_first_token_s": 0.1,
                      "prewarmed_first_token_s": 0.03}}
    prof = C.build_profile({"llama-20m": m, "qwen2-30m": dict(m, weight_bytes=150e6,
                                                                measured=dict(m["measured"], load_s=0.065))},
                           1 << 30, 1)
    cm = CostModel.from_profile(prof)
    c = cm.cost("llama-20m-a", "llama-20m")
    assert cm.prefill_s(c, 136) == pytest.approx(0.11)
    assert cm.decode_step_s(c, 8) == pytest.approx(0.03)
    assert cm.load_s(c) == pytest.approx(0.04, rel=1e-6)  # the fixed part charged (it was engine_start_s, uncharged)
    assert cm.load_fixed_s > 0 and cm.engine_start_s == CostModel().engine_start_s
    assert cm.activation_s == pytest.approx(0.002) and cm.gpu.pool_bytes == 1 << 30


@pytest.mark.slow
def test_measure_small_model(tmp_path):
    from warmserve.engine.demo import write_demo_models
    from warmserve.memory import PagePool

    path = write_demo_models(None, ["llama-20m"])["llama-20m"]
    with PagePool(256 << 20, backend="host") as pool:
        m = C.measure_model(path, "llama-20m", pool, prefill_tokens=[8, 32], decode_batches=[1, 2],
                            decode_steps=2, repeats=1)
    assert m["weight_bytes"] > 50e6 and m["kv_bytes_per_token"] == 2 * 8 * 2 * 64 * 4
    assert [p[0] for p in m["prefill_table"]] == [8, 32] and all(p[1] > 0 for p in m["prefill_table"])
    assert [p[0] for p in m["decode_table"]] == [1, 2] and all(p[1] > 0 for p in m["decode_table"])
    x = m["measured"]
    assert 0 < x["activation_s"] < x["cold_start_first_token_s"] and 0 < x["load_s"]


def test_profile_carries_the_fresh_engine_start_the_autoscale_baseline_pays():
    m = {"weight_bytes": 100e6, "tp": 1, "kv_bytes_per_token": 49152,
         "prefill_table": [[16, 0.02], [256, 0.2]], "decode_table": [[1, 0.01], [8, 0.03]],
         "measured": {"load_s": 0.04, "activation_s": 0.002, "cold_start_first_token_s": 0.1,
                      "prewarmed_first_token_s": 0.03}}
    per_model = {"llama-20m": m, "llama-90m": dict(m, weight_bytes=300e6)}
    # fresh loads: 0.1 s fixed + bytes at 1 GB/s
    fresh = {"init_s": 2.5, "init_s_runs": [2.5], "load_s": {"llama-20m": 0.2, "llama-90m": 0.4}}
    prof = C.build_profile(per_model, 1 << 30, 1, fresh)
    assert prof["engine_init_s"] == pytest.approx(2.6) and prof["fast_load_bytes_per_s"] == pytest.approx(1e9)
    cm = CostModel.from_profile(prof)
    c = cm.cost("x", "llama-90m")
    # what the simulator charges an autoscale cold start: spawn-to-ready + the fixed part + bytes at the fresh rate
    assert cm.vllm_cold_start_s(c) == pytest.approx(2.5 + 0.1 + 0.3)
    assert prof["measured_fresh_engine"]["load_fit"]["fixed_s"] == pytest.approx(0.1)
    # without a fresh-engine measurement the GPU defaults stay
    bare = CostModel.from_profile(C.build_profile(per_model, 1 << 30, 1))
    assert bare.engine_init_s == CostModel().engine_init_s


@pytest.mark.slow
def test_measure_fresh_engine_times_a_new_process(tmp_path):
    from warmserve.engine.demo import write_demo_models

    paths = write_demo_models(None, ["llama-20m"])
    fresh = C.measure_fresh_engine(paths, 256 << 20, 1, 1)
    # a new interpreter importing torch cannot be ready in under 0.2 s; a load from the page cache is well under it
    assert fresh["init_s"] > 0.2 and len(fresh["init_s_runs"]) == 1
    assert 0 < fresh["load_s"]["llama-20m"] < fresh["init_s"]


@pytest.mark.slow
def test_fresh_engines_started_together_each_report_their_own_ready_time():
    from warmserve.engine.demo import write_demo_models

    paths = write_demo_models(None, ["llama-20m"])
    fresh = C.measure_fresh_engine(paths, 256 << 20, 1, 1, at_once=2)
    assert fresh["at_once"] == 2 and len(fresh["init_s_runs"]) == 2
    assert all(t > 0.2 for t in fresh["init_s_runs"])


def test_a_fresh_engine_process_that_fails_at_start_is_an_error(monkeypatch):
    monkeypatch.setattr(C.sys, "executable", "/bin/false")
    with pytest.raises(RuntimeError, match="fresh engine process failed"):
        C.measure_fresh_engine({}, 256 << 20, 1, 1, at_once=2)


def test_the_profile_says_how_many_workers_the_cores_carry():
    m = {"weight_bytes": 75e6, "tp": 1, "kv_bytes_per_token": 49152, "prefill_table": [[16, 0.02], [256, 0.2]],
         "decode_table": [[1, 0.01], [8, 0.03]], "measured": {"load_s": 0.04, "activation_s": 0.002}}
    cores = C.host_cores(1)
    assert cores >= 1
    assert CostModel.from_profile(C.build_profile({"llama-20m": m}, 1 << 30, 1)).gpu.host_cores == cores
    # a worker with more threads than the cores was measured that way alone: never a factor above 1 for it
    assert C.host_cores(1024) == 1.0
