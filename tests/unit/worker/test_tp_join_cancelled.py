"""A join under way is given up as soon as its group is left (found in review: a rank whose peer died while their
group was built waited out the 30 s rendezvous, and the joins queued behind it on its worker, the rebuilt group's
among them, waited too: the tensor-parallel model's next request took 22-29 s). Real GroupTables, real gloo groups
at a real loopback store; two tables in one process stand for two workers."""

import socket
import time

from warmserve import protocol as P
from warmserve.worker.tp_groups import GroupTable

#: Every join here could wait this long; the tests pass in a fraction of it or not at all.
TIMEOUT_S = 30.0


def _drive(tables, until, limit_s: float) -> float:
    """Poll the tables (as a worker's loop does) until ``until()``; the seconds it took."""
    t0 = time.monotonic()
    while not until():
        assert time.monotonic() - t0 < limit_s, "the joins were not answered in time"
        for t in tables:
            t.poll()
        time.sleep(0.01)
    return time.monotonic() - t0


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_leaving_a_group_whose_peer_never_came_frees_the_join_queued_behind_it():
    said_a, said_b = [], []
    a = GroupTable("cpu", lambda peer, msg: said_a.append(msg))
    b = GroupTable("cpu", lambda peer, msg: said_b.append(msg))
    port = a.host_store()
    try:
        # g-dead's rank 1 never comes (its worker died); g-new, queued behind it on a, is the rebuilt group.
        a.join(b"ctl", P.JoinGroup(id=1, group_id="g-dead", rank=0, world_size=2, store_port=port,
                                   timeout_s=TIMEOUT_S))
        a.join(b"ctl", P.JoinGroup(id=2, group_id="g-new", rank=0, world_size=2, store_port=port,
                                   timeout_s=TIMEOUT_S))
        b.join(b"ctl", P.JoinGroup(id=3, group_id="g-new", rank=1, world_size=2, store_port=port,
                                   timeout_s=TIMEOUT_S))
        time.sleep(0.2)
        a.poll()
        assert a.joining() and not said_a
        a.leave("g-dead")
        took_s = _drive([a, b], lambda: not a.joining() and not b.joining(), TIMEOUT_S / 2)
        assert took_s < 10, took_s
        dead, built = said_a
        assert isinstance(dead, P.Error) and dead.id == 1 and "was left while this worker joined it" in dead.message
        assert isinstance(built, P.GroupJoined) and built.id == 2  # (a join ends with a collective of the ranks)
        assert [type(m) for m in said_b] == [P.GroupJoined]
    finally:
        a.close()
        b.close()


def test_a_follower_whose_store_is_gone_is_freed_by_a_leave_and_otherwise_times_out():
    said = []
    b = GroupTable("cpu", lambda peer, msg: said.append(msg))
    try:
        b.join(b"ctl", P.JoinGroup(id=1, group_id="g-gone", rank=1, world_size=2, store_port=_dead_port(),
                                   timeout_s=TIMEOUT_S))
        time.sleep(0.2)
        b.poll()
        assert b.joining()
        b.leave("g-gone")
        assert _drive([b], lambda: not b.joining(), TIMEOUT_S / 2) < 5
        (left,) = said
        assert isinstance(left, P.Error) and "was left while this worker joined it" in left.message

        # Not left: it gives up at its own timeout, naming why.
        b.join(b"ctl", P.JoinGroup(id=2, group_id="g-gone-2", rank=1, world_size=2, store_port=_dead_port(),
                                   timeout_s=0.5))
        assert _drive([b], lambda: not b.joining(), TIMEOUT_S / 2) < 5
        timed_out = said[1]
        assert isinstance(timed_out, P.Error) and timed_out.type == "WorkerLostError"
        assert "did not accept" in timed_out.message and "rank 0's worker is gone" in timed_out.message
    finally:
        b.close()
