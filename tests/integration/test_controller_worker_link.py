"""A real controller and a real local worker whose connection to it loses what it carries, as a connection ZeroMQ
re-makes by itself does (tests/integration/zmtp_proxy.py). The requests running there start over elsewhere (here:
on the same worker, admitted again) after the tokens they have, and end as an uninterrupted greedy run does; the
worker's process, healthy, is kept."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import pytest

import serving
from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.controller.models import controller_model
from warmserve.controller.launch import spawn_worker
from warmserve.policy.config import PolicyConfig
from zmtp_proxy import WorkerLinkProxy

MODEL = "llama-20m"
WID = "linkhost-1w0-cpu0"
PROMPT = [5, 17, 300, 41, 9]
#: Long enough (a second or more on CPU) that the request still runs when its link loses a message or is cut,
#: a few tokens in.
GREEDY = P.SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    return controller_model(ModelSpec(path=serving.demo_paths((MODEL,))[MODEL]))


async def _collect(req) -> list[int]:
    out = []
    async for ids in req:
        out += ids
    return out


async def _until(cond, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def _run(model, log_dir: str, scenario) -> None:
    """A controller with one local worker connected through a WorkerLinkProxy; ``scenario(c, proxy, proc)``."""
    # Restarts, if any, come quickly: the tests check that there are none, not that they are slow.
    # TCP, not the default private ipc:// socket: the proxy stands between the two on a TCP port
    cc = ControllerConfig(tick_s=0.1, heartbeat_interval_s=0.2, worker_timeout_s=5.0, restart_backoff_s=0.2,
                          policy_config=PolicyConfig(window_s=30), bind="tcp://127.0.0.1:0")
    c = Controller(ClusterConfig(models=(model.spec,), controller=cc), [model])
    ep = await c.start()
    proxy = WorkerLinkProxy(int(ep.rsplit(":", 1)[1]))
    ident = WID.encode()
    try:
        c.local_spawn[ident] = functools.partial(
            spawn_worker, proxy.endpoint, "cpu", memory_bytes=512 << 20, threads=1, worker_id=WID,
            heartbeat_interval_s=0.2, log_dir=log_dir)
        proc = c.local_procs[ident] = c.local_spawn[ident]()
        await c.wait_for_workers(1, 60, procs=[proc])
        await scenario(c, proxy, proc)
    finally:
        await c.close(drain=False)
        proxy.close()


def _kept(c: Controller, proc, caplog, why: str) -> None:
    """One loss, for ``why``, and the same process admitted again: nothing restarted or spawned."""
    lost = [r.getMessage() for r in caplog.records if " lost: " in r.getMessage()]
    assert len(lost) == 1 and why in lost[0], lost
    ident = WID.encode()
    w = c.hub.workers[ident]
    assert c.metrics.workers_lost.get() == 1
    assert w.ready and w.proc is proc and w.pid == proc.pid and proc.poll() is None
    assert c.local_procs[ident] is proc
    assert ident not in c._restarts and ident not in c.restarting, "a restart of a healthy process was started"


#: The uninterrupted run of PROMPT, made once for the module's tests: greedy, so every run gives the same tokens.
_uninterrupted: list[list[int]] = []


async def _want(c: Controller) -> list[int]:
    if not _uninterrupted:
        _uninterrupted.append(await _collect(c.submit_nowait(MODEL, PROMPT, GREEDY)))
    return _uninterrupted[0]


async def _long_request(c: Controller):
    req = c.submit_nowait(MODEL, PROMPT, GREEDY)
    await _until(lambda: req.generated >= 3, 60, "the request never started")
    return req


def test_a_stream_that_lost_tokens_starts_over_and_ends_as_an_uninterrupted_run(model, tmp_path, caplog):
    """Found in review: the controller did not check Tokens.seq, so Tokens lost with a connection re-made silently
    went unnoticed and the text came back with tokens missing."""
    caplog.set_level(logging.INFO, logger="warmserve.controller")

    async def scenario(c, proxy, proc):
        want = await _want(c)
        assert len(want) == GREEDY.max_tokens
        req = await _long_request(c)
        proxy.drop_tokens(1)
        await asyncio.to_thread(proxy.wait_dropped, 1, 30)
        got = await asyncio.wait_for(_collect(req), 90)
        assert got == want, f"{len(got)} tokens, {len(want)} uninterrupted: the gap went unnoticed"
        assert req.finish_reason == "length" and req.reroutes == 1
        assert c.stream_gaps == 1 and c.metrics.resumed.get(model=MODEL, why="worker_lost") == 1
        _kept(c, proc, caplog, "lost 1 Tokens message(s)")

    asyncio.run(asyncio.wait_for(_run(model, str(tmp_path), scenario), 240))


def test_a_local_worker_that_says_hello_again_is_admitted_again_not_restarted(model, tmp_path, caplog):
    """Found in review: a ready local worker whose connection broke for a moment (its Hello again) was treated as
    dead: its healthy process killed, a new one spawned after the restart back-off (a restart in a row), where a
    remote worker is admitted again at once."""
    caplog.set_level(logging.INFO, logger="warmserve.controller")

    async def scenario(c, proxy, proc):
        want = await _want(c)
        req = await _long_request(c)
        # Its sends fail while the new connection waits (Stats every 0.2 s): it gives the controller up, aborts
        # the request there and says Hello again once through.
        proxy.cut_worker_side(pause_s=1.0)
        await asyncio.to_thread(proxy.wait_accepted, 2, 30)
        got = await asyncio.wait_for(_collect(req), 90)
        assert got == want and req.reroutes == 1
        _kept(c, proc, caplog, "said Hello again")
        again = await _collect(c.submit_nowait(MODEL, PROMPT, GREEDY))  # served by the same process
        assert again == want and c.hub.workers[WID.encode()].pid == proc.pid
        assert c.metrics.workers_lost.get() == 1

    asyncio.run(asyncio.wait_for(_run(model, str(tmp_path), scenario), 240))
