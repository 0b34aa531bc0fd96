"""The live controller routes an instance no more requests than its engine runs at once (the Activate's
max_num_seqs, ``InstanceState.max_seqs``): found in review, a burst routed past it queued inside that engine, where
no other instance could take it, and timed out there. Scripted peers on real ZeroMQ sockets."""

import asyncio

from warmserve import protocol as P
from warmserve.protocol import EngineConfig, SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run, until


def test_a_burst_past_the_engines_max_num_seqs_waits_in_the_controllers_queue(model):
    async def main():
        c = make_controller(model, engine=EngineConfig(max_num_seqs=2), request_timeout_s=30)
        ep = await c.start()
        peer = Peer(ep)
        try:
            await c.wait_for_workers(1, 5)
            peer.hold_generate = True
            reqs = [c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3)) for _ in range(5)]
            assert await until(lambda: len(c.gpu_workers[0].gens) == 2, 5)
            await asyncio.sleep(0.3)  # several ticks: nothing more is sent
            (act,) = [m for m in peer.got if isinstance(m, P.Activate)]
            assert act.engine.max_num_seqs == 2
            assert sum(isinstance(m, P.Generate) for m in peer.got) == 2
            assert len(c.state.queues[MODEL]) == 3
            (inst,) = c.driver.state.instances.values()
            assert inst.max_seqs == 2 and inst.in_flight == 2
            for r in reqs:
                r.abort()
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())


#: Seconds between two streamed tokens, and the request timeout: 12 tokens take 2.4 s, past the timeout, and a gap
#: is a fifth of it (found in CI: at 0.1 s and 0.5 s a loaded machine held the first choice's start past the timeout).
TOKEN_GAP_S, REQUEST_TIMEOUT_S = 0.2, 1.0


class SlowPeer(Peer):
    """Streams each generation's tokens one every TOKEN_GAP_S, 12 in all (past REQUEST_TIMEOUT_S)."""

    async def handle(self, msg):
        if isinstance(msg, P.Generate):
            asyncio.get_running_loop().create_task(self._stream(msg.id))
        else:
            await super().handle(msg)

    async def _stream(self, gid):
        for k in range(11):
            await asyncio.sleep(TOKEN_GAP_S)
            await self.send(P.Tokens(id=gid, token_ids=[5 + k]))
        await self.send(P.Tokens(id=gid, token_ids=[16], finished=True, finish_reason="length"))


def test_a_choice_queued_behind_its_streaming_sibling_does_not_time_out(model):
    """Found in review: an n = 2 request on an engine that runs one sequence queued its second choice behind its
    first; that choice timed out after request_timeout_s while the first streamed, and the 504 threw the request's
    tokens away. Now a sibling's token within the timeout keeps a queued choice waiting."""
    async def main():
        c = make_controller(model, engine=EngineConfig(max_num_seqs=1), request_timeout_s=REQUEST_TIMEOUT_S)
        ep = await c.start()
        peer = SlowPeer(ep)
        try:
            await c.wait_for_workers(1, 5)
            first = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=12))
            second = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=12), siblings=[first])
            assert first.family is second.family and len(first.family) == 2
            got = await asyncio.wait_for(asyncio.gather(collect(first), collect(second)), 10)
            assert got == [list(range(5, 17))] * 2
            assert c.metrics.requests.get(model=MODEL, outcome="timeout") == 0
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())
