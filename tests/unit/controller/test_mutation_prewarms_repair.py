"""``prewarms.tracked_copies`` as the prewarm repair reads it (found by mutation testing): copies of the model on
this worker's GPU only. A stopped instance's weights kept on another GPU do not count, so a worker that holds a copy
the driver does not count still gets it evicted and the Prewarm sent again. Scripted peers on real ZeroMQ sockets
speak for the workers of a real Controller whose policy ticks are stopped; the test applies the driver's actions."""

from warmserve import protocol as P
from warmserve.policy import actions as A

from controller_harness import MODEL, HoldingPeer, admitted, make_controller, run, stop_ticks, until


def test_kept_weights_of_the_model_on_another_gpu_do_not_stop_the_repair_of_an_untracked_copy(model):
    """GPU 1 keeps a stopped instance's weights of the model; GPU 0's worker holds a copy nobody counts. A prewarm
    of the model on GPU 0 is refused there, the copy evicted and the Prewarm sent again: the prewarm loads."""
    async def main():
        c = make_controller(model)
        async with admitted(c, "host-1-cpu0", "host-1-cpu1", peer_cls=HoldingPeer) as peers:
            await stop_ticks(c)
            c.driver.apply(A.StartInstance("i-1", MODEL, (1,)), c.now_s())
            assert await until(lambda: "i-1" in c.state.instances and c.state.instances["i-1"].ready, 5)
            c.driver.apply(A.StopInstance("i-1"), c.now_s())
            assert [k.gpus for k in c.driver.kept.values()] == [(1,)]
            peers[0].models[MODEL] = "prewarmed"  # a copy the driver does not count
            c.driver.apply(A.Prewarm("test/p0", MODEL, (0,), 1.0), c.now_s())
            assert await until(lambda: c.state.prewarms.get("test/p0") is not None
                               and c.state.prewarms["test/p0"].progress == 1.0, 5), c.state.prewarms
            sent = [type(m).__name__ for m in peers[0].got if isinstance(m, (P.Prewarm, P.Evict))]
            assert sent == ["Prewarm", "Evict", "Prewarm"]
            assert c.prewarms["test/p0"].loaded and peers[0].models == {MODEL: "prewarmed"}

    run(main())
