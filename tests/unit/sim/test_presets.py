"""Named presets: the paper's 7-model experiment and the authors' released 4-model setup."""

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.costmodel import CostModel
from warmserve.sim.presets import PRESETS, artifact_preset, paper_preset, scale_preset
from warmserve.workload.recipes import SERVEGEN_LAST_DAY_S


def test_artifact_preset_is_two_7b_one_13b_one_70b_filling_half_the_cluster():
    p = artifact_preset("code", total_rate_rps=4.0, history_days=1)
    assert p.name == "artifact-code" and p.alpha == 0.5
    sizes = sorted(m.size for m in p.models)
    assert sizes == ["llama2-13b", "llama2-70b", "llama2-7b", "llama2-7b"]
    cost = CostModel.for_gpu("H100-80GB")
    assert sum(cost.cost(m.name, m.size).tp for m in p.models) == 8
    assert p.config.n_servers * p.config.gpus_per_server == 16


def test_artifact_workload_splits_the_rate_by_a_power_law_of_alpha_half():
    p = artifact_preset("conv", total_rate_rps=8.0, history_days=1)
    w = p.build(1.0, 0)
    shares = np.array(w.meta["shares"])
    want = np.arange(1, 5) ** -0.5
    assert shares == pytest.approx(want / want.sum())
    assert w.meta["alpha"] == 0.5 and set(w.models) == {m.name for m in p.models}
    counts = np.bincount(w.trace.model, minlength=4)
    assert counts.sum() == len(w.trace)


def test_paper_presets_keep_seven_models_at_alpha_one():
    p = paper_preset("conv", total_rate_rps=4.0, history_days=1)
    assert p.name == "paper-conv" and len(p.models) == 7 and p.alpha == 1.0
    assert set(PRESETS) >= {"paper-conv", "paper-code", "artifact-conv", "artifact-code"}
    assert PRESETS["artifact-code"](total_rate_rps=4.0, history_days=1).name == "artifact-code"


def test_unknown_trace_kind_is_refused():
    with pytest.raises(InvalidArgumentError):
        paper_preset("chat")


def test_cli_alpha_defaults_to_the_presets_own(tmp_path):
    from types import SimpleNamespace

    from warmserve.sim.cli import build_preset

    base = dict(gpu="H100-80GB", ttft_slo_s=0.0, slo_scale=10.0, tick_s=1.0, engine_model="vllm",
                no_shared_search=False, chunked_prefill_tokens=0, policy_option=[], gpus=16, burst_cv=None,
                models=None, rate=4.0, time_scale=1.0, duration_s=60.0, workload=None, start_hour=None,
                history_days=None)  # a preset with --workload is refused (found in review: it was ignored)
    art = build_preset(SimpleNamespace(**base, preset="artifact-conv", alpha=None))
    assert art.alpha == 0.5 and art.build(1.0, 0).meta["alpha"] == 0.5
    pap = build_preset(SimpleNamespace(**base, preset="paper-conv", alpha=None))
    assert pap.alpha == 1.0
    over = build_preset(SimpleNamespace(**base, preset="artifact-conv", alpha=2.0))
    assert over.alpha == 2.0 and over.build(1.0, 0).meta["alpha"] == 2.0


@pytest.mark.parametrize("gpus", [0, 12, 20])
def test_a_gpu_count_servers_cannot_hold_is_refused_not_rounded(gpus):
    with pytest.raises(InvalidArgumentError, match="multiple of 8"):
        scale_preset(gpus, 4)


def test_a_servegen_replay_starts_at_the_hour_asked_and_stays_within_the_data():
    w = scale_preset(8, 4, duration_s=600.0, start_hour=10.5).build(1.0, 0)
    assert w.meta["start_s"] == SERVEGEN_LAST_DAY_S + 10.5 * 3600
    with pytest.raises(InvalidArgumentError, match="past the end"):
        scale_preset(8, 4, duration_s=1200.0, start_hour=23.8)
    with pytest.raises(InvalidArgumentError, match="history days"):
        scale_preset(8, 4, duration_s=600.0, history_days=14).build(1.0, 0)
