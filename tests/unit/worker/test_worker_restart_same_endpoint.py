"""A worker killed (SIGKILL) and a new one started at the same endpoint, as a supervisor restarts it, while a sync
and an asyncio client each stream a generation from it. Found in review: the new worker's heartbeats counted as
the old one's, so both streams waited out their whole timeout (``TimeoutError_``) for tokens nothing would send.
Each worker process says who it is in its heartbeats (``Heartbeat.start_id``); a client that hears another id
fails what it had in flight with ``WorkerLostError`` at once, and its new calls reach the new worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import msgspec
import pytest

from warmserve import protocol as P
from warmserve.errors import WorkerLostError
from warmserve.worker import AsyncWorkerClient, WorkerClient, spawn_local_worker

from net_ports import free_port

LONG = P.SamplingParams(max_tokens=2000, ignore_eos=True)


def _spawn(ep: str):
    proc, _ = spawn_local_worker("cpu", memory_gib=0.25, threads=1, bind=ep, heartbeat_interval_s=0.2)
    return proc


class Stand:
    """A worker bound to a free port, a sync and an asyncio client of it (the latter on ``loop``), and
    ``restart()``: SIGKILL the worker and start a new one at the same endpoint."""

    def __init__(self):
        self.ep = f"tcp://127.0.0.1:{free_port()}"
        self.procs = [_spawn(self.ep)]
        self.loop = asyncio.new_event_loop()
        self.c = WorkerClient(self.ep, heartbeat_interval_s=0.2, worker_timeout_s=60.0)
        self.ac = AsyncWorkerClient(self.ep, heartbeat_interval_s=0.2, worker_timeout_s=60.0)

    def restart(self) -> None:
        self.procs[-1].kill()  # SIGKILL, sent through the Popen: a stop of ours, so its default log goes with it
        self.procs[-1].wait(10)
        self.procs.append(_spawn(self.ep))

    def close(self) -> None:
        self.loop.run_until_complete(self.ac.close())
        self.loop.close()
        self.c.close()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
            assert not os.path.exists(p.log_path)  # spawn_local_worker's default log, gone with a stop of ours


@pytest.fixture(scope="module")
def stand():
    """One stand for the module's tests: each restarts its worker once and leaves the clients talking to the new
    one (which the tests check), as a fresh stand would be; two worker processes fewer to start and stop."""
    s = Stand()
    try:
        yield s
    finally:
        s.close()


def test_streams_in_flight_fail_as_lost_when_the_worker_restarts_at_the_same_endpoint(tiny_models, stand):
    c, ac, loop = stand.c, stand.ac, stand.loop
    first_pid = c.stats().pid
    c.prewarm(tiny_models["tiny-llama"])
    c.activate("tiny-llama")
    it = iter(c.generate("tiny-llama", [1, 2, 3], LONG, timeout_s=20.0))
    ait = loop.run_until_complete(ac.generate("tiny-llama", [1, 2, 3], LONG, timeout_s=20.0)).__aiter__()
    assert next(it).token_ids and loop.run_until_complete(ait.__anext__()).token_ids

    stand.restart()
    t0 = time.monotonic()
    with pytest.raises(WorkerLostError, match="restarted"):
        for _ in it:
            pass
    took_sync = time.monotonic() - t0

    async def drain():
        async for _ in ait:
            pass

    t0 = time.monotonic()
    with pytest.raises(WorkerLostError, match="restarted"):
        loop.run_until_complete(drain())
    took_async = time.monotonic() - t0
    assert took_sync < 10.0 and took_async < 10.0, (took_sync, took_async)

    # New calls reach the new worker at once (not refused as lost, as after a silence)
    assert c.stats(timeout_s=10.0).pid == loop.run_until_complete(ac.stats(timeout_s=10.0)).pid != first_pid


@pytest.mark.parametrize("idle_s", [0.0, 1.0], ids=["at-once", "old-heartbeats-queued"])
def test_a_call_after_an_idle_spell_across_the_restart_is_answered_by_the_new_worker(idle_s, stand):
    """Clients idle while the worker restarted (the sync one reads only inside a call; the asyncio one only while
    its loop runs): their next call goes to the new worker, which says its start_id, and the id of the first
    message it had from them, before answering. Found in review of the start ids: that call failed as lost though
    the new worker served it (a prewarm retried would then find the model there), first with no old heartbeat
    queued, then with the old worker's heartbeats of the idle spell read after the call was sent."""
    c, ac, loop = stand.c, stand.ac, stand.loop
    first_pid = c.stats().pid
    assert loop.run_until_complete(ac.stats()).pid == first_pid
    time.sleep(idle_s)
    stand.restart()
    assert c.stats(timeout_s=20.0).pid not in (first_pid, None)
    assert loop.run_until_complete(ac.stats(timeout_s=20.0)).pid == stand.procs[-1].pid
    assert c.stats(timeout_s=10.0).pid == stand.procs[-1].pid


def test_the_start_id_keeps_the_wire_compatible_both_ways():
    """An older peer drops the field it does not know; an older worker's heartbeat says none ("": unknown)."""

    class OldHeartbeat(msgspec.Struct, tag="Heartbeat", tag_field="msg", omit_defaults=True):
        id: int = 0
        time_s: float = 0.0
        in_flight: int = 0

    new = P.encode(P.Heartbeat(time_s=1.0, in_flight=2, start_id="ab12"))
    assert msgspec.msgpack.decode(new, type=OldHeartbeat) == OldHeartbeat(time_s=1.0, in_flight=2)
    assert P.decode_reply(msgspec.msgpack.encode(OldHeartbeat(time_s=1.0))).start_id == ""
