"""A fresh engine process's entry in `/stats` `engine_starts` says when its replacement began, in Unix seconds
(``began_unix_s``): the entry is written when the process is admitted, seconds later, and found in review, `bench
replay --warmup-s` booked a warm-up's start still starting at t = 0 in the measured span for want of it. A real
child process stands for each worker process and a scripted peer speaks for it."""

import asyncio
import time

from controller_harness import MODEL, make_controller, run, scripted_local_worker, stop, until

WID = "host-1-cpu0"


def test_an_engine_start_carries_the_wall_time_its_replacement_began(model):
    out: dict = {}

    async def main():
        c = make_controller(model)
        ep = await c.start()
        procs = scripted_local_worker(c, ep, WID, exits=True)  # the replaced one exits, as a worker does
        spawn = c.local_spawn[WID.encode()]

        def timed_spawn():
            out["spawned"] = time.time()
            return spawn()

        c.local_spawn[WID.encode()] = timed_spawn
        try:
            assert await until(lambda: any(w.ready for w in c.gpu_workers), 5)
            out["before"] = time.time()
            await asyncio.wait_for(c.replace_worker(c.hub.workers[WID.encode()], MODEL), 5)
            out["after"] = time.time()
            out["stats"] = c.stats()["engine_starts"]
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())
    [e] = out["stats"]
    # taken where the replacement began: before the fresh process was spawned, long before its admission
    assert out["before"] <= e["began_unix_s"] <= out["spawned"] <= out["after"], (out, e)
    assert e["start_s"] >= 0 and e["stop_s"] >= 0
