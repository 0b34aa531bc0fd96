"""A request a co-served instance refuses for want of room (``NoRoomHereError``: its KV share, or what its pool frees
beside its neighbours' weights) goes on to an instance of its model that serves alone; the client gets the error
only when there is none. Before, the client got the error although such an instance could serve it. Scripted
peers on real ZeroMQ sockets: model a co-served with b on GPU 0, and a alone on GPU 1."""

import dataclasses

import pytest

from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.errors import NoRoomHereError
from warmserve.policy import actions as A
from warmserve.protocol import SamplingParams

from controller_harness import Peer, collect, run, until


class NoRoomPeer(Peer):
    """Refuses every request of a model it runs co-served, as a real worker refuses one that can never fit beside
    its neighbours (engine ``add_request``)."""

    async def handle(self, msg):
        if isinstance(msg, P.Generate) and self.instances.get(msg.model, (False,))[0]:
            await self.send(P.Error.of(msg.id, NoRoomHereError(
                f"{msg.model!r}: 8 KV blocks needed, but beside the weights of b at most 6 are ever free",
                kv_blocks=6, blocks_needed=8)))
            return
        await super().handle(msg)


def _generates(peer, model: str) -> int:
    return sum(isinstance(m, P.Generate) and m.model == model for m in peer.got)


def test_a_request_refused_for_want_of_room_goes_to_the_instance_serving_alone(model):
    a = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="a"))
    b = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="b"))

    async def main():
        cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=1.5)
        c = Controller(ClusterConfig(models=(a.spec, b.spec), controller=cc), [a, b])
        ep = await c.start()
        peers = [NoRoomPeer(ep, wid="host-1-cpu0")]
        try:
            # one at a time, so that GPU 0 is the first peer's (the policy is not started: the test lays out)
            assert await until(lambda: sum(w.ready for w in c.gpu_workers) == 1, 5)
            peers.append(NoRoomPeer(ep, wid="host-1-cpu1"))
            assert await until(lambda: sum(w.ready for w in c.gpu_workers) == 2, 5)
            now = c.now_s()
            c.driver.apply(A.StartInstance("i-a0", "a", (0,), kv_fraction=0.5), now)
            c.driver.apply(A.StartInstance("i-b0", "b", (0,), kv_fraction=0.5), now)
            c.driver.apply(A.StartInstance("i-a1", "a", (1,)), now)
            st = c.state
            assert await until(lambda: all(i.ready for i in st.instances.values()) and len(st.instances) == 3, 5)
            assert peers[0].instances == {"a": (True, ""), "b": (True, "")} and peers[1].instances == {"a": (False, "")}

            req = c.submit_nowait("a", [1, 2, 3], SamplingParams(max_tokens=3))
            assert await collect(req) == [5, 6, 7] and req.finish_reason == "length"
            assert (_generates(peers[0], "a"), _generates(peers[1], "a")) == (1, 1)  # refused there, served here
            assert c.metrics.rerouted.get(model="a") == 1
            assert all(i.in_flight == 0 and i.prefill_tokens_pending == 0 for i in st.instances.values())
            assert not any(w.gens for w in c.gpu_workers)

            # with the instance alone stopped, the refusal reaches the client, and nothing stays in flight
            c.driver.apply(A.StopInstance("i-a1"), c.now_s())
            assert await until(lambda: "i-a1" not in st.instances, 5)
            req = c.submit_nowait("a", [1, 2, 3], SamplingParams(max_tokens=3))
            with pytest.raises(NoRoomHereError, match="beside the weights of b"):
                await collect(req)
            assert c.metrics.rerouted.get(model="a") == 1
            assert all(i.in_flight == 0 for i in st.instances.values()) and not any(w.gens for w in c.gpu_workers)
        finally:
            await c.close(drain=False)
            for p in peers:
                p.close()

    run(main())
