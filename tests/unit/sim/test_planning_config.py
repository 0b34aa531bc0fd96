"""The co-serving rule's planning figures follow the simulated GPU. Found in review: `PolicyConfig`'s read
bandwidths (``decode_read_bytes_per_s``) were an H100's whatever `--gpu` or `--profile` said, so a run on A100s or
on a calibrated CPU profile planned co-served decode steps 1.6x (A100) or orders of magnitude (CPU) shorter than its
engines stepped. The simulator now gives the policy its GPU's figures, a value given stays, and the weight floor of
the predicted step reads weights at their own rate (CPU profiles measure it apart from the context read)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from warmserve.policy.config import PolicyConfig
from warmserve.policy.cosizing import HostSizing
from warmserve.policy.state import ModelInfo
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import GPU_TYPES, CostModel
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

DEFAULT = PolicyConfig()


def _policy_cfg(cost: CostModel | None, gpu: str = "H100-80GB", given: PolicyConfig = DEFAULT) -> PolicyConfig:
    tr = Trace(["a"], np.array([0.0]), np.zeros(1, np.int32), np.full(1, 100), np.full(1, 10))
    w = Workload("one", tr, Trace.empty(["a"]), 1.0)
    cfg = SimConfig(n_servers=1, gpus_per_server=1, warmup_s=0.0, gpu=gpu, policy_config=given)
    return Simulator(w, [ServedModel("a", "llama2-7b")], "warmserve", config=cfg, cost=cost).policy.cfg


def test_an_a100_run_plans_with_the_a100s_bandwidth_and_an_h100_run_as_before():
    a100 = CostModel.for_gpu("A100-80GB").gpu.decode_read_bytes_per_s
    got = _policy_cfg(None, "A100-80GB")
    assert got.decode_read_bytes_per_s == pytest.approx(a100), "the H100's figure before"
    assert got.decode_read_bytes_per_s < DEFAULT.decode_read_bytes_per_s / 1.6
    assert _policy_cfg(None) == replace(DEFAULT, weight_read_bytes_per_s=0.0), "H100: the defaults, unchanged"


def test_a_cpu_profile_gives_the_policy_its_context_and_weight_read_rates():
    gpu = replace(GPU_TYPES["H100-80GB"], name="cpu-worker", hbm_bytes_per_s=2e10, hbm_achievable_fraction=1.0,
                  weight_read_bytes_per_s=5e10)
    got = _policy_cfg(CostModel(gpu=gpu))
    assert (got.decode_read_bytes_per_s, got.weight_read_bytes_per_s) == (2e10, 5e10)


def test_a_value_given_is_kept():
    given = replace(DEFAULT, decode_read_bytes_per_s=1e12, weight_read_bytes_per_s=3e12)
    got = _policy_cfg(None, "A100-80GB", given)
    assert (got.decode_read_bytes_per_s, got.weight_read_bytes_per_s) == (1e12, 3e12)


def test_the_predicted_steps_weight_floor_reads_weights_at_their_own_rate():
    m = ModelInfo("m", weight_bytes=10**9, kv_bytes_per_token=1000, decode_s_per_token=0.001)
    ctx, batch = 1000, 4
    kv_s = batch * ctx * 1000 / 1e9
    same = HostSizing(PolicyConfig(decode_read_bytes_per_s=1e9, coserve_context_tokens=ctx), {"m": m})
    assert same.step_s("m", batch) == pytest.approx(1.0 + kv_s), "0: weights at the context rate, as on GPUs"
    apart = HostSizing(PolicyConfig(decode_read_bytes_per_s=1e9, weight_read_bytes_per_s=1e11,
                                    coserve_context_tokens=ctx), {"m": m})
    assert apart.step_s("m", batch) == pytest.approx(0.01 + kv_s)
    with pytest.raises(ValueError, match="weight_read_bytes_per_s must be >= 0"):
        PolicyConfig(weight_read_bytes_per_s=-1.0)
