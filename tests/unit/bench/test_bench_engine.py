"""`warmserve bench engine` on a tiny bf16 checkpoint: transformers runs in the dtype our engine loaded (it ran in
float32 against our bf16, so the H200's speedups compared unlike bytes per weight), and the timed cold loads come
after an untimed one (the process's first load paid first-use costs the prewarmed side never pays)."""

from __future__ import annotations

import argparse

import pytest
import torch

import warmserve.engine
from warmserve.bench import engine as bench_engine
from warmserve.engine import load_model
from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
from warmserve.memory import PagePool


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory) -> str:
    cfg = config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=1024), "bfloat16")  # ttft_cases prompts ids < 1000
    return write_checkpoint(str(tmp_path_factory.mktemp("bench-engine")), "tiny-bf16", cfg, dtype="bfloat16",
                            tokenizer=build_tokenizer(1024))


@pytest.fixture
def pool():
    with PagePool(64 << 20, backend="host") as p:
        yield p


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench_engine.add_arguments(p)
    return p.parse_args(["--batches", "1", "--repeats", "1", "--prompt-tokens", "8", "--new-tokens", "4",
                         "--no-new-process", *argv])


def test_the_transformers_baseline_loads_in_the_dtype_our_engine_loaded(bf16_checkpoint, pool):
    lm = load_model(bf16_checkpoint, pool).wait()
    try:
        hf = bench_engine._hf_model(bf16_checkpoint, "cpu")
        assert lm.dtype == torch.bfloat16
        assert {p.dtype for p in hf.parameters()} == {lm.dtype}
    finally:
        lm.close()


def test_a_model_s_figures_record_both_engines_dtype(bf16_checkpoint):
    r = bench_engine.measure_model("tiny-bf16", bf16_checkpoint, _args())
    assert r["dtype_ours"] == r["dtype_transformers"] == "bfloat16"
    assert r["decode_speedup_b1"] > 0 and r["prefill_speedup_b1"] > 0 and r["repeats_b1"] == 1


def test_timed_cold_loads_follow_one_untimed_load_and_first_token(bf16_checkpoint, pool, monkeypatch):
    loads = []
    real = warmserve.engine.load_model

    def counting_load(*a, **kw):
        # each earlier load is closed before the next begins: the warm-up leaves nothing resident
        assert all(lm.closed for lm in loads), "a load began while an earlier one was still resident"
        job = real(*a, **kw)
        loads.append(job.wait())
        return job

    monkeypatch.setattr(warmserve.engine, "load_model", counting_load)
    out = bench_engine.ttft_cases(bf16_checkpoint, "tiny-bf16", pool, 2, 1, "cpu", new_process=False)
    assert len(loads) == 3, f"{len(loads)} loads for 2 repeats: the first one of the process must be untimed"
    assert len(out["ttft_cold_load_s_each"]) == 2 and len(out["ttft_prewarmed_s_each"]) == 4
    assert out["ttft_first_cold_load_s_excluded"] > 0
    assert out["ttft_cold_load_s"] == pytest.approx(sum(out["ttft_cold_load_s_each"]) / 2)  # the warm-up left out
