"""A controller that stalls (its process stopped, its host or its event loop held up) for longer than
worker_timeout_s read nothing meanwhile: that silence is its own, not its workers'. Found in review: a controller
stopped for 3.5 s (SIGSTOP) declared every healthy worker lost at its first heartbeat round after, before it had
read what they sent, and had its local workers killed and started again. A worker that did go silent is still
lost, once worker_timeout_s of the controller's own time has passed."""

import asyncio
import time

from warmserve import protocol as P

from controller_harness import Peer, collect, make_controller, run, scripted_local_worker, stop, until

TIMEOUT_S = 1.5  # make_controller's worker_timeout_s
STALL_S = 2.0


def test_a_stall_of_the_controller_loses_no_worker_and_a_silent_one_only_after_the_timeout(model):
    run(_stall(model))


async def _stall(model):
    c = make_controller(model)
    ep = await c.start()
    procs = scripted_local_worker(c, ep, "host-1w0-cpu0")
    quiet = Peer(ep, "host-2-cpu0")  # a remote worker that goes silent for good
    try:
        await c.wait_for_workers(2, 10, procs=procs[:1])
        kept = procs[0].peer
        assert await collect(c.submit_nowait(model.name, [1], P.SamplingParams(max_tokens=3))) == [5, 6, 7]
        records = dict(c.hub.workers)
        # Nothing of theirs left in flight when the stall begins: under a SIGSTOP the controller's ZeroMQ I/O thread
        # stops too, and what the workers send meanwhile is read only after the first heartbeat round.
        kept.silent = quiet.silent = True
        await asyncio.sleep(0.2)
        time.sleep(STALL_S)  # the controller's event loop is held up, past worker_timeout_s
        kept.silent = False
        stall_end_s = time.monotonic()

        assert await until(lambda: not records[b"host-2-cpu0"].alive, 10), "the silent worker was never lost"
        lost_after_s = time.monotonic() - stall_end_s
        w = records[b"host-1w0-cpu0"]
        assert w.alive and w.ready, "a worker heard up to the stall was declared lost"
        assert c.hub.workers[w.ident] is w and w.proc is procs[0] and len(procs) == 1 and procs[0].poll() is None
        assert c.metrics.workers_lost.get() == 1
        # Its 0.2 s of silence before the stall counts; the stall does not.
        assert lost_after_s >= TIMEOUT_S - 0.2 - 0.3, f"lost {lost_after_s:.2f} s after the stall"
        assert await collect(c.submit_nowait(model.name, [1], P.SamplingParams(max_tokens=3))) == [5, 6, 7]
    finally:
        c.local_spawn.clear()  # its process, stopped here, is not started again while the controller closes
        stop(procs)
        await c.close(drain=False)
        quiet.close()
