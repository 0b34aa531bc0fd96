"""A Ray worker's kill and the Ray connection it was made on (``ray_connect.call_on``), with a stand-in ``ray`` that
behaves as Ray does where it matters: ``ray.kill`` connects a process that is not connected (an auto-init API), and a
handle is known only to the connection that made it. Found in review: a pytest worker aborted inside Ray ("Check
failed: Cannot find an actor handle", in a KillActor from a thread) when a Cluster started after the last one had
closed the connection: the kill, made late on its thread, ran after (or across) the shutdown. The real-Ray check is
tests/integration/test_ray_review_stale_kill.py."""

from __future__ import annotations

import concurrent.futures
import itertools
import sys
import threading
import time
import types

import pytest

from warmserve.controller import ray_connect
from warmserve.controller.ray_launch import ACTOR_DIED_STATUS, RayNode, RayWorkerProcess, plan_slots

(SLOT,) = plan_slots([RayNode("ab" * 14, "10.0.0.2", "h2", 4.0, 0)], cpu_workers=1, tag="r1")


class _StandInRay:
    """A connection is a job number; an actor handle is its (job, number). ``kill`` of a handle of another job
    aborts (Ray's RAY_CHECK: recorded), and, when not connected, connects first as Ray's auto-init does."""

    def __init__(self):
        self.job = 0
        self.jobs = itertools.count(1)
        self.connected = False
        self.kill_gate = threading.Event()
        self.kill_gate.set()
        self.killing = threading.Event()
        self.kills: list[tuple[int, int]] = []
        self.events: list[str] = []

    def is_initialized(self):
        return self.connected

    def init(self):
        assert not self.connected, "Perhaps you called ray.init twice by accident?"
        self.connected, self.job = True, next(self.jobs)
        self.events.append(f"init job {self.job}")

    def shutdown(self):
        self.events.append(f"shutdown job {self.job}")
        self.connected = False

    def get_runtime_context(self):
        if not self.connected:
            self.init()  # as Ray's: an auto-init API
        return types.SimpleNamespace(get_job_id=lambda: f"{self.job:08x}", get_node_id=lambda: "cd" * 28)

    def kill(self, actor, no_restart=True):
        if not self.connected:
            self.events.append("ray.kill connected the process again")
            self.init()
        self.killing.set()
        self.kill_gate.wait(5)
        if actor.job != self.job or not self.connected:
            self.events.append(f"abort: Cannot find an actor handle of job {actor.job} in job {self.job}")
        else:
            self.kills.append((actor.job, actor.n))
            actor.done.set_exception(RuntimeError("the actor was killed"))

    def actor(self, n: int):
        done = concurrent.futures.Future()
        return types.SimpleNamespace(job=self.job, n=n, done=done,
                                     _actor_id=types.SimpleNamespace(hex=lambda: f"{self.job:04x}{n:04x}"))


@pytest.fixture
def ray(monkeypatch):
    ray = _StandInRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr(ray_connect, "probe_head", lambda address: None)
    monkeypatch.setattr(ray_connect, "greet_head", lambda address: None)
    monkeypatch.setattr(ray_connect, "_init_within", lambda address, timeout_s: ray.init())
    monkeypatch.setattr(ray_connect, "_users", set())
    monkeypatch.setattr(ray_connect, "_owned", None)
    monkeypatch.setattr(ray_connect, "_in_flight", 0)
    return ray


def _proc(ray, n: int, connection) -> RayWorkerProcess:
    actor = ray.actor(n)
    return RayWorkerProcess(actor, types.SimpleNamespace(future=lambda: actor.done), SLOT, connection=connection)


def test_a_kill_from_a_closed_connection_is_skipped_after_the_close_and_on_the_next_connection(ray):
    first = ray_connect.acquire(1, "10.0.0.1:6379")
    late, later = _proc(ray, 1, first), _proc(ray, 2, first)
    assert ray_connect.release(1) == ["ray.shutdown"]
    # After the close, before any other connection: skipped, and the process left disconnected (before the fix,
    # ray.kill connected it again, beside the next launcher's ray.init).
    late.kill(wait=True)
    assert not ray.connected, ray.events
    second = ray_connect.acquire(2, "10.0.0.1:6379")
    assert second != first
    # On the next connection, which does not know the handle: skipped (before the fix: Ray's abort).
    later.kill(wait=True)
    current = _proc(ray, 3, second)
    current.kill(wait=True)  # one of the current connection's is killed as before
    assert current.wait(1) == ACTOR_DIED_STATUS
    assert ray.kills == [(2, 3)]
    assert not [e for e in ray.events if e.startswith(("abort", "ray.kill connected"))], ray.events
    assert ray_connect.release(2) == ["ray.shutdown"]


def test_the_last_close_waits_for_a_kill_in_flight_before_it_shuts_the_connection_down(ray):
    conn = ray_connect.acquire(1, "10.0.0.1:6379")
    proc = _proc(ray, 1, conn)
    ray.kill_gate.clear()
    # As the controller's reap leaves it: the kill on a thread of its own, still in Ray when the launcher closes.
    proc.kill()
    assert ray.killing.wait(2)
    closer = threading.Thread(target=ray_connect.release, args=(1,))
    closer.start()
    time.sleep(0.3)
    assert closer.is_alive() and ray.connected, "the shutdown did not wait for the kill in flight"
    # A connect meanwhile waits too (it would find the connection that is closing).
    opener = threading.Thread(target=ray_connect.acquire, args=(2, "10.0.0.1:6379"))
    opener.start()
    ray.kill_gate.set()
    closer.join(5)
    opener.join(5)
    assert not closer.is_alive() and not opener.is_alive()
    assert ray.events == ["init job 1", "shutdown job 1", "init job 2"], ray.events
    assert ray.kills == [(1, 1)]
    ray_connect.release(2)


def test_a_kill_that_never_returns_holds_the_shutdown_only_for_calls_drain_s(ray, monkeypatch, caplog):
    monkeypatch.setattr(ray_connect, "CALLS_DRAIN_S", 0.3)
    conn = ray_connect.acquire(1, "10.0.0.1:6379")
    ray.kill_gate.clear()  # a GCS that does not answer
    _proc(ray, 1, conn).kill()
    assert ray.killing.wait(2)
    t0 = time.monotonic()
    assert ray_connect.release(1) == ["ray.shutdown"]
    assert 0.25 < time.monotonic() - t0 < 2
    assert any("still running" in r.getMessage() for r in caplog.records)
    ray.kill_gate.set()
    deadline = time.monotonic() + 5
    while ray_connect._in_flight and time.monotonic() < deadline:  # before the fixture puts the count back
        time.sleep(0.01)
    assert ray_connect._in_flight == 0
