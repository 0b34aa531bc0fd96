"""`warmserve calibrate` after a review of its fits: a load line with a negative intercept is refitted through the
origin (its bandwidth was the intercepted line's, overstating loads 1.6-2.5x), a CPU profile carries the measured
cost of reading context (the simulator read KV at the H100's rate, so its twin did not slow with context as the live
CPU worker did), and a --memory-bytes too small for the largest model is refused before measuring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from warmserve import cli
from warmserve.bench import calibrate as C
from warmserve.geometry import PAGE_BYTES
from warmserve.sim.costmodel import CostModel


def _model(weight_bytes=75e6, load_s=0.04, **measured):
    return {"weight_bytes": weight_bytes, "tp": 1, "kv_bytes_per_token": 8192,
            "prefill_table": [[16, 0.02], [256, 0.2]], "decode_table": [[1, 0.010], [4, 0.0177]],
            "measured": {"load_s": load_s, "activation_s": 0.002, **measured}}


def test_a_negative_intercept_is_refitted_through_the_origin():
    pts = [(1e8, 0.02), (3e8, 0.1)]
    fixed, bw = C.fit_load(pts)
    x, y = np.array(pts).T
    # least squares of seconds = bytes / bw: the bandwidth the line through the origin gives
    assert fixed == 0.0 and bw == pytest.approx((x * x).sum() / (x * y).sum())
    predicted = x / bw  # 32 and 96 ms: before, 40 and 120 ms for the 20 and 100 ms measured
    assert np.all(np.abs(predicted - y) < 0.015), predicted
    sse = lambda b: ((x / b - y) ** 2).sum()  # noqa: E731
    assert sse(bw) < min(sse(bw * 1.01), sse(bw / 1.01))
    # the fresh engine's fit is the same line
    per_model = {"a": _model(1e8), "b": _model(3e8, load_s=0.09)}
    prof = C.build_profile(per_model, 1 << 30, 1, {"init_s": 2.0, "init_s_runs": [2.0],
                                                    "load_s": {"a": 0.02, "b": 0.1}})
    assert prof["engine_init_s"] == pytest.approx(2.0) and prof["fast_load_bytes_per_s"] == pytest.approx(bw)


def test_a_cpu_profile_reproduces_the_measured_cost_of_context():
    # the reviewer's llama-20m figures: 4 sequences decode in 17.7 ms at 16 tokens of context, 35.8 ms at 1500
    ctx = {"batch": 4, "short_context_tokens": 16, "context_tokens": 1500, "short_step_s": 0.0177,
           "step_s": 0.0358}
    prof = C.build_profile({"llama-20m": _model(decode_context=ctx)}, 1 << 30, 1)
    assert prof["gpu"]["hbm_achievable_fraction"] == 1.0
    cm = CostModel.from_profile(prof)
    c = cm.cost("llama-20m")
    extra_s = cm.decode_step_s(c, 4, 4 * 1500) - cm.decode_step_s(c, 4, 4 * 16)
    assert extra_s == pytest.approx(0.0358 - 0.0177, rel=1e-9)
    # the context-free step stays the measured table's: the weight floor never takes it over on a CPU
    assert cm.decode_step_s(c, 1, 0) == pytest.approx(0.010) and cm.decode_step_s(c, 4, 0) == pytest.approx(0.0177)
    # a profile measured without the long run (--decode-context-tokens 0) keeps the defaults, as before
    bare = C.build_profile({"llama-20m": _model()}, 1 << 30, 1)
    assert "hbm_bytes_per_s" not in bare["gpu"]


def test_the_long_context_run_is_checked_against_each_model_s_context(tmp_path, capsys):
    rc = cli.main(["calibrate", "--out", str(tmp_path / "p.json"), "--models", "llama-20m",
                   "--decode-context-tokens", "3000"])
    err = capsys.readouterr().err
    assert rc == 2 and "--decode-context-tokens" in err and "2048" in err, err


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from warmserve.engine.demo import write_demo_models

    d = tmp_path_factory.mktemp("demo")
    write_demo_models(str(d), ["llama-20m"])
    return str(d)


def test_a_memory_budget_below_the_largest_model_and_one_page_is_refused(tmp_path, demo_dir, monkeypatch, capsys):
    def never(*a, **k):
        raise AssertionError("measure_model ran: the check came too late")

    monkeypatch.setattr(C, "measure_model", never)
    out = tmp_path / "p.json"
    rc = cli.main(["calibrate", "--out", str(out), "--models", "llama-20m", "--demo-dir", demo_dir,
                   "--memory-bytes", str(64 << 20), "--no-fresh-engine"])
    err = capsys.readouterr().err
    weights = max(p.stat().st_size for p in Path(demo_dir, "llama-20m").glob("*.safetensors"))
    assert rc == 2 and "--memory-bytes" in err and str(weights + PAGE_BYTES) in err, err
    assert not out.exists()
