"""The live controller routes an instance no more requests than its engine runs at once (the Activate's
max_num_seqs, ``InstanceState.max_seqs``): found in review, a burst routed past it queued inside that engine, where
no other instance could take it, and timed out there. Scripted peers on real ZeroMQ sockets."""

import asyncio

from warmserve import protocol as P
from warmserve.protocol import EngineConfig, SamplingParams

from controller_harness import MODEL, Peer, make_controller, run, until


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
