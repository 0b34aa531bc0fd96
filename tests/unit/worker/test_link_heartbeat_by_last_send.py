"""A connected worker's link sends a Heartbeat once nothing at all has gone to the controller for one interval.
Found in review: it sent one only at its own beat times, and only once the engine's current turn had lasted an
interval, so a long step (a CPU prefill) that began just before a Stats push was due left the controller up to ~3
intervals without a message, past the 2x worker_timeout_s that ControllerConfig accepts: a healthy worker was
declared lost and restarted, again and again. Driven here on a scripted clock, poller and sockets: deterministic."""

from __future__ import annotations

import collections
import types

import zmq

from warmserve import protocol as P
from warmserve.worker import link as wlink

INTERVAL_S = 1.0


def _run(monkeypatch, script) -> list[tuple[float, str]]:
    """Run the link thread's loop on a fake clock until the script stops it; what it sent to the controller, with
    when. ``script``: (at_s, action(link, pipe)) sorted by time; the fake poller jumps from one to the next."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(wlink, "time", types.SimpleNamespace(monotonic=lambda: clock.now,
                                                              time=lambda: 1.7e9 + clock.now))
    sent: list[tuple[float, str]] = []
    pipe = collections.deque()

    class Sock:
        def send(self, data, flags=0):
            sent.append((clock.now, "Stats" if data == b"stats" else type(P.decode_reply(data)).__name__))

        def close(self, linger=None):
            pass

    class Pipe:
        def recv_multipart(self, flags=0):
            if not pipe:
                raise zmq.Again()
            return pipe.popleft()

        def close(self, linger=None):
            pass

    events = list(script)

    class Poller:
        def register(self, sock, flags):
            pass

        def poll(self, timeout_ms):
            assert clock.now < 100, "the link never stopped"
            if pipe:
                return [(link.pipe, zmq.POLLIN)]
            until = clock.now + max(timeout_ms, 0.1) / 1000  # a poll of 0 ms still lets time pass
            if events and events[0][0] <= until:
                at, act = events.pop(0)
                clock.now = max(clock.now, at)
                act(link, pipe)
                return [(link.pipe, zmq.POLLIN)] if pipe else []
            clock.now = until
            return []

    monkeypatch.setattr(wlink.zmq, "Poller", Poller)
    link = wlink.Link(Sock(), Pipe(), routed=False, endpoint="tcp://controller", heartbeat_interval_s=INTERVAL_S,
                      hello=P.Hello(worker_id="w1", device="cpu", pid=1), peer_timeout_s=1e6,
                      max_messages_per_drain=64)
    link.controller_heard, link._owe_hello = True, False  # admitted: the controller has answered
    link.last_seen[wlink.CONTROLLER] = 0.0
    link.run()
    return sent


def _turn(at: float, stats: bool = False):
    def act(link, pipe):
        # What the engine loop wrote at each turn before the fix (the link reads it no more), and its Stats push.
        link.engine_turn_s = at
        if stats:
            pipe.append([wlink.SEND, wlink.CONTROLLER, b"stats"])
    return act


def test_a_long_step_begun_just_before_a_stats_push_leaves_no_more_than_an_interval_of_silence(monkeypatch):
    # Idle: a turn each 1/8 s and a Stats push each interval (1/4, 1 1/4, 2 1/4); then one step of 4 s begins at
    # 3 1/8, just before the Stats due at 3 1/4, and ends with a Stats push. The link's own beats fall on 0, 1, 2...
    script = [(k / 8, _turn(k / 8, stats=k % 8 == 2)) for k in range(25)]
    script += [(3.125, _turn(3.125)), (7.125, _turn(7.125, stats=True)),
               (8.0, lambda link, pipe: pipe.append([wlink.STOP]))]
    sent = _run(monkeypatch, script)
    times = [t for t, _ in sent]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Before: nothing from the Stats at 2.25 until the link's beat at 5.0 (2.75 intervals).
    assert max(gaps) <= INTERVAL_S + 0.01, sent
    # While the engine pushes its Stats each interval they are the heartbeats: the link adds none.
    assert [k for t, k in sent if t < 3.125] == ["Stats"] * 3, sent
    assert [k for t, k in sent if 3.125 <= t < 7.125] == ["Heartbeat"] * 4, sent
