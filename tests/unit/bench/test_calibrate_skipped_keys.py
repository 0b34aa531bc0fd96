"""calibrate's context keys left out of the profile (found in review: a noisy long-context decode run left
gpu.hbm_bytes_per_s and its pair out, said only by their absence, and the simulator ran on H100 figures): a line
names each key, the noise figure and the default the simulator uses, and the profile records them under "skipped"."""

import json

import pytest

from warmserve import cli
from warmserve.bench import calibrate as C
from warmserve.sim.costmodel import CostModel

KEYS = ["gpu.hbm_bytes_per_s", "gpu.hbm_achievable_fraction", "gpu.weight_read_bytes_per_s"]
#: the long step ran 0.6 ms faster than the short one: noise hid the context's cost
NOISY = {"batch": 4, "short_context_tokens": 16, "context_tokens": 1024, "short_step_s": 0.0177, "step_s": 0.0171}


def _model(**measured):
    return {"weight_bytes": 75e6, "tp": 1, "kv_bytes_per_token": 8192,
            "prefill_table": [[16, 0.02], [256, 0.2]], "decode_table": [[1, 0.010], [4, 0.0177]],
            "measured": {"load_s": 0.04, "activation_s": 0.002, "cold_start_first_token_s": 0.1,
                         "prewarmed_first_token_s": 0.03, **measured}}


def test_a_noisy_context_run_records_each_left_out_key_with_the_noise_figure_and_the_default():
    prof = C.build_profile({"llama-20m": _model(decode_context=dict(NOISY))}, 1 << 30, 1)
    assert "hbm_bytes_per_s" not in prof["gpu"]
    gpu = CostModel().gpu
    assert [e["key"] for e in prof["skipped"]] == KEYS
    assert [e["simulator_uses"] for e in prof["skipped"]] == [gpu.hbm_bytes_per_s, gpu.hbm_achievable_fraction,
                                                              gpu.weight_read_bytes_per_s]
    assert all("17.10 ms at 1024 tokens" in e["why"] and "17.70 ms at 16" in e["why"] and "-0.60 ms" in e["why"]
               for e in prof["skipped"])
    # the simulator reads the profile as before, on those defaults
    assert CostModel.from_profile(prof).gpu.hbm_bytes_per_s == gpu.hbm_bytes_per_s


def test_no_long_context_run_is_recorded_too_and_a_measured_one_skips_nothing():
    bare = C.build_profile({"llama-20m": _model()}, 1 << 30, 1)
    assert [e["key"] for e in bare["skipped"]] == KEYS and "--decode-context-tokens 0" in bare["skipped"][0]["why"]
    slower = dict(NOISY, step_s=0.0358)
    assert C.build_profile({"llama-20m": _model(decode_context=slower)}, 1 << 30, 1)["skipped"] == []


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from warmserve.engine.demo import write_demo_models

    d = tmp_path_factory.mktemp("demo")
    write_demo_models(str(d), ["llama-20m"])
    return str(d)


def test_calibrate_prints_one_line_naming_each_left_out_key_why_and_the_default(tmp_path, demo_dir, monkeypatch,
                                                                               capsys):
    monkeypatch.setattr(C, "measure_model", lambda *a, **k: _model(decode_context=dict(NOISY)))
    out = tmp_path / "p.json"
    rc = cli.main(["calibrate", "--out", str(out), "--models", "llama-20m", "--demo-dir", demo_dir,
                   "--no-fresh-engine"])
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "out of the profile" in x]
    assert rc == 0 and len(line) == 1, err
    assert all(k in line[0] for k in KEYS) and "-0.60 ms" in line[0] and "H100-80GB defaults" in line[0]
    assert "3.35e+12" in line[0] and "Fix:" in line[0]
    assert [e["key"] for e in json.loads(out.read_text())["skipped"]] == KEYS
