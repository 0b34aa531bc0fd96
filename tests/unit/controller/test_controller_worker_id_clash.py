"""Two live processes under one worker id (a `warmserve worker` command copied to a second host with its
--worker-id). The ROUTER gives the id to the newest connection, so before, each new Hello read as a restart and the
other process was cut off without a word, over and over. Now both are refused with a reason naming both, until one
stops; the other is then admitted. Scripted workers on real sockets (``controller_harness.Peer``)."""

from __future__ import annotations

import asyncio

from warmserve import protocol as P
from warmserve.controller import worker_claims
from warmserve.controller.worker_claims import IdClaims
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, collect, make_controller, run, until


async def connect_again(peer: Peer, endpoint: str) -> None:
    """What a worker's link does after --peer-timeout-s without a word from the controller (``_connect_again``): a
    new connection, which takes the id back, and a Hello over it."""
    peer.sock.disconnect(endpoint)
    peer.sock.connect(endpoint)
    await peer.send(peer.hello())


def _refusals(*peers) -> list[str]:
    return [m.reason for p in peers for m in p.got if isinstance(m, P.Refused)]


def test_two_live_processes_under_one_worker_id_are_refused_until_one_stops(model, monkeypatch):
    monkeypatch.setattr(worker_claims, "CLASH_CLEAR_S", 1.0)

    async def main():
        c = make_controller(model, request_timeout_s=10.0)
        ep = await c.start()
        first = Peer(ep, "dup", pid=11, start_id="a" * 16)
        second = None
        try:
            await c.wait_for_workers(1, 5)
            second = Peer(ep, "dup", pid=22, start_id="b" * 16)  # the id is handed over: the first is cut off
            assert await until(lambda: any(w.alive and w.pid == 22 for w in c.hub.workers.values()), 5)
            await connect_again(first, ep)
            assert await until(lambda: _refusals(first), 5), [type(m).__name__ for m in first.got]
            why = _refusals(first)[0]
            assert "process 11" in why and "process 22" in why and "--worker-id" in why, why
            assert not any(w.alive for w in c.hub.workers.values())
            await connect_again(second, ep)
            assert await until(lambda: _refusals(second), 5), "each process is told when it is heard"
            first.close()  # one stops: the other, heard alone for CLASH_CLEAR_S, is admitted at its next Hello
            await asyncio.sleep(1.1)
            await second.send(second.hello())
            assert await until(lambda: any(w.ready and w.pid == 22 for w in c.hub.workers.values()), 5)
            assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        finally:
            await c.close(drain=False)
            first.close()
            if second is not None:
                second.close()

    run(main())


def test_a_restart_under_its_id_is_no_clash(model):
    """The process before it is gone: the new one takes the id, nothing refused (what ROUTER_HANDOVER is for)."""
    async def main():
        c = make_controller(model, request_timeout_s=10.0)
        ep = await c.start()
        first = Peer(ep, "dup", pid=11, start_id="a" * 16)
        second = None
        try:
            await c.wait_for_workers(1, 5)
            first.close()
            second = Peer(ep, "dup", pid=11, start_id="b" * 16)  # another host may give it the same pid
            assert await until(lambda: any(w.ready and w.ident == b"dup" for w in c.hub.workers.values())
                               and second.got, 5)
            await asyncio.sleep(1.0)
            assert not _refusals(second)
            assert await collect(c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))) == [5, 6, 7]
        finally:
            await c.close(drain=False)
            if second is not None:
                second.close()

    run(main())


def _hello(pid: int, start_id: str) -> P.Hello:
    return P.Hello(worker_id="dup", device="cpu", pid=pid, host="h", start_id=start_id)


def test_claims_name_both_processes_and_end_the_clash_once_one_is_silent(monkeypatch):
    monkeypatch.setattr(worker_claims, "CLASH_CLEAR_S", 5.0)
    claims = IdClaims()
    claims.admitted(b"dup", _hello(11, "a"), now_s=0.0)
    claims.admitted(b"dup", _hello(22, "b"), now_s=10.0)
    assert claims.refusal(b"dup", _hello(22, "b"), now_s=10.5, holder_alive=True) is None  # the holder again
    assert claims.refusal(b"dup", _hello(11, "a"), now_s=11.0, holder_alive=False) is None  # the holder is gone
    why = claims.refusal(b"dup", _hello(11, "a"), now_s=11.0, holder_alive=True)
    assert why is not None and "process 11 on h" in why and "process 22 on h" in why
    assert claims.refusal(b"dup", _hello(22, "b"), now_s=12.0, holder_alive=False) == why
    assert claims.refusal(b"dup", _hello(22, "b"), now_s=16.5, holder_alive=False) is None  # 11 silent 5.5 s
    assert claims.refusal(b"dup", _hello(11, "a"), now_s=17.0, holder_alive=False) is None  # the clash is over


def test_workers_that_say_no_start_id_are_judged_as_before():
    claims = IdClaims()
    claims.admitted(b"dup", _hello(11, ""), now_s=0.0)
    claims.admitted(b"dup", _hello(22, ""), now_s=1.0)
    assert not claims.another_process(b"dup", _hello(33, ""))
    assert claims.refusal(b"dup", _hello(11, ""), now_s=2.0, holder_alive=True) is None
