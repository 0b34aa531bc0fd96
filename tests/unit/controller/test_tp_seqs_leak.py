"""A request moved off a surviving tensor-parallel rank (its group lost a rank) leaves no ``WorkerRecord.seqs``
entry when rank 0 answers it with an Error. Found in review: the Error path returned without dropping it, one
entry leaked per such request for the worker record's life."""
import asyncio
import dataclasses

import pytest

from warmserve import protocol as P
from warmserve.config import ModelSpec
from warmserve.errors import WorkerLostError
from warmserve.protocol import SamplingParams

from controller_harness import make_controller, peers_in_order, run, until


@pytest.fixture(scope="module")
def tp_model(model):
    return dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name=model.name, tp=2))


def test_a_request_moved_off_a_surviving_rank_leaves_no_seq_entry(tp_model):
    async def main():
        c = make_controller(tp_model, request_timeout_s=6.0)
        ep = await c.start()
        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1")
        try:
            peers[0].hold_generate = True
            req = c.submit_nowait(tp_model.name, [1, 2], SamplingParams(max_tokens=3))
            assert await until(lambda: any(isinstance(m, P.Generate) for m in peers[0].got), 5)
            gen = next(m for m in peers[0].got if isinstance(m, P.Generate))
            await peers[0].send(P.Tokens(id=gen.id, token_ids=[5], seq=0))  # one token streamed
            w0 = c.by_gpu[0]
            assert await until(lambda: w0.seqs.get(gen.id) == 1, 2)
            peers[1].silent = True  # rank 1 is lost: the request moves off rank 0
            assert await until(lambda: c.metrics.workers_lost.get() >= 1, 5)
            assert gen.id not in w0.gens
            # rank 0 leaves the dead group and answers the request it ran there, as a worker does
            await peers[0].send(P.Error.of(gen.id, WorkerLostError("group dropped: a rank is gone")))
            await asyncio.sleep(0.3)
            assert gen.id not in w0.seqs, f"seqs of the surviving worker still hold {w0.seqs}"
            req.abort()
        finally:
            await c.close(drain=False)
            for p in peers:
                p.close()

    run(main())
