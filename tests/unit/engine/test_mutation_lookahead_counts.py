"""DecodeLookahead's counters (engine/lookahead.py), found by mutation testing: for one greedy request alone, every
decode step after the first uses the replay its predecessor launched, and every decode step launches one. Run on
the CPU with each replay eager, as test_decode_lookahead.py does."""

from __future__ import annotations

import torch

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.memory import kernels

from test_decode_lookahead import EagerGraphs
from test_graph_buckets import _contract_paged_attention, _contract_write_kv


def test_a_lone_greedy_request_hits_every_replay_but_the_first(demo_dir, pool, monkeypatch):
    """A 3-token prompt and 6 tokens (all in the prompt's first KV block): the prefill gives token 1, then 5
    decode steps; each launches the next step's replay (5 launched), and each but the first uses the one launched
    before it (4 hits). The counters start at 0."""
    monkeypatch.setattr(kernels, "write_kv", _contract_write_kv)
    monkeypatch.setattr(kernels, "paged_attention", _contract_paged_attention)
    lm = load_model(demo_dir["llama-20m"], pool).wait()
    try:
        with Engine(lm, max_num_seqs=8, target_free_blocks=1) as eng:
            eng.graphs = EagerGraphs(eng)
            eng.decode_lookahead = True
            prompt = torch.randint(0, lm.config.vocab_size, (3,), generator=torch.Generator().manual_seed(3)).tolist()
            eng.add_request("a", prompt, SamplingParams(max_tokens=6, ignore_eos=True))
            out: list[int] = []
            while eng.has_unfinished():
                for o in eng.step():
                    out.extend(o.token_ids)
            la = eng._ahead
    finally:
        lm.close()
    assert len(out) == 6
    assert (la.hits, la.launched) == (4, 5)
