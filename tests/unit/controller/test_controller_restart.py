"""A local worker's restart meeting a planned replacement of its process (a cold start's fresh engine): real child
processes stand for the worker processes, and a scripted peer per process speaks for it over ZeroMQ."""

import asyncio

from controller_harness import MODEL, make_controller, run, scripted_local_worker, stop

WID = "host-1-cpu0"


def test_a_restarted_worker_replaced_the_moment_it_is_admitted_stays_one_process(model):
    """The restart is over once its worker is admitted, so a cold start may replace that process at once, before
    the restart's loop looks again; the restart must not take the killed process for a failed start and spawn a
    second one under the id, whose Hello would lose the replacement (CI: workers_lost 4 where 2 had failed)."""
    async def main():
        c = make_controller(model, restart_backoff_s=0.02)
        ep = await c.start()
        procs = scripted_local_worker(c, ep, WID)
        ident = WID.encode()
        try:
            await c.wait_for_workers(1, 5)
            c.worker_event.clear()
            procs[0].kill()  # the heartbeat loop's poll finds it exited: lost, and restarted
            # Set by the admission itself: this task runs before the restart loop's next 0.1 s look, as the
            # executor's cold start did in CI (the policy's tick right after the restarted worker joined).
            await asyncio.wait_for(c.worker_event.wait(), 10)
            back = c.hub.workers[ident]
            assert back.ready and back.proc is procs[1] and c.can_replace(back)
            new = await c.replace_worker(back, MODEL)
            # Long past the old restart loop's look (0.1 s), its back-off (0.04 s) and its second process's Hello.
            await asyncio.sleep(0.6)
            assert len(procs) == 3, f"{len(procs) - 3} processes spawned beside the replacement"
            assert c.metrics.workers_lost.get() == 1 and not c.restarting
            assert c.hub.workers[ident] is new and new.ready and new.proc is procs[2] and new.pid == procs[2].pid
            assert c.by_gpu[new.gpu_id] is new and [g.gone for g in c.state.gpus] == [True, False]
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())
