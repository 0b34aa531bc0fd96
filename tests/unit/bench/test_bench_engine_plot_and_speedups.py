"""`warmserve bench engine`: the decode panel draws the batch sizes measured (found in review: it drew batch 16 and
1 only, an empty log-scale panel for --batches 2 4), and a row's speedups are the ratios of the tokens/s it shows
(they were the median of per-pair ratios beside per-engine medians, and could point the other way)."""

from __future__ import annotations

import argparse
import warnings

import pytest

from warmserve.bench import engine as bench_engine
from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    """A tiny checkpoint measured for real at batches 2 and 4, three repeats, against transformers."""
    cfg = config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=1024), "float32")  # ttft prompts ids < 1000
    path = write_checkpoint(str(tmp_path_factory.mktemp("bench-engine-plot")), "tiny", cfg, dtype="float32",
                            tokenizer=build_tokenizer(1024))
    p = argparse.ArgumentParser()
    bench_engine.add_arguments(p)
    args = p.parse_args(["--batches", "2", "4", "--repeats", "3", "--prompt-tokens", "8", "--new-tokens", "6",
                         "--no-new-process"])
    return {"machine": bench_engine._machine("cpu", 1), "models": {"tiny": bench_engine.measure_model("tiny", path,
                                                                                                      args)}}


def test_speedups_are_the_ratios_of_the_rates_shown(measured):
    r = measured["models"]["tiny"]
    for b in (2, 4):
        ours, hf = r[f"ours_b{b}"], r[f"hf_b{b}"]
        assert r[f"decode_speedup_b{b}"] == pytest.approx(ours["decode_tok_s"] / hf["decode_tok_s"], rel=1e-12)
        assert r[f"prefill_speedup_b{b}"] == pytest.approx(ours["prefill_tok_s"] / hf["prefill_tok_s"], rel=1e-12)


def test_the_decode_panel_draws_the_batches_measured(measured, tmp_path):
    png = tmp_path / "eng.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty log-scale panel warns that it has no positive values
        bench_engine.plot(measured, str(png))
    assert png.stat().st_size > 0
    bars = bench_engine.decode_bars(measured)
    assert [label for label, _ in bars] == ["warmserve b4", "transformers b4", "warmserve b2", "transformers b2"]
    r = measured["models"]["tiny"]
    assert [v for _, v in bars] == [[r["ours_b4"]["decode_tok_s"]], [r["hf_b4"]["decode_tok_s"]],
                                    [r["ours_b2"]["decode_tok_s"]], [r["hf_b2"]["decode_tok_s"]]]
