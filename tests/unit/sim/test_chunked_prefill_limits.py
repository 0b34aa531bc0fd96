"""Chunked prefill's token budget against the engine's sequence limit (found in review: --chunked-prefill-tokens 8
was taken, though vLLM refuses max_num_batched_tokens < max_num_seqs; with the batch full each step left one prompt
token, so a late 1000-token prompt took 1000 steps), and under --engine-model fluid, which has no token budget and
ignored it without a word."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from warmserve import cli
from warmserve.errors import InvalidArgumentError
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

MODEL = "llama2-7b"


def _sim(cost=None, **cfg):
    n = 2
    tr = Trace([MODEL], np.asarray([0.0, 1.0]), np.zeros(n, np.int32), np.full(n, 100), np.full(n, 4))
    w = Workload("hand", tr, Trace.empty([MODEL]), 2.0)
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=60, warmup_s=0.0, **cfg)
    return Simulator(w, [ServedModel(MODEL)], "dedicated", config=config, cost=cost or CostModel())


@pytest.mark.parametrize("cfg, limit", [(dict(chunked_prefill_tokens=8), 256),
                                        (dict(chunked_prefill_tokens=255), 256),
                                        (dict(chunked_prefill_tokens=64, max_num_seqs=128), 128)])
def test_a_chunk_below_the_engines_max_sequences_is_refused_naming_both(cfg, limit):
    with pytest.raises(InvalidArgumentError, match="chunked_prefill_tokens .*max_num_seqs") as e:
        _sim(**cfg)
    assert e.value.chunked_prefill_tokens == cfg["chunked_prefill_tokens"] and e.value.max_num_seqs == limit


def test_the_limit_is_max_num_seqs_itself_and_follows_the_profiles_engine_limits():
    for cfg in (dict(chunked_prefill_tokens=256), dict(chunked_prefill_tokens=16, max_num_seqs=16), dict()):
        assert _sim(**cfg).run().summary["completed"] == 2
    cost = replace(CostModel(), limits=replace(CostModel().limits, max_running_seqs=32))
    assert _sim(cost=cost, chunked_prefill_tokens=32).run().summary["completed"] == 2
    with pytest.raises(InvalidArgumentError, match="max_num_seqs 32"):
        _sim(cost=cost, chunked_prefill_tokens=31)


def test_the_replay_twins_engine_settings_are_within_the_limit():
    """The CPU replay twin runs chunked prefill with the live engine's 2048-token steps and the policy's B
    sequences (32): taken; the same twin with a step below B is not."""
    from warmserve.bench.replay import twin_config

    cfg = twin_config(2, 60.0, 30.0)
    assert cfg.chunked_prefill_tokens >= cfg.max_num_seqs > 0
    assert _sim(**{k: getattr(cfg, k) for k in ("max_num_seqs", "chunked_prefill_tokens")}).run() \
        .summary["completed"] == 2
    with pytest.raises(InvalidArgumentError, match="below max_num_seqs"):
        _sim(max_num_seqs=cfg.max_num_seqs, chunked_prefill_tokens=cfg.max_num_seqs - 1)


def test_fluid_with_chunked_prefill_is_refused_in_the_python_api():
    with pytest.raises(InvalidArgumentError, match="fluid"):
        SimConfig(engine_model="fluid", chunked_prefill_tokens=512)
    assert SimConfig(engine_model="fluid").chunked_prefill_tokens == 0


@pytest.mark.parametrize("flags, says", [
    (["--engine-model", "fluid", "--chunked-prefill-tokens", "512"],
     "chunked_prefill_tokens 512 (--chunked-prefill-tokens) with engine_model 'fluid' (--engine-model fluid)"),
    (["--chunked-prefill-tokens", "64"],
     "chunked_prefill_tokens 64 (--chunked-prefill-tokens) is below max_num_seqs 256"),
    (["--chunked-prefill-tokens", "-1"], "--chunked-prefill-tokens -1"),
])
def test_the_cli_refuses_them_in_one_line(flags, says, capsys):
    rc = cli.main(["simulate", "--workload", "paper-conv", "--models", "1", "--gpus", "8", "--duration-s", "30",
                   "--policy", "warmserve", "--no-search", "--quiet", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
