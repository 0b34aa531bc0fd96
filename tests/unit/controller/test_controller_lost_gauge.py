"""``warmserve_workers{state="lost"}`` (``Controller.lost_workers``) when remote workers come back. Found in review:
a worker back under its own id also took another lost worker's place on its host and device, so with one of two
lost workers back the gauge read 0. Scripted peers on real ZeroMQ sockets, two CPU workers on one host."""

import asyncio

from controller_harness import Peer, make_controller, run, until


def test_a_worker_back_under_its_own_id_takes_only_its_own_place(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peers = [Peer(ep, "otherhost-1-cpu0"), Peer(ep, "otherhost-2-cpu0")]
        back = None
        try:
            await c.wait_for_workers(2, 5)
            for p in peers:
                p.silent = True  # no heartbeat: lost after worker_timeout_s (1.5 s)
            assert await until(lambda: len(c.lost_workers) == 2, 10), c.lost_workers
            peers[0].close()
            back = Peer(ep, "otherhost-1-cpu0")  # the first, restarted under its own id
            assert await until(lambda: any(w.ready and w.ident == b"otherhost-1-cpu0" for w in c.gpu_workers), 10)
            await asyncio.sleep(0.2)
            assert list(c.lost_workers) == [b"otherhost-2-cpu0"]
        finally:
            await c.close(drain=False)
            for p in peers[1:] + [back]:
                if p is not None:
                    p.close()

    run(main())
