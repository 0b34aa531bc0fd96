"""The healing of an untracked copy (``controller.prewarms.prewarm_call``) sends the Prewarm again only while the
driver still counts that load."""

import asyncio

from warmserve import protocol as P
from warmserve.errors import ModelStateError
from warmserve.policy import actions as A

from controller_harness import MODEL, Peer, make_controller, run, until

WID = "host-1-cpu0"


class HoldsACopy(Peer):
    """A worker that holds a copy of the model the controller does not know of: it refuses the first Prewarm as
    "already prewarmed", and answers Evicts only once ``evict_ok`` is set."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.evict_ok = asyncio.Event()
        self.refused = False

    async def handle(self, msg):
        if isinstance(msg, P.Prewarm) and not self.refused:
            self.refused = True
            await self.send(P.Error.of(msg.id, ModelStateError(
                f"model {msg.name!r} is already prewarmed on worker {self.wid}", model=msg.name, state="prewarmed")))
        elif isinstance(msg, P.Evict):
            asyncio.get_running_loop().create_task(self._evict_later(msg))
        else:
            await super().handle(msg)

    async def _evict_later(self, msg):
        await self.evict_ok.wait()
        await self.send(P.Evicted(id=msg.id, name=msg.name, freed_bytes=2 << 20))


def test_a_load_dropped_while_its_heal_evicts_is_not_sent_again(model):
    """Found in review: the driver dropped the prewarm while the heal's Evict ran, and the Prewarm sent again after
    it loaded a copy nobody tracked (the state the healing exists to end)."""
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = HoldsACopy(ep, WID)
        try:
            await c.wait_for_workers(1, 5)
            c.policy_running = False  # no tick: nothing but this test's actions touch the prewarms
            c.driver.apply(A.Prewarm("test/p1", MODEL, (0,), 1.0), c.now_s())
            assert await until(lambda: any(isinstance(m, P.Evict) for m in peer.got), 5)  # the heal evicts
            c.driver.apply(A.CancelPrewarm("test/p1"), c.now_s())  # the driver drops the load meanwhile
            assert "test/p1" not in c.state.prewarms
            peer.evict_ok.set()
            await asyncio.sleep(0.3)
            assert sum(isinstance(m, P.Prewarm) for m in peer.got) == 1, [type(m).__name__ for m in peer.got]
        finally:
            peer.close()
            await c.close(drain=False)

    run(main())
