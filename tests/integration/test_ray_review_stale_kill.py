"""A Ray worker's kill made late, on its thread, after the Ray connection its actor was made on has closed, on a real
local Ray cluster. Found in review: a pytest worker aborted inside Ray ("Check failed: Cannot find an actor handle",
in a KillActor from a thread) when a Cluster started after the last one had closed the process's connection. The
kill of an actor whose worker had exited (``RayWorkerProcess._settle``, on a thread) could run after that close:
``ray.kill`` then connected the process again by itself (one of Ray's auto-init APIs; the next Cluster's ``ray.init``
failed "Perhaps you called ray.init twice"), or ran across the shutdown, or on the next connection, which does not
know the handle. Now such a kill is skipped, and a close waits for the kills in flight.

Checks: a kill after the close leaves the process disconnected; one from the closed connection on the next connection
is skipped, and the next connection's own actor is still killed; rounds of kills fired at random moments across a
close and the next connect (as the controller's reap leaves them) leave every connect working, every kill of the
current connection done, and no thread with an exception. The test takes 15 to 20 s here: Ray's head about 3 s, a
round about 4 s (starting its actors' worker processes is most of it). Runs in private network and PID namespaces, as
tests/integration/test_ray.py does (Ray binds the machine's outward address).
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
import time

import pytest

from log_lines import LogLines
from ray_namespaces import NO_LOG_MONITOR, passed, split_run

#: The run inside the namespaces, seconds: Ray's head (about 5 s), ROUNDS + 2 connects and closes (2 to 5 s each).
INSIDE_LIMIT_S = 120
#: Rounds of kills fired across a close and the next connect.
ROUNDS = 3
#: Actors per round, and the latest a round's kill is fired after the close begins, seconds. The close and the next
#: connect take about 0.3 s here (the close 0.2 to 0.3 s, the connect under 0.1 s): kill i of a round fires at a
#: random moment in the i-th of ACTORS equal parts of LATEST_KILL_S, so that every round has kills across the close
#: and the connect (the first part) and on the next connection (the others), not only where chance puts them. With
#: 2 s and uniform moments (6 rounds before), 85 % of the kills fell on the next connection, and one round in two
#: had none across the close: 3 rounds so spread fire more kills there than 6 did.
ACTORS, LATEST_KILL_S = 4, 0.8

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # a Ray cluster needs the machine to itself


def test_a_kill_made_after_its_ray_connection_closed_is_skipped_and_crashes_nothing(tmp_path):
    out = split_run(__file__, "test_a_kill_made_after_its_ray_connection_closed_is_skipped_and_crashes_nothing",
                    tmp_path, INSIDE_LIMIT_S, _inside, ())
    if out is not None:
        print(out[-1500:])


def _inside() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    import ray
    from ray.cluster_utils import Cluster

    from warmserve.controller import ray_connect
    from warmserve.controller.ray_launch import ACTOR_DIED_STATUS, RayNode, RayWorkerProcess, plan_slots

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                            **NO_LOG_MONITOR})
    (slot,) = plan_slots([RayNode("ab" * 14, "127.0.0.1", "h", 1.0, 0)], cpu_workers=1, tag="r1")
    seen = LogLines(logging.DEBUG)
    logger = logging.getLogger("warmserve.controller")
    logger.addHandler(seen)
    logger.setLevel(logging.DEBUG)

    @ray.remote(num_cpus=0)
    class Idle:  # defined here: pickled by value, so Ray's workers need not import this test file
        def run(self, hold_s: float) -> int:
            time.sleep(hold_s)
            return 0

    def proc(connection, hold_s: float = 300.0) -> RayWorkerProcess:
        actor = Idle.remote()
        return RayWorkerProcess(actor, actor.run.remote(hold_s), slot, connection=connection)

    # A kill after the close, before any other connection: skipped, and the process stays disconnected.
    first = ray_connect.acquire(1, cluster.address)
    late, later = proc(first), proc(first)
    assert ray_connect.release(1) == ["ray.shutdown"]
    late.kill(wait=True)
    assert not ray.is_initialized(), "a kill after the close connected the process to Ray again"
    # From the closed connection, on the next one (which does not know the handle): skipped.
    second = ray_connect.acquire(2, cluster.address)
    assert second != first, (first, second)
    later.kill(wait=True)
    assert sum("skipped" in line for line in seen.lines) == 2, seen.lines
    assert not [line for line in seen.lines if "not valid across Ray sessions" in line], seen.lines
    # The current connection's own actor is killed as before.
    current = proc(second)
    current.kill(wait=True)
    assert current.wait(10) == ACTOR_DIED_STATUS, current.exit_reason
    assert ray_connect.release(2) == ["ray.shutdown"]
    print("late kills skipped:", [line for line in seen.lines if "skipped" in line], flush=True)

    # Kills on threads at random moments across a close and the next connect, as the controller's reap leaves them
    # (the worker exited, the actor's kill on a thread of its own, the launcher closing meanwhile).
    rng = random.Random(7)
    for n in range(ROUNDS):
        conn = ray_connect.acquire(10 + n, cluster.address)
        procs = [proc(conn, hold_s=0.0) for _ in range(ACTORS)]
        for p in procs:
            p._done.result(30)  # the worker exited: its actor is still alive until killed
        part = LATEST_KILL_S / ACTORS
        fired = [threading.Timer(rng.uniform(i * part, (i + 1) * part), p.poll)  # poll settles: kill()
                 for i, p in enumerate(procs)]
        for t in fired:
            t.start()
        assert ray_connect.release(10 + n) == ["ray.shutdown"]
        again = ray_connect.acquire(100 + n, cluster.address)  # failed "ray.init twice" before the fix
        mine = proc(again)
        for t in fired:
            t.join()
        time.sleep(0.2)  # the kills' own threads
        assert ray.get(Idle.remote().run.remote(0.0), timeout=30) == 0  # the connection works
        mine.kill(wait=True)
        assert mine.wait(10) == ACTOR_DIED_STATUS, mine.exit_reason
        assert ray_connect.release(100 + n) == ["ray.shutdown"]
        assert not ray.is_initialized()
        print(f"round {n}: {sum('skipped' in line for line in seen.lines)} kills skipped so far", flush=True)
    time.sleep(LATEST_KILL_S)
    assert not ray.is_initialized(), "a late kill connected the process to Ray again"
    passed()
