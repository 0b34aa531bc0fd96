"""Tensor-parallel instances on real `warmserve worker` processes: a process group built ahead, a tp-2 prewarm
activated with no copy on both ranks, tokens equal to tp = 1, and the loss of a rank under load.

Each rank is its own worker process with its own page pool, driven over ZeroMQ by one client per worker. Calls
that meet in the group (join, activate) are sent to both workers from two threads; their results (and any
exception) come back to the test's thread through the futures.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import WorkerClient, spawn_local_worker

GREEDY = P.SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
MODEL = "llama-20m"


@pytest.fixture(scope="module")
def model_path() -> str:
    from warmserve.engine.demo import write_demo_models

    return write_demo_models(None, (MODEL,))[MODEL]


_STARTED = itertools.count()


def _spawn(n: int, log_dir) -> list:
    """n workers started at once (each start is mostly an import of torch)."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: spawn_local_worker(
            "cpu", memory_gib=0.25, threads=1, peer_timeout_s=5.0,
            log_path=str(log_dir / f"worker-{next(_STARTED)}.log")), range(n)))


@pytest.fixture(scope="module")
def _kept(tmp_path_factory):
    """The worker pair a test left clean, kept for the next one (starting two workers took most of each test's
    time on the 2-core machine); its log folder."""
    kept: list = []
    yield kept, tmp_path_factory.mktemp("workers")
    for procs, clients in kept:
        _close(procs, clients)


@pytest.fixture
def pair(_kept):
    """(procs, clients) of two workers holding no model, group or instance: the pair of a test before, if that test
    left both alive and everything could be evicted and left with every page back in the pool; else new ones."""
    kept, log_dir = _kept
    if kept:
        procs, clients = kept.pop()
    else:
        procs = _spawn(2, log_dir)
        clients = [WorkerClient(ep) for _, ep in procs]
    yield procs, clients
    if _cleaned(procs, clients):
        kept.append((procs, clients))
    else:
        _close(procs, clients)


def _cleaned(procs, clients) -> bool:
    """Leave every group and evict every model on both workers; whether both are alive and back to nothing."""
    if any(proc.poll() is not None for proc, _ in procs):
        return False
    try:
        for c in clients:
            st = c.stats(timeout_s=2)  # a worker just killed may not have exited yet: not its full timeout
            for g in st.groups:
                c.leave_group(g, timeout_s=10)
            for m in st.models:
                c.evict(m.name, timeout_s=10)
            st = c.stats(pages=True, timeout_s=10)
            if (st.models or st.instances or st.groups or st.in_flight
                    or st.pool.free_pages != st.pool.total_pages):
                return False
        return True
    except Exception:  # a worker in a state a later test must not meet: new ones for it
        return False


def _both(fn0, fn1, timeout_s: float = 60.0):
    """Run two calls at once (they meet in a collective); their results, or the first exception, here."""
    with ThreadPoolExecutor(2) as pool:
        f0, f1 = pool.submit(fn0), pool.submit(fn1)
        return f0.result(timeout_s), f1.result(timeout_s)


def _reference(path: str, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy tokens of the whole model (tp = 1), in this process, on one torch thread as a CPU worker runs: with
    two, on a 2-core machine that the workers keep busy, each op waits on the other thread (7-10 s, not 0.5 s)."""
    import torch

    from warmserve.engine import Engine, load_model
    from warmserve.memory import PagePool

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pool = PagePool(256 << 20, backend="host")
        lm = load_model(path, pool).wait()
        try:
            with Engine(lm) as eng:
                return eng.generate(prompts, GREEDY)
        finally:
            lm.close()
            pool.close()
    finally:
        torch.set_num_threads(threads)


#: Group ids joined in this module. A pair passes from test to test, and rank 0's rendezvous store keeps the keys
#: of every group id it served for the life of its worker: a group joined again under one of them meets the old
#: ranks' addresses (gloo: connection refused, after the whole group timeout). So each test joins ids of its own.
_JOINED: set[str] = set()


def _group(clients, gid: str) -> list[P.GroupJoined]:
    assert gid not in _JOINED, f"group id {gid!r} was joined by an earlier test of this module: use a new one"
    _JOINED.add(gid)
    port = clients[0].host_group_store()
    return list(_both(lambda: clients[0].join_group(gid, 0, 2, port), lambda: clients[1].join_group(gid, 1, 2, port)))


def _start(clients, path: str, gid: str) -> list[P.Activated]:
    for r, c in enumerate(clients):
        c.prewarm(path, MODEL, tp=2, rank=r)
    return list(_both(lambda: clients[0].activate(MODEL, group_id=gid),
                      lambda: clients[1].activate(MODEL, group_id=gid)))


def _close(procs, clients) -> None:
    """Shut both workers down at once (each takes a second or more to exit), killing any that does not go."""
    for c in clients:
        c.close()
    for proc, endpoint in procs:
        if proc.poll() is None:
            try:
                with WorkerClient(endpoint) as c:
                    c.shutdown(timeout_s=10)
            except Exception:  # already going down; killed below if it stays
                pass
    for proc, _ in procs:
        try:
            proc.wait(timeout=10)
        except Exception:
            proc.kill()
            proc.wait(10)


def test_tp2_instance_matches_tp1_activates_without_copy_and_stops_cleanly(model_path, pair):
    _, clients = pair
    joined = _group(clients, "tp2-a")
    assert all(j.group_id == "tp2-a" and j.setup_s > 0 and j.backend == "gloo" for j in joined)
    assert clients[1].stats().groups == ["tp2-a"]
    acts = _start(clients, model_path, "tp2-a")
    # A prewarm of a tp model is a prewarm of every shard: activation copies nothing on either rank.
    assert [a.copied_bytes for a in acts] == [0, 0]
    assert acts[0].kv_blocks == acts[1].kv_blocks >= 1

    prompts = [[1, 5, 9, 200, 17], list(range(3, 40)), [7] * 300]
    streams = [clients[0].generate(MODEL, p, GREEDY) for p in prompts]
    got = [s.collect()[0] for s in streams]
    assert got == _reference(model_path, prompts)

    # A sampled request without a seed: the leader gives every rank the same one, so nothing diverges.
    sampled = clients[0].generate(MODEL, [3, 4, 5], P.SamplingParams(max_tokens=8, temperature=1.0,
                                                                     ignore_eos=True)).collect()
    assert len(sampled[0]) == 8
    # Requests go to rank 0; the follower refuses them with the fix in the message.
    with pytest.raises(errors.ModelStateError, match="rank 0"):
        clients[1].generate(MODEL, [1, 2, 3], GREEDY).collect()
    with pytest.raises(errors.ModelStateError, match="rank 0"):
        clients[1].set_kv_target(MODEL, 2)

    # The KV reservation: the leader passes a new target on in order; both ranks map the same blocks.
    lead_kv = clients[0].set_kv_target(MODEL, 1).kv
    assert lead_kv.kv_free_target == 1 and lead_kv.kv_blocks_free <= 1
    clients[0].generate(MODEL, prompts[2], GREEDY).collect()  # a step: the follower has the target too
    clients[0].set_kv_target(MODEL, 3)
    clients[0].generate(MODEL, prompts[0], GREEDY).collect()  # grows back, together
    (lead,) = clients[0].stats().instances
    for _ in range(100):  # the follower steps on a thread of its own, a moment behind (a CI run saw it so)
        (follow,) = clients[1].stats().instances
        if follow.kv.kv_blocks_used == 0 and follow.kv.kv_blocks_mapped == lead.kv.kv_blocks_mapped:
            break
        time.sleep(0.05)
    assert (follow.group_id, follow.rank) == ("tp2-a", 1)
    assert lead.kv.kv_free_target == follow.kv.kv_free_target == 3
    assert lead.kv.kv_blocks_mapped == follow.kv.kv_blocks_mapped == 3
    # Stop: the leader first (it tells the follower), then the follower answers once its loop ended.
    clients[0].deactivate(MODEL)
    assert clients[1].deactivate(MODEL, timeout_s=30).name == MODEL
    # The group outlives the instance: a second activation binds it again, with no new rendezvous.
    acts = _both(lambda: clients[0].activate(MODEL, group_id="tp2-a"),
                 lambda: clients[1].activate(MODEL, group_id="tp2-a"))
    assert [a.copied_bytes for a in acts] == [0, 0]
    assert clients[0].generate(MODEL, prompts[0], GREEDY).collect()[0] == got[0]


def test_bench_tp_measures_every_path_side_by_side(tmp_path, monkeypatch):
    import argparse
    import tempfile

    from warmserve.bench import tp as bench_tp

    # bench tp spawns its workers with their default log, a temporary file: made under tmp_path here, and deleted
    # by the bench once its run succeeded (found in review: every run left them in /tmp)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    p = argparse.ArgumentParser()
    bench_tp.add_arguments(p)
    res = bench_tp.run(p.parse_args(["--repeats", "1", "--memory-gib", "0.25"]))
    med = res["median_s"]
    assert set(med) == {"group_setup_s", "group_setup_rank_s", "activate_prewarmed_group_s",
                        "activate_on_demand_group_s", "cold_start_s", "first_token_s", "tp1_activate_s"}
    assert all(v > 0 for v in med.values())
    assert res["on_demand_over_prewarmed"] > 0 and res["cold_over_prewarmed"] > 0
    assert not list(tmp_path.glob("warmserve-worker-*.log"))


def test_bench_tp_starts_its_workers_at_once_and_a_failed_start_stops_the_others(tmp_path, monkeypatch):
    import tempfile

    from warmserve import worker
    from warmserve.bench import tp as bench_tp

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the failed worker's log, which its error names
    started, real = [], worker.spawn_local_worker

    def spawn(*a, **kw):  # the real start, recorded
        out = real(*a, **kw)
        started.append(out[0])
        return out

    monkeypatch.setattr(worker, "spawn_local_worker", spawn)
    pool = ThreadPoolExecutor(2)
    # a device this machine lacks: its worker refuses it and exits before it is ready
    with pytest.raises(errors.WorkerLostError, match=r"--device cuda:99: (no|only \d+) CUDA device"):
        bench_tp._start_workers(pool, ["cpu", "cuda:99"], 0.25)
    assert len(started) == 1 and started[0].poll() is not None  # the cpu worker was killed and reaped
    # its log went with it; the failed worker's, which the error names, stays
    assert not os.path.exists(started[0].log_path) and len(list(tmp_path.glob("warmserve-worker-*.log"))) == 1


def test_a_rank_that_cannot_activate_fails_every_rank_at_once(model_path, pair):
    _, clients = pair
    _group(clients, "tp2-c")
    clients[0].prewarm(model_path, MODEL, tp=2, rank=0)  # rank 1 has no shard
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        f0 = pool.submit(lambda: clients[0].activate(MODEL, group_id="tp2-c"))
        f1 = pool.submit(lambda: clients[1].activate(MODEL, group_id="tp2-c"))
        with pytest.raises(errors.UnknownModelError):
            f1.result(60)
        with pytest.raises(errors.ModelStateError, match="another rank"):
            f0.result(60)
    assert time.monotonic() - t0 < 10  # not the group's 30 s timeout
    # The group is still in step: with the shard there, both ranks activate and serve.
    clients[1].prewarm(model_path, MODEL, tp=2, rank=1)
    acts = _both(lambda: clients[0].activate(MODEL, group_id="tp2-c"),
                 lambda: clients[1].activate(MODEL, group_id="tp2-c"))
    assert [a.copied_bytes for a in acts] == [0, 0]
    assert len(clients[0].generate(MODEL, [1, 2, 3], GREEDY).collect()[0]) == GREEDY.max_tokens


def test_a_worker_joins_its_groups_one_at_a_time_in_the_order_they_came(model_path, pair):
    """NCCL needs every rank to build its communicators in the same order, so a worker queues its joins. A join
    whose peer never comes holds the next one until its own timeout; a queued join that is left is answered at
    once."""
    procs, clients = pair
    extra = [WorkerClient(procs[0][1]) for _ in range(2)]  # more callers of rank 0's worker, one per thread
    try:
        port = clients[0].host_group_store()
        assert not _JOINED & {"stuck", "g", "left"}, _JOINED
        _JOINED.update({"stuck", "g", "left"})
        with ThreadPoolExecutor(4) as pool:
            stuck = pool.submit(lambda: clients[0].join_group("stuck", 0, 2, port, group_timeout_s=3.0))
            time.sleep(0.5)  # "stuck" came first
            g0 = pool.submit(lambda: extra[0].join_group("g", 0, 2, port))
            g1 = pool.submit(lambda: clients[1].join_group("g", 1, 2, port))
            time.sleep(0.5)
            left = pool.submit(lambda: extra[1].join_group("left", 0, 2, port))
            time.sleep(0.5)
            t0 = time.monotonic()
            clients[1].leave_group("left")  # a no-op there: rank 1's worker never heard of it
            with WorkerClient(procs[0][1]) as c:
                c.leave_group("left")
            with pytest.raises(errors.ModelStateError, match="left before this worker's turn"):
                left.result(10)
            assert time.monotonic() - t0 < 2  # answered at once, not after "stuck" and "g"
            # and before "stuck" timed out: an answer that waited for its turn would come only ~1.5 s after the
            # leave (stuck's 3 s less the sleeps), which the bound above cannot tell from "at once"
            assert not stuck.done()
            with pytest.raises(errors.WorkerLostError, match="could not join group 'stuck'"):
                stuck.result(20)
            joined = [g0.result(30), g1.result(30)]
        # Rank 0's worker began "g" only after "stuck" timed out; rank 1's waited in the rendezvous meanwhile.
        assert joined[0].setup_s >= 2.0 and joined[1].setup_s >= 2.0
        assert clients[0].stats().groups == ["g"] and clients[1].stats().groups == ["g"]
        # The group works: a tp-2 instance activates in it.
        acts = _start(clients, model_path, "g")
        assert [a.copied_bytes for a in acts] == [0, 0]
    finally:
        for c in extra:
            c.close()


def test_a_follower_deactivate_waiting_for_its_leader_is_answered_when_the_group_is_left(model_path, pair):
    """Found in review: a follower answers a Deactivate once its leader stops the instance; if the controller drops
    the group first (LeaveGroup), the instance was closed there and the Deactivate never answered."""
    procs, clients = pair
    other = WorkerClient(procs[1][1])  # a second caller of rank 1's worker
    try:
        _group(clients, "tp2-d")
        _start(clients, model_path, "tp2-d")
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(lambda: clients[1].deactivate(MODEL, timeout_s=15))
            time.sleep(1.0)
            assert not pending.done()  # waits for the leader's stop
            other.leave_group("tp2-d")
            t0 = time.monotonic()
            assert pending.result(15).name == MODEL
            assert time.monotonic() - t0 < 5
        assert other.stats().instances == [] and other.stats().groups == []
    finally:
        other.close()


def test_killing_a_rank_under_load_ends_every_request_and_the_group(model_path, pair):
    procs, clients = pair
    _group(clients, "tp2-b")
    _start(clients, model_path, "tp2-b")
    long = P.SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    streams = [clients[0].generate(MODEL, [1 + i, 2, 3], long) for i in range(4)]
    first = next(iter(streams[0]))  # the instance is running
    assert first.token_ids
    os.kill(procs[1][0].pid, signal.SIGKILL)
    t0 = time.monotonic()
    ended = []
    for s in streams:
        try:
            s.collect()
            ended.append("finished")
        except errors.WorkerLostError as e:
            assert "lost a rank" in str(e)
            ended.append("lost")
    # Nothing hangs: every request ended, at once (gloo sees the closed connection), most with the error.
    assert time.monotonic() - t0 < 20
    assert "lost" in ended
    # The broken instance takes no request; after LeaveGroup the model is prewarmed again on rank 0.
    with pytest.raises(errors.WorkerLostError):
        clients[0].generate(MODEL, [1, 2], GREEDY).collect()
    clients[0].leave_group("tp2-b")
    st = clients[0].stats()
    assert st.instances == [] and st.groups == []
    assert [(m.name, m.state, m.tp, m.rank) for m in st.models] == [(MODEL, "prewarmed", 2, 0)]
