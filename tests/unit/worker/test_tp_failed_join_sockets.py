"""A join whose peer never comes fails after its timeout and leaves nothing listening (found in review: the kept
exception and its traceback made a reference cycle with the join's frames, which held the half-built gloo group
and its listening socket until a full garbage collection, minutes later on a worker). A real GroupTable and a real
gloo rendezvous at the worker's own loopback store, rank 1 never joining; the collector off, so only what
reference counting frees is gone."""

import gc
import os
import time

from warmserve import protocol as P
from warmserve.worker.tp_groups import GroupTable


def _listening_sockets() -> int:
    """TCP sockets of this process in the LISTEN state."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed since
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            n += sum(1 for line in list(f)[1:] if line.split()[3] == "0A" and line.split()[9] in inodes)
    return n


def test_a_failed_join_answers_the_error_and_keeps_no_socket_listening():
    gc.collect()
    gc.disable()
    try:
        _fail_a_join()
    finally:
        gc.enable()


def _fail_a_join():
    said = []
    table = GroupTable("cpu", lambda peer, msg: said.append(msg))
    port = table.host_store()
    before = _listening_sockets()
    table.join(b"ctl", P.JoinGroup(id=7, group_id="g-lonely", rank=0, world_size=2, store_port=port, timeout_s=1.0))
    deadline = time.monotonic() + 30
    while table.joining():
        assert time.monotonic() < deadline
        table.poll()
        time.sleep(0.05)
    (err,) = said
    assert isinstance(err, P.Error) and err.type == "WorkerLostError" and "could not join group" in err.message
    assert _listening_sockets() == before
    table.close()
