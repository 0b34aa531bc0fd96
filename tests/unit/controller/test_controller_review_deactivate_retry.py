"""A stop's Deactivate that the worker answers with an error (found in review): a real worker whose KV page unmap
fails answers DriverError and keeps the instance listed, its model "running", until a Deactivate succeeds
(tests/unit/worker/test_worker_review_faults.py). The controller sent it once and only logged the error: the driver
held the GPU empty, the Evict of the kept weights was refused ("running; deactivate it before evicting"), and every
later start of the model there was refused ("already running"), prewarm_call's repair sending only an Evict, also
refused. Now the Deactivate is sent again (executor.DEACTIVATE_TRIES, with a back-off), the kept weights dropped
meanwhile are evicted once it succeeds, a worker that refuses every try is admitted again (hub.rejoin: its admission
deactivates what it runs), and the repair deactivates an untracked running copy before its Evict."""

from warmserve import _C
from warmserve import protocol as P
from warmserve.config import ModelSpec
from warmserve.controller import executor as X
from warmserve.controller.models import controller_model
from warmserve.errors import DriverError
from warmserve.policy import actions as A

from controller_harness import MODEL, HoldingPeer, demo_path, in_process_worker, make_controller, run, until


def _stop_and_drop(c, iid: str) -> None:
    """Stop ``iid``, then what the tick's end does: the kept weights no prewarm took are dropped (an Evict)."""
    c.driver.apply(A.StopInstance(iid), c.now_s())
    for kept in list(c.driver.kept.values()):
        del c.driver.kept[kept.instance_id]
        c.executor.drop_kept(kept, c.now_s())


def test_a_deactivate_whose_unmap_fails_on_a_real_worker_is_sent_again_and_the_gpu_ends_empty():
    """A real WorkerCore + WorkerServer over ZeroMQ, its pool's next unmap but one failing (the fault is one-shot)."""
    model = controller_model(ModelSpec(path=demo_path()))

    async def main():
        c = make_controller(model)
        ep = await c.start()
        with in_process_worker(ep, 512 << 20):
            try:
                assert await until(lambda: sum(w.ready for w in c.gpu_workers) >= 1, 10)
                w = c.gpu_workers[0]
                c.driver.apply(A.StartInstance("i-1", MODEL, (w.gpu_id,)), c.now_s())
                assert await until(lambda: "i-1" in c.state.instances and c.state.instances["i-1"].ready, 30)
                _C._debug_fail_after("protect_hard", 2)
                _stop_and_drop(c, "i-1")
                # the worker ends as the driver thinks: nothing running, the dropped weights evicted
                assert await until(lambda: w.stats is not None and not w.stats.instances and not w.stats.models, 5), (
                    f"worker: instances {[i.name for i in w.stats.instances]}, "
                    f"models {[(m.name, m.state) for m in w.stats.models]}; the driver holds nothing there")
                assert w.alive and c.gpu_workers == [w]  # healed by the retry: not admitted again
                _C._debug_fail_after("protect_hard", 0)
                c.driver.apply(A.StartInstance("i-2", MODEL, (w.gpu_id,)), c.now_s())
                assert await until(lambda: "i-2" in c.state.instances and c.state.instances["i-2"].ready, 15)
            finally:
                await c.close(drain=False)

    run(main())


class FailingDeactivatePeer(HoldingPeer):
    """As a real worker whose Deactivates of a running model fail (DriverError: the instance stays listed, its model
    running) while ``failing``, until the controller admits it again (its GetStats). The Prewarm of a model it holds
    is refused as a real worker's is (naming model and state)."""

    failing = False
    failed = 0

    async def handle(self, msg):
        if isinstance(msg, P.GetStats):
            self.failing = False
        if isinstance(msg, P.Deactivate) and self.failing and self.models.get(msg.name) == "running":
            self.failed += 1
            await self.send(P.Error.of(msg.id, DriverError("unmapping of 2.0 MiB: EINVAL (Invalid argument)")))
            return
        await super().handle(msg)


def test_a_worker_that_refuses_every_try_of_a_deactivate_is_admitted_again_and_cleaned():
    model = controller_model(ModelSpec(path=demo_path()))

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = FailingDeactivatePeer(ep, "host-1-cpu0", load_s=0.05)
        try:
            assert await until(lambda: sum(w.ready for w in c.gpu_workers) >= 1, 5)
            old = c.gpu_workers[0]
            c.driver.apply(A.StartInstance("i-1", MODEL, (old.gpu_id,)), c.now_s())
            assert await until(lambda: "i-1" in c.state.instances and c.state.instances["i-1"].ready, 3)
            peer.failing = True
            _stop_and_drop(c, "i-1")
            # every try refused: the worker is lost and admitted again, whose admission's Deactivate succeeds
            assert await until(lambda: not old.alive and any(w.ready for w in c.gpu_workers), 5), (
                f"worker runs {peer.models} after {peer.failed} refused Deactivate(s); the driver holds nothing there")
            assert peer.failed == X.DEACTIVATE_TRIES
            assert peer.instances == {} and peer.models.get(MODEL) != "running"
            (w,) = c.gpu_workers
            c.driver.apply(A.StartInstance("i-2", MODEL, (w.gpu_id,)), c.now_s())
            assert await until(lambda: "i-2" in c.state.instances and c.state.instances["i-2"].ready, 3)
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())


def test_the_prewarm_repair_deactivates_an_untracked_running_copy_before_evicting_it():
    """A copy of the model running on the worker that the driver does not count (a stop's Deactivate lost to a
    fault, say): the next start's Prewarm there is refused "already running"; the repair now deactivates it, evicts
    it and sends the Prewarm again (before: the Evict alone, refused, and the start failed)."""
    model = controller_model(ModelSpec(path=demo_path()))

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = FailingDeactivatePeer(ep, "host-1-cpu0", load_s=0.05)
        try:
            assert await until(lambda: sum(w.ready for w in c.gpu_workers) >= 1, 5)
            w = c.gpu_workers[0]
            peer.models[MODEL], peer.instances[MODEL] = "running", (False, "")  # unknown to the controller
            c.driver.apply(A.StartInstance("i-1", MODEL, (w.gpu_id,)), c.now_s())
            assert await until(lambda: "i-1" in c.state.instances and c.state.instances["i-1"].ready, 3)
            sent = [type(m).__name__ for m in peer.got if not isinstance(m, (P.Heartbeat, P.GetStats))]
            assert sent == ["Prewarm", "Deactivate", "Evict", "Prewarm", "Activate"], sent
            assert w.alive and peer.models == {MODEL: "running"}
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())
