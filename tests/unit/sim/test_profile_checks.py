"""A cost profile's sections and values are checked as they are read (found in review: `"gpu": 5` and a fraction
written as a string were TypeErrors, `"prefill_s": 0.03` an AttributeError, a table point without its time an
IndexError, `h2d_bytes_per_s` 0 a ZeroDivisionError at the first load, and negative times were taken: an
`engine_init_s` of -30 s gave a first token before the request arrived)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.costmodel import SCHEMA, CostModel, GpuType

REPO = Path(__file__).resolve().parents[3]


def _load(**sections):
    return CostModel.from_profile({"schema": SCHEMA, **sections})


@pytest.mark.parametrize("sections, key", [
    ({"gpu": 5}, "gpu"),
    ({"gpu": {"hbm_achievable_fraction": "0.5"}}, "gpu.hbm_achievable_fraction"),
    ({"gpu": {"name": 7}}, "gpu.name"),
    ({"gpu": {"memory_bytes": True}}, "gpu.memory_bytes"),
    ({"gpu": {"memory_bytes": 10**400}}, "gpu.memory_bytes"),  # past float's range: a bare OverflowError before
    ({"engine_limits": {"max_running_seqs": 2.5}}, "engine_limits.max_running_seqs"),
    ({"engine_limits": {"max_batched_tokens": "8192"}}, "engine_limits.max_batched_tokens"),
    ({"activation_s": "abc"}, "activation_s"),
    ({"models": []}, "models"),
    ({"models": {"llama2-7b": 3}}, "models.llama2-7b"),
    ({"models": {"llama2-7b": {"prefill_s": 0.03}}}, "models.llama2-7b.prefill_s"),
    ({"models": {"llama2-7b": {"decode_step_s": {"base": 0.01}}}}, "models.llama2-7b.decode_step_s"),
    ({"models": {"llama2-7b": {"decode_tabel": [[1, 0.01]]}}}, "models.llama2-7b"),
    ({"models": {"llama2-7b": {"decode_table": [[16]]}}}, "models.llama2-7b.decode_table"),
    ({"models": {"llama2-7b": {"decode_table": []}}}, "models.llama2-7b.decode_table"),
    ({"models": {"llama2-7b": {"decode_table": 0.02}}}, "models.llama2-7b.decode_table"),
    ({"models": {"llama2-7b": {"prefill_table": [[16, "0.02"]]}}}, "models.llama2-7b.prefill_table"),
    ({"models": {"llama2-7b": {"prefill_table": [[256, 0.1], [16, 0.02]]}}}, "models.llama2-7b.prefill_table"),
    ({"models": {"llama2-7b": {"tp": "2"}}}, "models.llama2-7b.tp"),
    ({"models": {"llama2-7b": {"kv_bytes_per_token": 1.5}}}, "models.llama2-7b.kv_bytes_per_token"),
])
def test_a_malformed_profile_is_a_typed_error_naming_its_key(sections, key):
    with pytest.raises(InvalidArgumentError, match=key.replace(".", r"\.")):
        _load(**sections)


@pytest.mark.parametrize("sections, key", [
    ({"engine_init_s": -30.0}, "engine_init_s"),
    ({"kv_map_s_per_gib": -100.0}, "kv_map_s_per_gib"),
    ({"activation_s": -5.0}, "activation_s"),
    ({"fast_load_bytes_per_s": -32e9}, "fast_load_bytes_per_s"),
    ({"load_fixed_s": float("nan")}, "load_fixed_s"),
    ({"tp_init_s": float("inf")}, "tp_init_s"),
    ({"gpu": {"h2d_bytes_per_s": 0}}, "gpu.h2d_bytes_per_s"),
    ({"gpu": {"compute_scale": -1.0}}, "gpu.compute_scale"),
    ({"gpu": {"memory_bytes": -1}}, "gpu.memory_bytes"),
    ({"gpu": {"pool_fraction": 1.5}}, "gpu.pool_fraction"),
    ({"gpu": {"pool_fraction": 0}}, "gpu.pool_fraction"),
    ({"engine_limits": {"max_model_len_tokens": 0}}, "engine_limits.max_model_len_tokens"),
    ({"models": {"llama2-7b": {"weight_bytes": 0}}}, "models.llama2-7b.weight_bytes"),
    ({"models": {"llama2-7b": {"tp": 0}}}, "models.llama2-7b.tp"),
    ({"models": {"llama2-7b": {"kv_bytes_per_token": 0}}}, "models.llama2-7b.kv_bytes_per_token"),
    ({"models": {"llama2-7b": {"prefill_s": {"base_s": -0.01}}}}, "models.llama2-7b.prefill_s.base_s"),
    ({"models": {"llama2-7b": {"decode_step_s": {"per_seq_s": -1e-3}}}}, "models.llama2-7b.decode_step_s.per_seq_s"),
    ({"models": {"llama2-7b": {"decode_table": [[1, -0.01]]}}}, "models.llama2-7b.decode_table"),
])
def test_a_value_out_of_range_is_refused_naming_key_value_and_fix(sections, key):
    with pytest.raises(InvalidArgumentError, match=key.replace(".", r"\.")) as e:
        _load(**sections)
    assert "must be" in str(e.value) and "warmserve calibrate" in str(e.value)


def test_every_committed_profile_loads_and_one_negative_time_in_it_is_refused():
    paths = [*sorted((REPO / "bench" / "replay").glob("profile_cpu*.json")),
             *sorted((REPO / "bench" / "simulate" / "issue11" / "profiles").glob("*.json"))]
    assert len(paths) >= 5
    for path in paths:
        d = json.loads(path.read_text())
        CostModel.from_profile(str(path))
        with pytest.raises(InvalidArgumentError, match="kv_map_s_per_gib"):
            CostModel.from_profile({**d, "kv_map_s_per_gib": -abs(d.get("kv_map_s_per_gib", 0.0)) - 1e-9})


def test_the_bounds_themselves_are_taken_and_just_past_them_refused():
    cm = _load(gpu={"pool_fraction": 1.0, "host_cores": 0, "hbm_achievable_fraction": 1.0},
               engine_init_s=0.0, fast_load_bytes_per_s=0, activation_s=0,
               models={"llama2-7b": {"decode_table": [[1, 0.0], [2, 0.01]], "prefill_s": {"base_s": 0.0}},
                       "tiny": {"weight_bytes": 1e6, "tp": 1.0, "kv_bytes_per_token": 64.0,
                                "prefill_table": [[0, 0.01]], "decode_step_s": {"base_s": 0.002}}})
    assert cm.engine_init_s == 0.0 and cm.cost("tiny").tp == 1 and isinstance(cm.cost("tiny").tp, int)
    for past in ({"gpu": {"pool_fraction": 1.0 + 1e-9}}, {"engine_init_s": -1e-9},
                 {"gpu": {"host_cores": -1e-9, "pool_fraction": 0.5}}):
        with pytest.raises(InvalidArgumentError, match="must be"):
            _load(**past)


@pytest.mark.parametrize("key, points", [("decode_table", [[1, 0.0], [1, 0.01]]),
                                         ("prefill_table", [[16, 0.02], [512, 0.10], [512, 0.11]])])
def test_a_table_repeating_an_x_is_refused(key, points):
    # found in review: a repeated x was taken and extrapolated over a 1e-12 gap (decode_step_s(batch=2) = 1e10 s)
    with pytest.raises(InvalidArgumentError, match=rf"models\.llama2-7b\.{key}.*strictly ascending") as e:
        _load(models={"llama2-7b": {key: points}})
    assert "warmserve calibrate" in str(e.value)


def test_a_partial_linear_section_overrides_only_the_part_it_names():
    # found in review: the part left out was set to 0 (prefill_s(1024) of llama2-7b fell from 35 ms to 3.5 ms)
    base = CostModel().models["llama2-7b"]
    c = _load(models={"llama2-7b": {"prefill_s": {"base_s": 0.005}}}).models["llama2-7b"]
    assert c.prefill_base_s == 0.005 and c.prefill_per_token_s == base.prefill_per_token_s
    c = _load(models={"llama2-7b": {"decode_step_s": {"per_seq_s": 0.001}}}).models["llama2-7b"]
    assert c.decode_per_seq_s == 0.001 and c.decode_base_s == base.decode_base_s
    # a new model has nothing to keep: the part left out is 0
    c = _load(models={"tiny": {"weight_bytes": 1e6, "tp": 1, "kv_bytes_per_token": 64,
                               "prefill_s": {"per_token_s": 1e-5},
                               "decode_step_s": {"per_seq_s": 1e-3}}}).models["tiny"]
    assert (c.prefill_base_s, c.prefill_per_token_s, c.decode_base_s, c.decode_per_seq_s) == (0.0, 1e-5, 0.0, 1e-3)


@pytest.mark.parametrize("kw", [dict(h2d_bytes_per_s=0), dict(compute_scale=-1.0), dict(memory_bytes=float("nan")),
                                dict(pool_fraction=0.0)])
def test_the_python_api_refuses_the_same_gpu_values(kw):
    with pytest.raises(InvalidArgumentError, match=f"GpuType\\.{next(iter(kw))}"):
        GpuType(**kw)


@pytest.mark.parametrize("kw", [dict(engine_init_s=-30.0), dict(kv_map_s_per_gib=-100.0), dict(activation_s=-1.0)])
def test_the_python_api_refuses_negative_times(kw):
    with pytest.raises(InvalidArgumentError, match=f"CostModel\\.{next(iter(kw))}"):
        CostModel(**kw)
