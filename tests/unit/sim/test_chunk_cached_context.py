"""A prefill chunk after the first attends over the prompt's cached tokens too: with a measured (superlinear)
table it costs the table's growth from its offset to its end, not a fresh prefill of its own length (found in
review: a 2000-token prompt in 256-token chunks cost 4.99 s against 8.25 s unchunked on the replay's profile)."""

from dataclasses import replace

import numpy as np
import pytest

from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

MODEL = "llama2-7b"
TABLE = ((16, 0.02), (64, 0.035), (256, 0.1), (512, 0.25), (1024, 0.6))  # superlinear, as a CPU's measured one


def _first_token_s(prompt: int, chunk_tokens: int, table=TABLE) -> tuple[float, CostModel]:
    base = CostModel()
    cost = replace(base, models={**base.models, MODEL: replace(base.cost(MODEL), prefill_table=table)},
                   kv_map_s_per_gib=0.0)  # the prompt's KV pages mapped for free, to isolate the steps
    tr = Trace([MODEL], np.zeros(1), np.zeros(1, np.int32), np.full(1, prompt), np.full(1, 2))
    config = SimConfig(n_servers=1, gpus_per_server=1, drain_s=600, warmup_s=0.0,
                       chunked_prefill_tokens=chunk_tokens)
    sim = Simulator(Workload("hand", tr, Trace.empty([MODEL]), 1.0), [ServedModel(MODEL)], "dedicated",
                    config=config, cost=cost)
    sim.run()
    ready = 13.5e9 / 32e9 + 0.1  # warm engine: load at 32 GB/s + activation
    return sim.first[0] - ready, cost


def test_chunks_of_one_prompt_cost_the_tables_growth_over_the_cached_context():
    t, cost = _first_token_s(1000, 256)
    c = cost.cost(MODEL)
    fixed = cost.prefill_fixed_part_s(c)
    assert fixed == pytest.approx(0.015)
    # four steps of 256, 256, 256 and 232 tokens, nothing decoding: each pays the fixed part once
    by_hand = (cost.prefill_s(c, 256) + sum(fixed + cost.prefill_s(c, e) - cost.prefill_s(c, e - 256)
                                            for e in (512, 768))
               + fixed + cost.prefill_s(c, 1000) - cost.prefill_s(c, 768))
    assert t == pytest.approx(by_hand, rel=1e-12)
    assert t == pytest.approx(cost.prefill_s(c, 1000) + 3 * fixed, rel=1e-12)
    unchunked, _ = _first_token_s(1000, 0)
    assert unchunked == pytest.approx(cost.prefill_s(c, 1000), rel=1e-12)
    assert unchunked < t  # chunking costs the fixed part per extra step, never less than one pass


def test_linear_prefill_is_unchanged_by_the_offset():
    """The paper presets' linear form: a chunk's growth over its offset is its own per-token part."""
    t, cost = _first_token_s(1000, 256, table=())
    c = cost.cost(MODEL)
    assert t == pytest.approx(3 * cost.prefill_s(c, 256) + cost.prefill_s(c, 232), rel=1e-12)
