"""A prompt longer than its model's context is refused by its length before any per-token work. Found in review: a
Generate of 60M token ids (a 60 MiB message, under the 64 MiB limit) held a worker's engine loop 6.5 s in the
engine's checks of each id (their type, then the vocabulary) before the length refused it; every generation on the
worker stood still meanwhile, and a client could send one every few seconds. Through a real socket."""

from __future__ import annotations

import time

import pytest
import zmq

from warmserve import protocol as P
from warmserve.engine.engine import Engine
from warmserve.worker import WorkerClient

from tiny_llama_worker import tiny_llama_worker

SHORT = P.SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)


@pytest.fixture
def served(tiny_models, monkeypatch):
    """A bound worker serving tiny-llama (context 2,048 tokens), and the prompt lengths its engine was handed."""
    handed: list[int] = []
    add_request = Engine.add_request

    def spy(self, request_id, prompt_token_ids, *a, **kw):
        handed.append(len(prompt_token_ids))
        return add_request(self, request_id, prompt_token_ids, *a, **kw)

    monkeypatch.setattr(Engine, "add_request", spy)
    with tiny_llama_worker(tiny_models, "w-huge") as (server, t, failures):
        yield server, handed, t, failures


@pytest.mark.parametrize("prompt,output", [(4_000_000, 0), (2_048, 0), (1_000, 1_048)],
                         ids=["millions", "exactly-the-context", "with-output-ids"])
def test_a_prompt_past_the_context_is_refused_by_its_length_under_its_id(served, prompt, output):
    server, handed, t, failures = served
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        sock.send(P.encode(P.Generate(id=41, model="tiny-llama", prompt_ids=[1] * prompt, output_ids=[2] * output,
                                      sampling=SHORT)))
        deadline = time.monotonic() + 30
        while sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            err = P.decode_reply(sock.recv())
            if not isinstance(err, P.Heartbeat):
                break
        assert isinstance(err, P.Error) and (err.type, err.id) == ("PromptTooLongError", 41), err
        assert (err.fields["prompt_tokens"], err.fields["output_tokens"]) == (prompt, output)
        assert (err.fields["max_context"], err.fields["max_tokens"]) == (2048, 3)
        assert "shorten the prompt" in err.message
        assert handed == []  # never handed to the engine, whose checks walk every id
    finally:
        ctx.destroy(linger=0)
    with WorkerClient(server.endpoint) as good:  # one that fits is served as before
        ids, last = good.generate("tiny-llama", [1] * 2_000, SHORT).collect()
    assert len(ids) == 3 and last.finish_reason == "length" and handed == [2_000]
    assert not failures and t.is_alive()
