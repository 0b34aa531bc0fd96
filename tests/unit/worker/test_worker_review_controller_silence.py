"""A connected worker whose controller never answers says so at WARNING. Found in review: `warmserve worker
--controller tcp://127.0.0.1:5596` with nothing listening (or a host that does not resolve) waited for ever without a
word at the default --log-level WARNING; the one hint ("not reachable yet") was at INFO. The link is driven on a fake
clock with a socket that refuses every send (as ZeroMQ does with IMMEDIATE while not connected)."""

from __future__ import annotations

import logging
import types

import zmq

from warmserve import protocol as P
from warmserve.worker import main as worker_main
from warmserve.worker import link as wlink

ENDPOINT = "tcp://127.0.0.1:5596"


def _link(monkeypatch, clock):
    monkeypatch.setattr(wlink, "time", types.SimpleNamespace(monotonic=lambda: clock.now,
                                                              time=lambda: 1.7e9 + clock.now))

    class Sock:  # not connected: every send refused
        def send(self, data, flags=0):
            raise zmq.Again()

    return wlink.Link(Sock(), None, routed=False, endpoint=ENDPOINT, heartbeat_interval_s=1.0,
                      hello=P.Hello(worker_id="w1", device="cpu", pid=1), peer_timeout_s=1e6,
                      max_messages_per_drain=64)


def _beats(link, clock, until_s: float) -> None:
    while clock.now < until_s:
        link._beat(clock.now)
        clock.now += 1.0


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "warmserve.worker"]


def test_a_controller_that_never_answers_is_a_warning_after_a_while_then_rarely(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="warmserve.worker")
    clock = types.SimpleNamespace(now=0.0)
    link = _link(monkeypatch, clock)
    _beats(link, clock, wlink.CONTROLLER_SILENT_WARN_S - 1)
    # At first only the INFO note: a controller that starts a little later is normal.
    assert not _warnings(caplog)
    assert any("not reachable yet" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    _beats(link, clock, wlink.CONTROLLER_SILENT_WARN_S + 1)
    warned = _warnings(caplog)
    assert len(warned) == 1, warned
    assert ENDPOINT in warned[0] and "--controller" in warned[0] and "warmserve serve" in warned[0], warned
    # Repeated rarely: once per CONTROLLER_SILENT_REPEAT_S, not each heartbeat.
    _beats(link, clock, wlink.CONTROLLER_SILENT_WARN_S + wlink.CONTROLLER_SILENT_REPEAT_S + 1)
    assert len(_warnings(caplog)) == 2, _warnings(caplog)
    assert 5.0 <= wlink.CONTROLLER_SILENT_WARN_S <= 60.0 and wlink.CONTROLLER_SILENT_REPEAT_S >= 60.0


def test_a_controller_that_answered_is_not_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(wlink, "CONTROLLER_SILENT_WARN_S", 3.0)
    caplog.set_level(logging.INFO, logger="warmserve.worker")
    clock = types.SimpleNamespace(now=0.0)
    link = _link(monkeypatch, clock)
    link.controller_heard, link._owe_hello = True, False
    link._heard_s = 0.0
    _beats(link, clock, 10.0)
    assert not _warnings(caplog)


def test_a_controller_host_that_does_not_resolve_is_a_warning_not_a_refusal(monkeypatch, caplog):
    # A warning: in containers a name may resolve only once its service is up.
    caplog.set_level(logging.INFO, logger="warmserve.worker")
    worker_main.warn_unresolved_controller("tcp://nosuchhost.invalid:5555")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "nosuchhost.invalid" in warned[0] and "--controller" in warned[0], warned
    caplog.clear()
    for ok in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/x"):
        worker_main.warn_unresolved_controller(ok)
    assert not caplog.records
