"""A sequence's tokens are read in place (found in review): ``Sequence.tokens`` built prompt + output for every
chunk of every eager step, so each decode cost time and memory in its context's length on the host."""

from __future__ import annotations

import tracemalloc

from warmserve.engine import SamplingParams
from warmserve.engine.scheduler import Sequence


def _seq(prompt_len: int, output_len: int) -> Sequence:
    seq = Sequence("r", list(range(prompt_len)), SamplingParams(), 0)
    seq.output = list(range(10_000, 10_000 + output_len))
    return seq


def test_a_decode_chunk_reads_its_token_without_copying_the_context():
    """The token a decode step feeds (the last one) costs the same for a 1M-token context as for a short one:
    before, each read allocated the whole 8 MB list of prompt + output."""
    seq = _seq(1_000_000, 50)
    n = seq.length
    tracemalloc.start()
    try:
        for _ in range(20):
            assert seq.tokens[n - 1:n] == [10_049]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10, f"reading one token allocated {peak} bytes"


def test_token_view_reads_as_the_list_of_prompt_then_output():
    for plen, olen in ((5, 0), (5, 3), (1, 7)):
        seq = _seq(plen, olen)
        want = seq.prompt + seq.output
        view = seq.tokens
        assert len(view) == len(want) and list(view) == want and view == want
        for a in range(-len(want) - 1, len(want) + 2):
            for b in range(-len(want) - 1, len(want) + 2):
                assert view[a:b] == want[a:b], (plen, olen, a, b)
            if -len(want) <= a < len(want):
                assert view[a] == want[a]
        assert view[::2] == want[::2] and view[::-1] == want[::-1]
