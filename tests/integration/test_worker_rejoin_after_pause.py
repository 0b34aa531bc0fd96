"""A worker stopped for a moment (SIGSTOP: its host stalled) past the controller's worker_timeout_s is declared lost,
and is admitted again as soon as it speaks again: the controller answers it ``Rejoin``, on which it drops what it ran
(the controller started that over) and says Hello. Found in review: a remote worker was shut out until its own
--peer-timeout-s of silence from the controller ran out (30 s by default; spawn_worker now gives local workers an
hour), every request failing with 503 meanwhile when it was the only one."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import zmq

import serving
from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.controller.models import controller_model
from warmserve.controller.launch import spawn_worker
from warmserve.policy.config import PolicyConfig

MODEL = "llama-20m"
PROMPT = [5, 17, 300, 41, 9]
GREEDY = P.SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
#: Still running when the test acts on its first tokens.
LONG = P.SamplingParams(max_tokens=1500, ignore_eos=True)
#: How long the tests wait for a rejoin, seconds: well past the 2 s it takes (spawn_worker's own --peer-timeout-s,
#: launch.LOCAL_PEER_TIMEOUT_S, is an hour: a local worker never says Hello of its own accord in a test).
PEER_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def path() -> str:
    return serving.demo_paths((MODEL,))[MODEL]


async def _until(cond, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def _collect(req) -> list[int]:
    out = []
    async for ids in req:
        out += ids
    return out


def test_a_remote_worker_stopped_past_the_timeout_is_admitted_again_once_it_speaks(path, tmp_path):
    asyncio.run(asyncio.wait_for(_remote_pause(controller_model(ModelSpec(path=path)), str(tmp_path)), 240))


async def _remote_pause(model, log_dir: str) -> None:
    cc = ControllerConfig(tick_s=0.1, heartbeat_interval_s=0.2, worker_timeout_s=1.0,
                          policy_config=PolicyConfig(window_s=30))
    c = Controller(ClusterConfig(models=(model.spec,), controller=cc), [model])
    ep = await c.start()
    # Not in c.local_procs: a remote worker, which the controller neither stops nor restarts.
    proc = spawn_worker(ep, "cpu", memory_bytes=512 << 20, threads=1, worker_id="pausehost-1-cpu0",
                        heartbeat_interval_s=0.2, log_dir=log_dir)
    ident = b"pausehost-1-cpu0"
    try:
        await c.wait_for_workers(1, 120)
        first = c.hub.workers[ident]
        want = await _collect(c.submit_nowait(MODEL, PROMPT, GREEDY))
        assert len(want) == GREEDY.max_tokens
        req = c.submit_nowait(MODEL, PROMPT, LONG)
        await _until(lambda: req.generated >= 3, 60, "the request never started")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            await _until(lambda: not first.alive, 10, "the stopped worker was never declared lost")
            await asyncio.sleep(0.5)  # stopped well past worker_timeout_s
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await _until(lambda: ident in c.hub.workers and c.hub.workers[ident].ready, PEER_TIMEOUT_S - 4,
                     "the worker, speaking again, was not admitted again before its own peer timeout")
        again = c.hub.workers[ident]
        assert again is not first and again.pid == first.pid == proc.pid
        assert req.done  # with it, the only worker, lost: it was not left running there
        st = await c.hub.call(again, P.GetStats(id=c.hub.next_id()), 10)
        assert st.in_flight == 0
        assert await _collect(c.submit_nowait(MODEL, PROMPT, GREEDY)) == want
        assert c.metrics.workers_lost.get() == 1 and proc.poll() is None
    finally:
        await c.close(drain=False)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_worker_told_rejoin_drops_its_generations_and_says_hello_at_once(path, tmp_path):
    """The worker's side, against a scripted controller: ``Rejoin`` aborts the generations it ran for the
    controller, unanswered (no Deactivate comes: its model stays running), and a Hello follows at once."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    proc = spawn_worker(f"tcp://127.0.0.1:{port}", "cpu", memory_bytes=512 << 20, threads=1, worker_id="w-rejoin",
                        heartbeat_interval_s=0.2, log_dir=str(tmp_path))
    ids = iter(range(1, 1000))

    def call(msg):
        router.send_multipart([b"w-rejoin", P.encode(msg)])
        return _next(router, lambda m: getattr(m, "id", 0) == msg.id and P.is_final(m), 120)

    try:
        hello = _next(router, lambda m: isinstance(m, P.Hello), 120)
        assert hello.pid == proc.pid
        router.send_multipart([b"w-rejoin", P.encode(P.Heartbeat(time_s=time.time()))])
        assert isinstance(call(P.Prewarm(id=next(ids), path=path)), P.Prewarmed)
        assert isinstance(call(P.Activate(id=next(ids), name=MODEL)), P.Activated)
        gid = next(ids)
        router.send_multipart([b"w-rejoin", P.encode(P.Generate(id=gid, model=MODEL, prompt_ids=PROMPT,
                                                                 sampling=LONG))])
        first = _next(router, lambda m: isinstance(m, P.Tokens) and m.id == gid, 60)
        assert not first.finished

        router.send_multipart([b"w-rejoin", P.encode(P.Rejoin())])
        t0 = time.monotonic()
        again = _next(router, lambda m: isinstance(m, P.Hello), PEER_TIMEOUT_S)
        assert again is not None, "no Hello after Rejoin"
        assert again.pid == proc.pid and time.monotonic() - t0 < 2.0
        router.send_multipart([b"w-rejoin", P.encode(P.Heartbeat(time_s=time.time()))])
        st = call(P.GetStats(id=next(ids)))
        assert st.in_flight == 0, "the generation it ran before Rejoin still runs"
        assert [i.name for i in st.instances] == [MODEL]
        assert isinstance(call(P.Shutdown(id=next(ids))), P.Ok)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        router.close()
        ctx.term()


def _next(sock, want, within_s: float):
    """The next message from the worker for which ``want`` holds (None after ``within_s``)."""
    deadline = time.monotonic() + within_s
    while sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        _, data = sock.recv_multipart()
        msg = P.decode_reply(data)
        if want(msg):
            return msg
        if time.monotonic() >= deadline:
            break
    return None
