"""A prewarm the driver applies on a GPU whose worker record is no longer alive (its process being replaced by a
fresh one: the driver's state does not know, the GPU is idle there). Real child processes stand for the worker's
processes, and a scripted peer speaks for each over ZeroMQ."""

import asyncio

from warmserve.policy import actions as A

from controller_harness import MODEL, make_controller, run, scripted_local_worker, stop, until

WID = "host-1-cpu0"


def test_a_prewarm_sent_to_a_worker_no_longer_alive_leaves_the_state(model):
    """Found in review: the load's failure was ignored when its worker was not alive, so the prewarm stayed in the
    driver's state at progress 0, its GPU's room reserved for a load that never runs, for good (on a GPU lost in
    the same tick, every later tick raised)."""
    async def main():
        c = make_controller(model)
        ep = await c.start()
        procs = scripted_local_worker(c, ep, WID, exits=True)  # the replaced one exits, as a worker does
        try:
            await c.wait_for_workers(1, 5)
            c.policy_running = False  # no tick: nothing but this test's action touches the prewarms
            await asyncio.sleep(0.1)
            old = c.by_gpu[0]
            replacing = asyncio.ensure_future(c.replace_worker(old, MODEL))
            await asyncio.sleep(0)  # retired (not alive), its successor spawned, not admitted yet
            assert not old.alive and c.by_gpu[0] is old and not replacing.done()
            c.driver.apply(A.Prewarm("test/p1", MODEL, (0,), 1.0), c.now_s())
            assert await until(lambda: "test/p1" not in c.state.prewarms, 2), c.state.prewarms
            assert "test/p1" not in c.prewarms
            new = await asyncio.wait_for(replacing, 5)
            assert c.by_gpu[0] is new and new.ready
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())
