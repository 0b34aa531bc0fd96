"""Worker faults from a review (2026-11-30), each failing before its fix: a Deactivate whose KV unmap fails part way
(the pool's fault injection: the host backend's PROT_NONE refused) left a closed engine listed, so every Stats
failed, a connected worker sent no heartbeat and was declared lost, and the model could not be activated again; a
Stats that fails no longer silences the worker; and in a tensor-parallel group that serves, an Activate is refused
at once (it voted on the group's control channel and killed the running instance), and a SetKvTarget whose unmap
fails on the leader still reaches the other ranks."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from warmserve import _C, errors
from warmserve import protocol as P
from warmserve.memory import PagePool
from warmserve.worker import InProcessWorker
from warmserve.worker.core import WorkerCore
from warmserve.worker.server import WorkerServer

from test_tp_lockstep import MODEL as TP_MODEL
from test_tp_lockstep import tp2_workers

GREEDY = P.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


@pytest.fixture
def fail_unmap():
    """fail_unmap(k): the k-th page unmap from now fails (a DriverError), in this whole process."""
    yield lambda k: _C._debug_fail_after("protect_hard", k)
    _C._debug_fail_after("protect_hard", 0)


def test_a_deactivate_whose_unmap_fails_can_be_retried_and_leaves_the_worker_whole(tiny_models, fail_unmap):
    with InProcessWorker("cpu", memory_gib=64 / 1024, prefault=False) as w:
        w.prewarm(tiny_models["tiny-llama"])
        w.activate("tiny-llama", kv_target_free_blocks=4)
        want = w.generate("tiny-llama", [1, 2, 3], GREEDY).collect()[0]
        fail_unmap(2)
        with pytest.raises(errors.DriverError):
            w.deactivate("tiny-llama")
        st = w.stats()  # raised ClosedError at every call: the closed engine stayed listed
        (inst,) = st.instances
        assert inst.name == "tiny-llama" and inst.kv.kv_blocks_used == 0
        with pytest.raises(errors.ClosedError):
            w.generate("tiny-llama", [1, 2, 3], GREEDY).collect()
        w.deactivate("tiny-llama")  # the retry unmaps what is left
        st = w.stats(pages=True)
        assert not st.instances and [m.state for m in st.models] == ["prewarmed"]
        assert set(st.pool.pages_by_tag) - {"free"} == {"prewarm:tiny-llama"}
        w.activate("tiny-llama", kv_target_free_blocks=4)  # "overlaps page 14, which is already mapped" before
        assert w.generate("tiny-llama", [1, 2, 3], GREEDY).collect()[0] == want
        w.deactivate("tiny-llama")
        w.evict("tiny-llama")
        pool = w.stats().pool
        assert pool.free_bytes == pool.total_bytes


def test_a_connected_worker_whose_stats_fail_still_sends_heartbeats():
    """The controller hears a connected worker through its Stats pushes, and its link adds heartbeats only while
    the engine loop stalls; a Stats that failed at every beat left the controller hearing nothing."""
    ctx = zmq.Context()
    ctl = ctx.socket(zmq.ROUTER)
    ctl.setsockopt(zmq.LINGER, 0)
    port = ctl.bind_to_random_port("tcp://127.0.0.1")
    pool = PagePool(16 << 20, prefault=False)
    core = WorkerCore(pool, device="cpu", worker_id="w1", emit=lambda peer, msg: None)
    srv = WorkerServer(core, controller=f"tcp://127.0.0.1:{port}", heartbeat_interval_s=0.2)
    errors_in_thread: list[BaseException] = []

    def serve():
        try:
            srv.serve_forever()
        except BaseException as e:  # reaches the test's thread below
            errors_in_thread.append(e)

    def heard(seconds: float, enough=lambda kinds: False) -> dict[str, int]:
        """What the controller's socket got in ``seconds``, or until ``enough(kinds)`` (polled, not slept out)."""
        kinds: dict[str, int] = {}
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not enough(kinds):
            if ctl.poll(int(left * 1000)):
                _, data = ctl.recv_multipart()
                name = type(P.decode_reply(data)).__name__
                kinds[name] = kinds.get(name, 0) + 1
        return kinds

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert "Hello" in heard(3.0, lambda kinds: "Hello" in kinds)
        ctl.send_multipart([b"w1", P.encode(P.GetStats(id=1))])  # the controller is heard: pushes begin
        assert heard(1.5, lambda kinds: kinds.get("Stats", 0) >= 2).get("Stats", 0) >= 2

        def broken(*args, **kwargs):
            raise errors.ClosedError("an engine closed under its Stats")

        core.stats = broken
        got = heard(1.5)
        assert got.get("Heartbeat", 0) >= 3 and "Stats" not in got, got
    finally:
        core.stopping = True
        t.join(10)
        ctl.close(0)
        ctx.term()
        pool.close()
    assert not t.is_alive() and not errors_in_thread, errors_in_thread


@pytest.mark.slow
def test_an_activate_in_a_group_that_serves_is_refused_at_once_and_the_instance_serves_on(tiny_models):
    # a group timeout of 3 s: over the refusal's 2 s bound below (the bug waited it out) and three keep-alives
    # (tp.KEEPALIVE_S), and the idle spell past it is 2 s shorter than at 5 s
    with tp2_workers(tiny_models, group_timeout_s=3.0) as (lead, follow):
        want = lead.generate(TP_MODEL, [1, 2, 3, 4], GREEDY).collect()[0]
        for w, name in ((lead, TP_MODEL), (follow, TP_MODEL), (lead, "no-such-model")):
            t0 = time.monotonic()
            with pytest.raises(errors.ModelStateError, match="serves the tensor-parallel instance"):
                w.activate(name, group_id="g")
            assert time.monotonic() - t0 < 2.0  # before: the group's whole timeout, then the instance was dead
        end = time.monotonic() + 4.0  # past the group's timeout, the leader idle (its keep-alives): still in step
        while time.monotonic() < end:
            lead.core.tick()
            time.sleep(0.05)
        assert lead.generate(TP_MODEL, [1, 2, 3, 4], GREEDY).collect()[0] == want


@pytest.mark.slow
def test_a_kv_target_whose_unmap_fails_on_the_leader_still_reaches_the_other_ranks(tiny_models):
    with tp2_workers(tiny_models, kv_target_free_blocks=6) as (lead, follow):
        lead.generate(TP_MODEL, [1, 2, 3], GREEDY).collect()
        engines = [w.core.instances[TP_MODEL].engine for w in (lead, follow)]
        # the follower applies the leader's last plan on its own thread, a moment after the leader's answer
        # (CI217: [6, 7] read at once)
        deadline = time.monotonic() + 10
        while [e.kv_stats().kv_blocks_mapped for e in engines] != [6, 6] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.kv_stats().kv_blocks_mapped for e in engines] == [6, 6]
        mapper = engines[0].kv.mapper
        real = mapper.unmap_block

        def fails_once(block):
            mapper.unmap_block = real
            raise errors.DriverError("injected: an unmap the driver refused")

        mapper.unmap_block = fails_once  # the leader's only
        with pytest.raises(errors.DriverError):
            lead.set_kv_target(TP_MODEL, 1)
        want = lead.generate(TP_MODEL, [1, 2, 3], GREEDY).collect()[0]
        assert len(want) == GREEDY.max_tokens
        deadline = time.monotonic() + 10  # as above
        while len({e.kv_stats().kv_blocks_mapped for e in engines}) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = [e.kv_stats() for e in engines]
        assert [s.kv_free_target for s in stats] == [1, 1]  # the follower kept 6 before
        assert stats[0].kv_blocks_mapped == stats[1].kv_blocks_mapped == 1


@pytest.mark.slow
def test_a_group_passes_from_one_model_to_another_when_the_follower_reads_both_messages_at_once(tiny_models):
    """The controller stops a tp-2 instance and activates another model in the same group (groups outlive
    instances). A follower that reads the Deactivate and the Activate in one drain still lists the first instance
    (its Deactivate waits for its loop to end at the leader's stop). Found in a review of the refusal above: the
    follower refused, and the leader waited out the group's timeout in the vote."""
    with tp2_workers(tiny_models, group_timeout_s=5.0, kv_blocks=4) as (lead, follow):
        lead.generate(TP_MODEL, [1, 2, 3], GREEDY).collect()
        for r, w in enumerate((lead, follow)):
            w.prewarm(tiny_models[TP_MODEL], "B", tp=2, rank=r)
        replies: list = []
        real_emit = follow.core.emit
        follow.core.emit = lambda peer, msg: replies.append(msg) if peer == b"ctl" else real_emit(peer, msg)
        stop, failed = threading.Event(), []

        def follower():  # its worker's main thread: both messages of one drain, then its ticks
            try:
                follow.core.handle(b"ctl", P.Deactivate(id=1, name=TP_MODEL))
                follow.core.handle(b"ctl", P.Activate(id=2, name="B", kv_blocks=4, group_id="g"))
                while not stop.is_set():
                    follow.core.tick()
                    time.sleep(0.002)
            except BaseException as e:  # reaches the test's thread below
                failed.append(e)

        t = threading.Thread(target=follower, daemon=True)
        t.start()
        try:
            time.sleep(0.2)
            lead.deactivate(TP_MODEL)
            t0 = time.monotonic()
            lead.activate("B", kv_blocks=4, group_id="g", timeout_s=30)
            assert time.monotonic() - t0 < 3.0
        finally:
            stop.set()
            t.join(10)
        assert not t.is_alive() and not failed, failed
        assert [type(m).__name__ for m in replies] == ["Deactivated", "Activated"], replies
        assert list(lead.core.instances) == list(follow.core.instances) == ["B"]
        follow.core.emit = real_emit
        assert len(lead.generate("B", [1, 2, 3], GREEDY).collect()[0]) == GREEDY.max_tokens


@pytest.mark.slow
def test_a_tp_leaders_deactivate_retried_after_a_failed_release_sends_no_second_stop(tiny_models):
    """The retry of a leader's Deactivate whose release failed sent the stop plan again to followers that had
    stopped at the first, and waited out the group's timeout (found in a review of the retry above)."""
    with tp2_workers(tiny_models, group_timeout_s=5.0) as (lead, follow):
        lead.generate(TP_MODEL, [1, 2, 3], GREEDY).collect()
        mapper = lead.core.instances[TP_MODEL].engine.kv.mapper
        real = mapper.unmap_block

        def fails_once(block):
            mapper.unmap_block = real
            raise errors.DriverError("injected: an unmap the driver refused")

        mapper.unmap_block = fails_once
        with pytest.raises(errors.DriverError):
            lead.deactivate(TP_MODEL)
        follow.deactivate(TP_MODEL)  # as the controller sends it to every rank
        t0 = time.monotonic()
        lead.deactivate(TP_MODEL)
        assert time.monotonic() - t0 < 2.0
        assert not lead.core.instances and not follow.core.instances

