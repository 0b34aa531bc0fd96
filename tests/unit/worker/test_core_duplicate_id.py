"""A Generate whose id is already in flight from the same peer (a faulty or third-party client: the controller and
the bundled clients never reuse one). Found in review: it was refused under the id it shares, which ended that id's
stream for its sender and reset its numbering, while the first generation ran on unread to max_tokens, holding its
KV blocks."""

from __future__ import annotations

import pytest

from warmserve import errors
from warmserve import protocol as P


def test_a_duplicate_id_stops_the_generation_it_names_with_one_error(worker, tiny_models):
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama")
    long = P.SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    stream = worker.generate("tiny-llama", [1, 2, 3], long)
    first = next(iter(stream))
    assert isinstance(first, P.Tokens) and not first.finished
    assert worker.stats().in_flight == 1
    worker._send(P.Generate(id=stream.id, model="tiny-llama", prompt_ids=[4, 5], sampling=long))
    with pytest.raises(errors.ProtocolError, match="already in flight") as refused:
        for _ in stream:
            pass
    assert worker.stats().in_flight == 0  # nothing left running that nobody reads
    assert "both are stopped" in str(refused.value)
    assert worker.generate("tiny-llama", [1, 2, 3], P.SamplingParams(max_tokens=2)).collect()[1].finished
