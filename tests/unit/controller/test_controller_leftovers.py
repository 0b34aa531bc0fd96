"""What a failed start, a lost rank, a stuck or refused process and a shutdown leave behind, each found in review:
scripted peers on real ZeroMQ sockets (controller_harness.TablePeer keeps a worker's model table, so what a
failure leaves on a worker can be read), and real child processes standing for local workers."""

import asyncio
import dataclasses

from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller import executor, restarts
from warmserve.controller.controller import Controller
from warmserve.controller.errors import OverloadedError
from warmserve.errors import WarmServeError, WorkerLostError
from warmserve.policy import actions as A
from warmserve.policy.config import policy_config_from_dict
from warmserve.protocol import SamplingParams

from controller_harness import (MODEL, GroupPeer, Peer, StuckProc, TablePeer, WorkerProc, add_local_worker, collect,
                                make_controller, peers_in_order, run, sleeper, stop, until)


class BreakingGroupPeer(GroupPeer):
    """A worker of a tensor-parallel instance whose group's communicator fails while every worker stays up (a
    follower silent past the group's timeout: gloo then closes the pair for good, and every later collective in
    that group fails at once on both ranks; checked on torch 2.13's gloo). ``break_next``: rank 0 answers the next
    Generate as worker/tp.py does then (WorkerLostError, "lost a rank"); an Activate in a broken group fails, as
    its first collective (min_int) does. ``broken`` is shared by the peers of one group."""

    def __init__(self, *a, broken: set, **k):
        self.broken, self.break_next, self.group, self.failed = broken, False, "", set()
        super().__init__(*a, **k)

    async def send(self, msg):
        if isinstance(msg, P.Activated):
            act = next(m for m in reversed(self.got) if isinstance(m, P.Activate) and m.id == msg.id)
            if act.group_id in self.broken:
                msg = P.Error.of(msg.id, WarmServeError("RuntimeError: Application timeout caused pair closure"))
            else:
                self.group = act.group_id
        elif isinstance(msg, P.Tokens) and msg.id in self.failed:
            return  # the rest of a Generate answered with the error below
        elif isinstance(msg, P.Tokens) and self.break_next:
            self.break_next = False
            self.broken.add(self.group)
            self.failed.add(msg.id)
            msg = P.Error.of(msg.id, WorkerLostError(f"the tensor-parallel instance (group {self.group}) lost a "
                                                     "rank: RuntimeError: Timed out; the instance stopped"))
        await super().send(msg)


def tp2_controller(model, policy: str = "dedicated", **cc) -> Controller:
    """One model, "b", at tp=2 (the demo checkpoint)."""
    b = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="b", tp=2))
    cc = ControllerConfig(**{"tick_s": 0.05, "heartbeat_interval_s": 0.05, "worker_timeout_s": 1.5, "policy": policy,
                             "policy_config": policy_config_from_dict({"window_s": 30}), **cc})
    return Controller(ClusterConfig(models=(b.spec,), controller=cc), [b])


def test_a_rank_lost_without_a_worker_loss_drops_the_group(model):
    """Rank 0 reports a lost rank (the group's communicator failed) while both workers stay up: rank_lost moved the
    requests and stopped the instance but kept the group ready, so the next start on that block activated in the
    broken group, failed, and after 3 failures the waiting request failed."""
    async def main():
        c = tp2_controller(model, "warmserve", request_timeout_s=10.0)
        ep = await c.start()
        broken: set = set()

        class Peer_(BreakingGroupPeer):
            def __init__(self, *a, **k):
                super().__init__(*a, broken=broken, **k)

        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1", peer_cls=Peer_)
        try:
            assert await asyncio.wait_for(collect(c.submit_nowait("b", [1], SamplingParams(max_tokens=3))), 8) \
                == [5, 6, 7]
            (first,) = [g.group_id for g in c.groups.groups.values()]
            assert peers[0].group == first and c.state.instances
            peers[0].break_next = True
            out = await asyncio.wait_for(collect(c.submit_nowait("b", [1], SamplingParams(max_tokens=3))), 8)
            assert out == [5, 6, 7]
            assert broken == {first}
            assert first not in [g.group_id for g in c.groups.groups.values()]
            for p in peers:  # both members were told to leave it
                assert any(isinstance(m, P.LeaveGroup) and m.group_id == first for m in p.got)
        finally:
            await c.close(drain=False)
            for p in peers:
                p.close()

    run(main())


async def _ready_workers(c: Controller, n: int) -> None:
    """Workers admitted without starting the policy (c.wait_for_workers would): the test applies the actions."""
    assert await until(lambda: sum(w.ready for w in c.gpu_workers) >= n, 5)


def test_an_activation_that_times_out_is_deactivated_before_its_evict(model, monkeypatch):
    """A tp=1 Activate that the worker finishes after CALL_TIMEOUT_S: the failed start sent only an Evict, which
    the worker refused (the model runs by then): the instance ran on with its weights while the driver had the GPU
    free, and every later start of the model there failed (its Prewarm refused: the model is running)."""
    monkeypatch.setattr(executor, "CALL_TIMEOUT_S", 0.4)

    async def main():
        c = make_controller(model, request_timeout_s=10.0)
        ep = await c.start()
        peer = TablePeer(ep, "host-1-cpu0", activate_s=[1.0])  # the first activation takes 1 s
        try:
            await c.wait_for_workers(1, 5)
            req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))
            assert await asyncio.wait_for(collect(req), 8) == [5, 6, 7]
            assert sum(isinstance(m, P.Activate) for m in peer.got) == 2  # the first start failed
            assert peer.models == {MODEL: "running"} and len(c.state.instances) == 1
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())


def test_a_start_whose_load_times_out_evicts_it(model, monkeypatch):
    """A start from a prewarm still loading, whose load outlasts LOAD_TIMEOUT_S: it failed with loaded=False and
    sent nothing, so the weights landed on the worker after all, unknown to the driver (the model's next Prewarm
    there is refused: it is prewarmed already)."""
    monkeypatch.setattr(executor, "LOAD_TIMEOUT_S", 0.5)

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = TablePeer(ep, "host-1-cpu0", load_s=1.5)
        try:
            await _ready_workers(c, 1)
            now = c.now_s()
            c.driver.apply(A.Prewarm("pw-1", MODEL, (0,), 1.0), now)
            c.driver.apply(A.StartInstance("i-1", MODEL, (0,), prewarm_id="pw-1"), now)
            assert await until(lambda: "i-1" not in c.state.instances, 2)  # failed: the load timed out
            await asyncio.sleep(1.5)  # past the end of the load
            assert peer.models == {}, peer.models
            assert not c.state.prewarms and not c.prewarms
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())


def test_a_prewarm_that_never_loads_is_given_up(model, monkeypatch):
    """A tp=1 prewarm whose worker never answers (a hung load; the worker stays up): its outcome came only from the
    reply, with no timeout (a tp > 1 prewarm's has LOAD_TIMEOUT_S), so it stayed reserved in the driver's state
    for good."""
    monkeypatch.setattr(executor, "LOAD_TIMEOUT_S", 0.5)

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = TablePeer(ep, "host-1-cpu0", load_s=None)
        try:
            await _ready_workers(c, 1)
            c.driver.apply(A.Prewarm("pw-1", MODEL, (0,), 1.0), c.now_s())
            assert peer.models == {} and await until(lambda: peer.models == {MODEL: "loading"}, 1)
            assert await until(lambda: "pw-1" not in c.state.prewarms, 2), "the prewarm stays reserved"
            assert "pw-1" not in c.prewarms
            assert await until(lambda: peer.models == {}, 1), peer.models  # the Evict cancelled the load
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())


def test_a_replaced_process_that_does_not_exit_fails_the_start(model):
    """autoscale's cold start replaces a GPU worker's process and waits for the old one to exit (its pool is sized
    from the device memory then free), with no bound: an old process that never exits held the start, and every
    later start of the model (one creation in flight per model), for good."""
    async def main():
        c = make_controller(model, policy="autoscale", restart_backoff_s=0.02)
        c.config = dataclasses.replace(c.config, worker_start_timeout_s=1.0)
        ep = await c.start()
        procs, wid = [], "host-1-gpu0"

        def spawn():
            cls = WorkerProc if procs else StuckProc
            p = sleeper(cls)
            p.peer = Peer(ep, wid, pid=p.pid, device="cuda:0")
            procs.append(p)
            return p

        add_local_worker(c, wid, spawn)
        try:
            await c.wait_for_workers(1, 5)
            req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))  # cold start: the process is replaced
            assert await until(lambda: c.replacing, 2)
            assert await until(lambda: not c.replacing, 3), "the start waits for the old process for good"
            assert c.metrics.workers_lost.get() == 1 and not c.state.instances  # failed: the GPU is lost
            assert len(procs) == 1  # nothing spawned while the old process holds the device
            procs[0].release()  # it exits at last: the restart brings the GPU back, the request is served
            assert await asyncio.wait_for(collect(req), 8) == [5, 6, 7]
        finally:
            procs[0].release()
            stop(procs)
            await c.close(drain=False)

    run(main())


class UnkillableProc(StuckProc):
    """A StuckProc that SIGTERM does not end either."""

    def terminate(self):
        if not self.stuck:
            super().terminate()


def test_a_process_that_never_exits_does_not_hold_the_controller_s_close(model, monkeypatch):
    """A lost worker's process that SIGKILL does not end: its restart waited in a thread for good, and close() too
    (the shutdown hung). Now the restart gives up when the controller closes and close() leaves the process."""
    # close() waits REAP_WAIT_S after SIGTERM and again after SIGKILL for a process that ignores both (10 s at the
    # default 5 s): a fraction of a second shows the same giving up, and a close that hangs for good still does.
    monkeypatch.setattr(restarts, "REAP_WAIT_S", 0.3)

    async def main():
        c = make_controller(model, policy="autoscale", restart_backoff_s=0.02)
        ep = await c.start()
        wid = "host-1-gpu0"
        p = sleeper(UnkillableProc)
        p.peer = Peer(ep, wid, pid=p.pid, device="cuda:0")
        c.local_spawn[wid.encode()] = lambda: None  # never reached: the restart waits for the exit first
        c.local_procs[wid.encode()] = p
        try:
            await c.wait_for_workers(1, 5)
            p.peer.close()
            c.hub.lose(c.hub.workers[wid.encode()], "test: gone silent")  # its restart kills it: it stays
            assert await until(lambda: c.restarting, 2)
            await asyncio.sleep(0.3)
            await asyncio.wait_for(c.close(drain=False), 15)  # hung for good before
            assert p.poll() is None and not c.restarting
        finally:
            p.release()
            p.wait()

    run(main())


class RefusedAdmissionPeer(Peer):
    """A worker whose admission fails (its answer to the admission's GetStats is an error)."""

    async def send(self, msg):
        if isinstance(msg, P.Stats) and msg.id:
            msg = P.Error.of(msg.id, WarmServeError("stats are broken on this worker"))
        await super().send(msg)


def test_a_replacement_lost_while_admitted_counts_one_loss(model):
    """A fresh engine's process lost while being admitted was counted in workers_lost twice: once by _on_lost (its
    record) and once by _replace_failed (the replacement it ended)."""
    async def main():
        # The restart waits 0.3 s: the replacement sees its process gone first (a restarted process admitted
        # before that would be taken as the successor).
        c = make_controller(model, policy="autoscale", restart_backoff_s=0.3)
        ep = await c.start()
        procs, wid = [], "host-1-cpu0"

        def spawn():
            p = sleeper()
            p.peer = (RefusedAdmissionPeer if len(procs) == 1 else Peer)(ep, wid, pid=p.pid)
            procs.append(p)
            return p

        add_local_worker(c, wid, spawn)
        try:
            await c.wait_for_workers(1, 5)
            req = c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3))  # cold start: the process is replaced
            assert await until(lambda: c.replacing, 2)
            assert await until(lambda: not c.replacing, 4)
            assert await asyncio.wait_for(collect(req), 8) == [5, 6, 7]  # on the process the restart started
            assert len(procs) >= 3 and c.metrics.workers_lost.get() == 1
        finally:
            stop(procs)
            await c.close(drain=False)

    run(main())


def test_a_close_whose_abort_loses_a_worker_sends_nothing_elsewhere(model):
    """close() failed each in-flight request and fired an Abort for it on its (remote) worker; an Abort that could
    not be sent lost the worker, whose other requests, not failed yet, were started over: re-routed to another
    worker during the shutdown (and the ones failed already counted as lost with the worker)."""
    async def main():
        # No heartbeat is due during the test: the first send to the closed peer is close()'s Abort.
        c = make_controller(model, policy="dedicated", heartbeat_interval_s=5.0, worker_timeout_s=12.0)
        ep = await c.start()
        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-2-cpu0")
        try:
            assert await until(lambda: len(c.state.instances) == 2 and all(i.ready for i in c.state.instances.values()),
                               4)
            for p in peers:
                p.hold_generate = True
            reqs = [c.submit_nowait(MODEL, [1], SamplingParams(max_tokens=3)) for _ in range(4)]
            assert await until(lambda: sum(len(w.gens) for w in c.gpu_workers) == 4, 2)
            w = max(c.gpu_workers, key=lambda x: len(x.gens))
            assert len(w.gens) >= 2
            gone = next(p for p in peers if p.wid == w.worker_id)
            other = next(p for p in peers if p is not gone)
            gone.close()  # its socket goes: a send to it fails (ROUTER_MANDATORY) once the disconnect is seen
            await asyncio.sleep(0.3)
            sent = sum(isinstance(m, P.Generate) for m in other.got)
            assert c.metrics.workers_lost.get() == 0  # the loss comes from close()'s own Abort
            await c.close(drain=False)
            await asyncio.sleep(0.2)
            assert c.metrics.workers_lost.get() == 1
            assert sum(isinstance(m, P.Generate) for m in other.got) == sent, "a request was sent on during close"
            assert c.metrics.rerouted.get(model=MODEL) == 0
            assert c.metrics.requests.get(model=MODEL, outcome="worker_lost") == 0
            assert all(isinstance(r.error, OverloadedError) for r in reqs), [r.error for r in reqs]
        finally:
            for p in peers:
                p.close()

    run(main())
