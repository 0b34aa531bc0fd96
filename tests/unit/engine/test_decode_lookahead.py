"""Decode lookahead (engine/lookahead.py) on the CPU: an engine that launches each greedy decode step's successor
before reading its tokens gives the tokens of one that does not, while requests finish, arrive, are aborted,
sample at a temperature and cross a KV block boundary. The replays are run eagerly (``EagerGraphs``: what a graph
captures, decode_body over the engine's cache, the kernels replaced by their torch contracts as in
test_graph_buckets.py); the CUDA graph replay itself is tests/gpu's, and the time it saves bench/gpu_graphs.py
part 10's."""

from __future__ import annotations

import numpy as np
import torch

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.graphs import HEAD_COLUMNS, bucket_for, decode_body, pack_decode_inputs, table_width
from warmserve.engine.lookahead import DecodeLookahead
from warmserve.memory import kernels

from test_graph_buckets import _contract_paged_attention, _contract_write_kv


class EagerGraphs:
    """DecodeGraphs' launch, output and run for one engine, each replay run at once (module docstring)."""

    def __init__(self, eng, buckets=(1, 2, 4, 8)):
        kv = eng.kv
        self.eng, self.device, self.buckets, self.max_batch = eng, eng.device, buckets, buckets[-1]
        self.T, self.rpb = kv.block_tokens, kv.rows_per_block
        self.width = table_width(eng.max_context, kv.total_blocks, self.T)
        self.host = np.zeros((self.max_batch, HEAD_COLUMNS + self.width), dtype=np.int32)
        self._out: dict[int, torch.Tensor] = {}
        self.launches = 0

    def launch(self, decodes, tokens=None) -> int:
        b = bucket_for(len(decodes), self.buckets)
        pack_decode_inputs(self.host, decodes, b, self.T, self.rpb)
        packed = torch.from_numpy(self.host[:b].copy())
        if tokens is not None:
            packed[:len(decodes), 0] = tokens.to(torch.int32)
        with torch.inference_mode():
            self._out[b] = decode_body(self.eng.model, packed, self.eng.kv.rows, self.eng.kv.layer_offsets,
                                       max_len=self.width * self.T, rows_per_block=self.rpb, block_tokens=self.T)
        self.launches += 1
        return b

    def output(self, b: int) -> torch.Tensor:
        return self._out[b]

    def run(self, decodes) -> torch.Tensor:
        return self.output(self.launch(decodes))[:len(decodes)]


def _prompt(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _serve(lm, lookahead: bool):
    """Tokens by request of one scripted run, and the engine's lookahead (None when it made none)."""
    greedy = dict(ignore_eos=True)
    with Engine(lm, max_num_seqs=8, target_free_blocks=1) as eng:
        eng.graphs = EagerGraphs(eng)
        eng.decode_lookahead = lookahead
        v = lm.config.vocab_size
        for rid, n, m in (("a", 250, 12), ("b", 40, 20), ("c", 3, 6)):  # a crosses position 255 -> 256
            eng.add_request(rid, _prompt(n, v, len(rid) + n), SamplingParams(max_tokens=m, **greedy))
        toks: dict[str, list[int]] = {}
        for i in range(60):
            if i == 4:  # arrivals mid-run: a greedy one, and one that samples (its steps run the plain path)
                eng.add_request("d", _prompt(30, v, 4), SamplingParams(max_tokens=9, **greedy))
                eng.add_request("e", _prompt(7, v, 5), SamplingParams(max_tokens=5, temperature=1.0, seed=7,
                                                                       ignore_eos=True))
            if i == 12:
                eng.add_request("f", _prompt(20, v, 6), SamplingParams(max_tokens=10, **greedy))
            if i == 15:
                eng.abort("f")
            for o in eng.step():
                toks.setdefault(o.request_id, []).extend(o.token_ids)
            if not eng.has_unfinished():
                break
        assert not eng.has_unfinished()
        return toks, eng._ahead


def test_lookahead_gives_the_tokens_of_plain_replays(demo_dir, pool, monkeypatch):
    monkeypatch.setattr(kernels, "write_kv", _contract_write_kv)
    monkeypatch.setattr(kernels, "paged_attention", _contract_paged_attention)
    lm = load_model(demo_dir["llama-20m"], pool).wait()
    try:
        plain, none = _serve(lm, False)
        ahead, la = _serve(lm, True)
    finally:
        lm.close()
    assert none is None
    assert ahead == plain
    assert {r: len(t) for r, t in plain.items()} == {"a": 12, "b": 20, "c": 6, "d": 9, "e": 5, "f": len(plain["f"])}
    # Used where the batch went on as it was; launched and not used where it changed (a request finished,
    # arrived, was aborted), and not launched where a's next position needed a new block.
    assert la.hits >= 5 and la.launched > la.hits  # 9 of 13 when written


def _chunk(params, output_len=0):
    class Seq:
        pass

    class Chunk:
        pass

    s, c = Seq(), Chunk()
    s.params, s.output = params, [0] * output_len
    c.seq, c.samples = s, True
    return c


def test_only_rows_whose_token_is_their_argmax_are_eligible():
    ok = SamplingParams(max_tokens=4)
    assert ok.greedy and DecodeLookahead.eligible([_chunk(ok), _chunk(SamplingParams(max_tokens=4, top_k=1,
                                                                                     temperature=0.7))])
    for bad in (SamplingParams(max_tokens=4, temperature=1.0), SamplingParams(max_tokens=4, logprobs=1),
                SamplingParams(max_tokens=4, repetition_penalty=1.2), SamplingParams(max_tokens=4, min_tokens=3)):
        assert not DecodeLookahead.eligible([_chunk(ok), _chunk(bad)])
    assert DecodeLookahead.eligible([_chunk(SamplingParams(max_tokens=9, min_tokens=3), output_len=3)])
    unsampled = _chunk(ok)
    unsampled.samples = False
    assert not DecodeLookahead.eligible([unsampled])
