"""A simulated request reserves KV blocks for prompt + output - 1 tokens, as the live engine does at admission
(``Engine.add_request``: the last token sampled is never fed back, so it never has K/V). Found in review: the
simulator reserved prompt + output, one block more than live whenever that total was one past a block boundary,
so a request the live engine serves was refused in the simulator, and full batches held a block too many each."""

import math

import numpy as np

from warmserve.geometry import KV_BLOCK_TOKENS, blocks_for_tokens
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, GpuType
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

MODEL = "llama2-7b"
#: a 16 GB GPU: its pool (90%, 14.4 GB) holds the 13.5 GB shard and 6 KV blocks of 256 tokens
#: (test_engine_refuses_oversized.py derives the 6 by hand)
SMALL_GPU = GpuType(memory_bytes=16e9)
CAP_BLOCKS = 6


def _sim(prompts, outputs):
    n = len(prompts)
    tr = Trace([MODEL], np.arange(n, dtype=float), np.zeros(n, np.int32), np.asarray(prompts), np.asarray(outputs))
    w = Workload("hand", tr, Trace.empty([MODEL]), float(n) + 1.0)
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=600.0, warmup_s=0.0, shared_search=False)
    return Simulator(w, [ServedModel(MODEL, MODEL)], "dedicated", config=config, cost=CostModel(gpu=SMALL_GPU))


def test_blocks_are_those_of_prompt_plus_output_minus_one():
    prompts, outputs = [255, 256, 1, 0], [1, 1, 256, 1]
    sim = _sim(prompts, outputs)
    # 255 + 1 - 1 = 255 tokens: 1 block (2 before); 256: 1; 256: 1 (2 before); a 0-token prompt still holds 1
    assert sim.blocks == [1, 1, 1, 1]
    assert [blocks_for_tokens(p + o) for p, o in zip(prompts, outputs)] == [1, 2, 2, 1]


def test_a_request_filling_the_cache_to_its_last_token_is_served():
    # 1024 + 513 tokens: its K/V is 1536 tokens = the 6 blocks the instance holds, as live admits it; the
    # simulator refused it before (7 blocks of prompt + output)
    prompt, output = 4 * KV_BLOCK_TOKENS, 2 * KV_BLOCK_TOKENS + 1
    assert blocks_for_tokens(prompt + output) == CAP_BLOCKS + 1 and blocks_for_tokens(prompt + output - 1) == 6
    sim = _sim([prompt], [output])
    s = sim.run().summary
    inst = next(iter(sim.state.instances.values()))
    assert inst.kv_blocks_total == CAP_BLOCKS
    assert not math.isnan(sim.finish[0])
    assert s["refused"] == 0 and s["completed"] == 1
