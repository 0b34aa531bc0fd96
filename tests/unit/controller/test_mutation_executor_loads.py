"""What the live executor does with the outcome of a load (found by mutation testing): a whole-model prewarm or a
cold start whose Prewarm the worker refuses loaded nothing there, so it leaves the driver's state with no Evict sent
to that worker (``LivePrewarm.holders``); and a tensor-parallel prewarm whose every shard loaded is reported loaded
to the driver (progress 1.0), from which a start is a prewarm hit. Also: kept weights taken as a prewarm, the
once-per-worker note of cold starts into a running process, a resumed request's prompt tokens, and the back-off of a
refused Deactivate. Scripted peers on real ZeroMQ sockets, the policy's ticks stopped where the test applies the
driver's action itself."""

import asyncio
import logging
import time

import pytest

from warmserve import protocol as P
from warmserve.controller import views
from warmserve.errors import DriverError, WarmServeError
from warmserve.policy import actions as A
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, TablePeer, admitted, collect, make_controller, run, stop_ticks, tp2, until


def _of(peer, kind) -> list:
    return [m for m in peer.got if isinstance(m, kind)]


def test_a_refused_whole_model_prewarm_leaves_the_state_with_no_evict_sent(model):
    """The worker answers the Prewarm with an error: nothing was loaded, so the prewarm leaves the state and its
    record, and the worker gets no Evict (a tp = 1 prewarm's outcome comes from its one reply)."""
    async def main():
        c = make_controller(model)
        async with admitted(c, fail_prewarm=True) as (peer,):
            await stop_ticks(c)
            c.driver.apply(A.Prewarm("test/p1", MODEL, (0,), 1.0), c.now_s())
            assert await until(lambda: "test/p1" not in c.state.prewarms, 5), c.state.prewarms
            assert "test/p1" not in c.prewarms
            await asyncio.sleep(0.2)
            assert len(_of(peer, P.Prewarm)) == 1 and _of(peer, P.Evict) == []

    run(main())


def test_a_cold_start_whose_load_is_refused_fails_with_no_evict_sent(model):
    """A request's cold start on a worker that refuses every Prewarm: each of the 3 starts fails, then the request
    with the workers' error, and no Activate nor Evict ever reaches the worker, which holds nothing of the model."""
    async def main():
        c = make_controller(model)
        async with admitted(c, fail_prewarm=True) as (peer,):
            req = c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))
            with pytest.raises(WarmServeError, match=r"could not start an instance of 'llama-20m' \(3 attempts\): "
                                                     "disk on fire"):
                await asyncio.wait_for(collect(req), 10)
            await asyncio.sleep(0.2)
        assert len(_of(peer, P.Prewarm)) == 3
        assert _of(peer, P.Activate) == [] and _of(peer, P.Evict) == []

    run(main())


def test_a_tensor_parallel_prewarm_is_reported_loaded_once_every_shard_is(model):
    """A tp = 2 prewarm applied on GPUs 0 and 1: each rank gets its shard's Prewarm, and once both answered the
    driver holds it at progress 1.0, so a start from it counts a prewarm hit, not a start from one still loading."""
    tp_model = tp2(model)

    async def main():
        c = make_controller(tp_model)
        async with admitted(c, "host-1-cpu0", "host-1-cpu1") as peers:
            assert await until(lambda: c.groups.groups and all(r.ready for r in c.groups.groups.values()), 5)
            await stop_ticks(c)
            c.driver.apply(A.Prewarm("test/p2", tp_model.name, (0, 1), 1.0), c.now_s())
            assert await until(lambda: c.state.prewarms["test/p2"].progress == 1.0, 5), c.state.prewarms
            assert [(m.tp, m.rank) for p in peers for m in _of(p, P.Prewarm)] == [(2, 0), (2, 1)]
            assert c.prewarms["test/p2"].loaded
            c.policy_running = True
            assert await collect(c.submit_nowait(tp_model.name, [1, 2], SamplingParams(max_tokens=3))) == [5, 6, 7]
            assert c.metrics.prewarm_hits.get(model=tp_model.name) == 1
            assert c.metrics.prewarm_loading_starts.get(model=tp_model.name) == 0

    run(main())


def test_a_prewarm_that_keeps_a_stopped_instances_weights_is_loaded_at_once(model):
    """The policy stops the served instance (its Deactivate keeps the weights on the worker) and keeps them as a
    prewarm: no Prewarm goes out, the prewarm is loaded at once (the prewarmed gauge reads 1), and the next start
    from it is a prewarm hit."""
    async def main():
        c = make_controller(model)
        async with admitted(c, peer_cls=TablePeer) as (peer,):
            assert await collect(c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))) == [5, 6, 7]
            await stop_ticks(c)
            (iid,) = c.state.instances
            loads = len(_of(peer, P.Prewarm))
            c.driver.apply(A.StopInstance(iid), c.now_s())
            c.driver.apply(A.Prewarm("test/kept", MODEL, (0,), 1.0, kept_from=iid), c.now_s())
            assert c.prewarms["test/kept"].loaded and c.state.prewarms["test/kept"].progress == 1.0
            views.collect(c)
            assert c.metrics.prewarmed.get(model=MODEL) == 1
            assert await until(lambda: len(_of(peer, P.Deactivate)) == 1, 5)
            c.policy_running = True
            assert await collect(c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))) == [5, 6, 7]
            assert len(_of(peer, P.Prewarm)) == loads and _of(peer, P.Evict) == []
            assert c.metrics.prewarm_hits.get(model=MODEL) == 1
            assert c.metrics.prewarm_loading_starts.get(model=MODEL) == 0

    run(main())


def test_cold_starts_into_a_remote_workers_running_process_are_logged_once_per_worker(model, caplog):
    """Under `autoscale` a cold start wants a fresh engine process, which a remote worker's cannot be: two cold
    starts there (the first instance stopped, its weights dropped by the next tick) load into its running process,
    said once."""
    async def main():
        c = make_controller(model, policy="autoscale")
        async with admitted(c, peer_cls=TablePeer) as (peer,):
            assert await collect(c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))) == [5, 6, 7]
            await stop_ticks(c)
            (iid,) = c.state.instances
            c.driver.apply(A.StopInstance(iid), c.now_s())
            c.policy_running = True
            assert await collect(c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))) == [5, 6, 7]
            assert [type(m).__name__ for m in peer.got if isinstance(m, (P.Prewarm, P.Deactivate, P.Evict))] == [
                "Prewarm", "Deactivate", "Evict", "Prewarm"]

    with caplog.at_level(logging.INFO, logger="warmserve"):
        run(main())
    said = [r.getMessage() for r in caplog.records if "load into its running process" in r.getMessage()]
    assert said == ["cold starts on worker host-1-cpu0 (cpu) load into its running process, not a fresh engine "
                    "process: it is not a local worker this controller can restart (logged once per worker)"]


class OneTokenThenHold(TablePeer):
    """Streams the first token of the first Generate and holds the rest; every later Generate is served whole."""

    held = False

    async def handle(self, msg):
        if isinstance(msg, P.Generate) and not self.held:
            self.held = True
            await self.send(P.Tokens(id=msg.id, token_ids=[self.tokens[0]]))
            return
        await super().handle(msg)


def test_a_resumed_request_counts_its_prompt_and_its_tokens_as_prompt_tokens(model):
    """A request of a 2-token prompt, moved (``Migrate``) after its first token, is sent again with that token as
    output to resume after: the prompt-token counter counts 2 for its first send and 2 + 1 for the second."""
    async def main():
        c = make_controller(model)
        async with admitted(c, peer_cls=OneTokenThenHold) as (peer,):
            req = c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))
            assert await until(lambda: req.generated == 1, 5)
            assert c.metrics.prompt_tokens.get(model=MODEL) == 2
            c.driver.apply(A.Migrate(req.instance_id), c.now_s())
            await asyncio.wait_for(collect(req), 5)
            gens = _of(peer, P.Generate)
            assert [g.output_ids for g in gens] == [[], [5]]
            assert c.metrics.prompt_tokens.get(model=MODEL) == 5

    run(main())


class RefusingDeactivatePeer(TablePeer):
    """A worker whose Deactivates of a running model fail (DriverError, as a failed KV page unmap makes a real
    worker's) while ``failing``, until it is admitted again (its GetStats); notes when each refused one came."""

    failing = False

    def __init__(self, *a, **k):
        self.refused_at: list[float] = []
        super().__init__(*a, **k)

    async def handle(self, msg):
        if isinstance(msg, P.GetStats):
            self.failing = False
        if isinstance(msg, P.Deactivate) and self.failing and self.models.get(msg.name) == "running":
            self.refused_at.append(time.monotonic())
            await self.send(P.Error.of(msg.id, DriverError("unmapping of 2.0 MiB: EINVAL (Invalid argument)")))
            return
        await super().handle(msg)


def test_a_refused_deactivate_is_sent_again_after_a_back_off_that_doubles(model):
    """A stop's Deactivate refused every time is sent DEACTIVATE_TRIES = 3 times in all, the second
    DEACTIVATE_RETRY_S = 0.1 s after the first's refusal and the third 0.2 s after the second's (not at once)."""
    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = RefusingDeactivatePeer(ep)
        try:
            assert await until(lambda: any(w.ready for w in c.gpu_workers), 5)
            old = c.gpu_workers[0]
            c.driver.apply(A.StartInstance("i-1", MODEL, (old.gpu_id,)), c.now_s())
            assert await until(lambda: "i-1" in c.state.instances and c.state.instances["i-1"].ready, 5)
            peer.failing = True
            c.driver.apply(A.StopInstance("i-1"), c.now_s())
            assert await until(lambda: not old.alive, 5)
            t = peer.refused_at
            assert len(t) == 3, t
            assert t[1] - t[0] >= 0.09 and t[2] - t[1] >= 0.19, [b - a for a, b in zip(t, t[1:])]
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())


class ProgressPeer(TablePeer):
    """Reports each load's progress as ``steps`` (loaded, total) bytes, then holds it (a load that never ends)."""

    steps = ((1, 4),)

    async def handle(self, msg):
        await super().handle(msg)
        if isinstance(msg, P.Prewarm):
            for loaded, total in self.steps:
                await self.send(P.PrewarmProgress(id=msg.id, name=msg.name, loaded_bytes=loaded, total_bytes=total))


def test_a_prewarms_progress_follows_the_bytes_reported_and_stays_below_one_until_it_answers(model):
    """A load reports 1 of 4 bytes, then 4 of 4: the driver's prewarm reads 0.25, then 0.999 (not 1.0: loaded only
    once its Prewarm is answered)."""
    async def main():
        c = make_controller(model)
        async with admitted(c, peer_cls=ProgressPeer, load_s=None) as (peer,):
            await stop_ticks(c)
            seen: list[float] = []
            peer.steps = ((1, 4),)
            c.driver.apply(A.Prewarm("test/p1", MODEL, (0,), 1.0), c.now_s())
            assert await until(lambda: c.state.prewarms["test/p1"].progress > 0, 5)
            seen.append(c.state.prewarms["test/p1"].progress)
            c.driver.apply(A.CancelPrewarm("test/p1"), c.now_s())
            assert await until(lambda: "loading" not in peer.models.values(), 5)
            peer.steps = ((4, 4),)
            c.driver.apply(A.Prewarm("test/p2", MODEL, (0,), 1.0), c.now_s())
            assert await until(lambda: c.state.prewarms["test/p2"].progress > 0, 5)
            seen.append(c.state.prewarms["test/p2"].progress)
            assert seen == [0.25, 0.999] and not c.prewarms["test/p2"].loaded

    run(main())


class RefusesActivate(Peer):
    """A worker that refuses every Activate (its shard loaded) with a plain error when it is ``refusing``."""

    refusing = False

    async def handle(self, msg):
        if isinstance(msg, P.Activate) and self.refusing:
            await self.send(P.Error.of(msg.id, WarmServeError("cuda graph capture failed")))
            return
        await super().handle(msg)


def test_a_tp_start_whose_rank_refuses_its_activate_is_deactivated_on_every_rank_then_evicted(model):
    """Rank 1 refuses its Activate while rank 0 runs its own: the start fails, and every rank is sent the Deactivate
    of the model (a half-done activation) before its Evict, so no shard runs on and none stays loaded, start after
    start (3 attempts), until the request fails with the rank's error."""
    tp_model = tp2(model)

    async def main():
        c = make_controller(tp_model)
        async with admitted(c, "host-1-cpu0", "host-1-cpu1", peer_cls=RefusesActivate) as peers:
            peers[1].refusing = True
            req = c.submit_nowait(tp_model.name, [1, 2], SamplingParams(max_tokens=3))
            with pytest.raises(WarmServeError, match="cuda graph capture failed"):
                await asyncio.wait_for(collect(req), 10)
            # both ranks' third Evict: sent together, read by each peer in its own time
            assert await until(lambda: all(len(_of(p, P.Evict)) == 3 for p in peers), 10)
            sent = [type(m).__name__ for m in peers[0].got if isinstance(m, (P.Activate, P.Deactivate, P.Evict))]
            assert sent == ["Activate", "Deactivate", "Evict"] * 3
            assert peers[0].instances == {}

    run(main())
