"""Errors a user meets (a bad config.json, a checkpoint missing shards, a bad argument of the Python API) carry the
value or the numbers behind them and the fix, typed as warmserve errors. Found in review: each said only what was
wrong (e.g. "partial_rotary_factor below 1 is not supported", "index names shard(s) [...] that are not there"), and
three raised a bare ValueError on a caller's argument. A typed InvalidArgumentError is still a ValueError, so
``except ValueError`` keeps working."""

from __future__ import annotations

import json

import numpy as np
import pytest

from warmserve.engine.arch import UnsupportedModelError
from warmserve.engine.config import ModelConfig
from warmserve.engine.demo import DemoSpec, config_dict
from warmserve.engine.safetensors_header import CheckpointError, safetensors_files
from warmserve.errors import InvalidArgumentError


def _cfg(**fields) -> dict:
    return {**config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=1024)), **fields}


def _heads_not_multiple(tmp_path):
    ModelConfig.from_dict(_cfg(num_attention_heads=4, num_key_value_heads=3))


def _partial_rotary(tmp_path):
    ModelConfig.from_dict(_cfg(rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5}))


def _missing_shards(tmp_path):
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    (tmp_path / shards[0]).write_bytes(b"")
    safetensors_files(str(tmp_path))


def _empty_stop(tmp_path):
    from warmserve.sampling import SamplingParams

    SamplingParams(stop=["END", ""])


def _workload_model_not_served(tmp_path):
    from warmserve.sim.config import ServedModel
    from warmserve.sim.simulator import Simulator
    from warmserve.workload.request import Trace, Workload

    tr = Trace(["llama2-13b"], np.array([0.5]), np.zeros(1, np.int32), np.full(1, 64), np.full(1, 8))
    Simulator(Workload("w", tr, Trace.empty(["llama2-13b"]), 2.0), [ServedModel("llama2-7b")], "dedicated")


def _azure_kind(tmp_path):
    from warmserve.workload.azure import load_azure

    load_azure(kind="chat")


def _trace_columns(tmp_path):
    from warmserve.workload.request import Trace

    Trace(["m"], np.array([0.0, 1.0]), np.zeros(1, np.int32), np.full(2, 8), np.full(2, 8))


def _forecast_method(tmp_path):
    from warmserve.policy.forecast import ModelForecaster

    ModelForecaster("holt-winter", 144)


def _profile_model_new(tmp_path):
    from warmserve.sim.costmodel import SCHEMA, CostModel

    path = tmp_path / "mine.json"  # as `warmserve simulate --profile mine.json` reads it
    path.write_text(json.dumps({"schema": SCHEMA, "models": {"new": {
        "weight_bytes": 1e9, "tp": 1, "kv_bytes_per_token": 8, "prefill_s": {"base_s": 0.1}}}}))
    CostModel.from_profile(str(path))


def _negative_duration(tmp_path):
    from warmserve.policy.concurrency import concurrency_series

    concurrency_series([0.0, 1.0, 2.0], [1.0, -0.5, 1.0], 1.0)


def _policy_no_models(tmp_path):
    from warmserve.policy.registry import make_policy

    make_policy("warmserve", models=[])


def _load_source_not_contiguous(tmp_path):
    import torch

    from warmserve.memory.pool import _buffer_address

    _buffer_address(torch.zeros(4, 4).t())


# (reproducer, the error's type, what the message must say: the value or numbers, and the fix)
CASES = {
    "config-heads-not-multiple": (_heads_not_multiple, UnsupportedModelError,
                                  ["num_attention_heads 4", "num_key_value_heads 3", "fix config.json"]),
    "config-partial-rotary": (_partial_rotary, UnsupportedModelError,
                              ["partial_rotary_factor is 0.5", "serve a model that rotates whole heads"]),
    "checkpoint-missing-shard": (_missing_shards, CheckpointError,
                                 ["model-00002-of-00002.safetensors", "1 of 2 shards", "download the checkpoint"]),
    "sampling-empty-stop": (_empty_stop, InvalidArgumentError, ['stop[1] is ""', "drop the empty strings"]),
    "simulator-model-not-served": (_workload_model_not_served, InvalidArgumentError,
                                   ["['llama2-13b']", "served: ['llama2-7b']", "add them to the served models"]),
    "azure-kind": (_azure_kind, InvalidArgumentError, ["'chat'", "pass kind='conv'"]),
    "trace-columns": (_trace_columns, InvalidArgumentError,
                      ["arrival_s 2", "model 1", "give each column one entry per request"]),
    "profile-new-model": (_profile_model_new, InvalidArgumentError,
                          ["'new'", "lacks decode_step_s (or decode_table)", "add them to models.new", "llama2-7b"]),
    "forecast-method": (_forecast_method, InvalidArgumentError, ["'holt-winter'", "use one of", "'holt-winters'"]),
    "negative-duration": (_negative_duration, InvalidArgumentError,
                          ["durations_s[1] = -0.5 (of 3)", "its end minus its arrival"]),
    "policy-no-models": (_policy_no_models, InvalidArgumentError,
                         ["make_policy('warmserve') got models=[]", "pass the served models"]),
    "load-source-not-contiguous": (_load_source_not_contiguous, InvalidArgumentError,
                                   ["on cpu (not contiguous, shape (4, 4))", "t.contiguous().cpu()"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_users_error_is_typed_and_names_the_numbers_and_the_fix(case, tmp_path):
    reproduce, kind, said = CASES[case]
    with pytest.raises(kind) as ei:
        reproduce(tmp_path)
    assert isinstance(ei.value, ValueError)  # an `except ValueError` of a caller still catches it
    for s in said:
        assert s in str(ei.value), (s, str(ei.value))
