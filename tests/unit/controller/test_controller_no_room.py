"""A request a co-served instance refuses for want of room (``NoRoomHereError``: its KV share, or what its pool frees
beside its neighbours' weights) goes on to an instance of its model that serves alone; the client gets the error
only when there is none. Before, the client got the error although such an instance could serve it. Scripted
peers on real ZeroMQ sockets: model a co-served with b on GPU 0, and a alone on GPU 1."""

import asyncio
import contextlib
import dataclasses

import pytest

from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.errors import NoRoomHereError, WorkerLostError
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


@contextlib.asynccontextmanager
async def _laid_out(model, peer_cls):
    """A started controller serving a and b (the demo model under two names) on two scripted workers of
    ``peer_cls``: i-a0 and i-b0 co-served on GPU 0, i-a1 alone on GPU 1, ready; (controller, peers), closed at the
    end. The policy is not started: the test lays out."""
    a = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="a"))
    b = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="b"))
    cc = ControllerConfig(tick_s=0.05, heartbeat_interval_s=0.05, worker_timeout_s=1.5)
    c = Controller(ClusterConfig(models=(a.spec, b.spec), controller=cc), [a, b])
    ep = await c.start()
    peers = [peer_cls(ep, wid="host-1-cpu0")]
    try:
        # one at a time, so that GPU 0 is the first peer's
        assert await until(lambda: sum(w.ready for w in c.gpu_workers) == 1, 5)
        peers.append(peer_cls(ep, wid="host-1-cpu1"))
        assert await until(lambda: sum(w.ready for w in c.gpu_workers) == 2, 5)
        now = c.now_s()
        c.driver.apply(A.StartInstance("i-a0", "a", (0,), kv_fraction=0.5), now)
        c.driver.apply(A.StartInstance("i-b0", "b", (0,), kv_fraction=0.5), now)
        c.driver.apply(A.StartInstance("i-a1", "a", (1,)), now)
        st = c.state
        assert await until(lambda: all(i.ready for i in st.instances.values()) and len(st.instances) == 3, 5)
        assert peers[0].instances == {"a": (True, ""), "b": (True, "")} and peers[1].instances == {"a": (False, "")}
        yield c, peers
    finally:
        await c.close(drain=False)
        for p in peers:
            p.close()


def test_a_request_refused_for_want_of_room_goes_to_the_instance_serving_alone(model):
    async def main():
        async with _laid_out(model, NoRoomPeer) as (c, peers):
            st = c.state
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

    run(main())


class HeldNoRoomPeer(NoRoomPeer):
    """Refuses as NoRoomPeer, once ``release`` is set."""

    release: asyncio.Event | None = None

    async def handle(self, msg):
        if isinstance(msg, P.Generate) and self.instances.get(msg.model, (False,))[0]:
            await self.release.wait()
        await super().handle(msg)


def test_a_refused_request_whose_draining_instance_loses_its_worker_on_stopping_is_sent_once(model):
    """The refuser drains, so the reroute stops it, and that stop's Deactivate cannot be sent (the worker lost on
    the spot, as WorkerHub.send does on a ZMQError). Found in review: the loss started the request over from the
    refuser's table as well, and the instance alone got it twice."""
    async def main():
        HeldNoRoomPeer.release = asyncio.Event()
        async with _laid_out(model, HeldNoRoomPeer) as (c, peers):
            st = c.state
            req = c.submit_nowait("a", [1, 2, 3], SamplingParams(max_tokens=3))
            assert await until(lambda: st.instances["i-a0"].in_flight == 1, 5)
            c.driver.apply(A.StopInstance("i-a0"), c.now_s())  # draining, the request still on it
            w0 = c.by_gpu[0]
            real = c.hub.send

            def send(w, msg):
                if w is w0 and isinstance(msg, P.Deactivate):
                    c.hub.lose(w, "send failed: injected")
                    raise WorkerLostError("injected", worker_id=w.worker_id)
                return real(w, msg)

            c.hub.send = send
            HeldNoRoomPeer.release.set()
            assert await asyncio.wait_for(collect(req), 5) == [5, 6, 7]
            await asyncio.sleep(0.3)
            assert _generates(peers[1], "a") == 1
            assert c.metrics.rerouted.get(model="a") == 1
            assert all(i.in_flight == 0 for i in st.instances.values())

    run(main())
