"""``Cluster.close(drain=False)`` from another thread while a first, draining close is starting (found in review):
its cut (``Controller.end_drain``) reached the loop before the first close's drain began, which then set its
deadline afresh, so the caller who asked for no drain waited the whole ``drain_timeout_s``. The real Cluster close,
finalizer, Controller (its own __init__) and drain loop; the controller has no workers (a stand-in hub), and one
request stays in flight that nobody reads (``_drainable``)."""

import asyncio
import threading
import time
import types
import weakref

from warmserve.config import ClusterConfig, ControllerConfig
from warmserve.controller.cluster import Cluster, _shutdown
from warmserve.controller.controller import Controller
from warmserve.controller.loopgate import LoopGate

DRAIN_S = 20.0


class _Unread(Controller):
    def _drainable(self):
        return True  # a generation in flight that nobody reads


def _cluster(model) -> Cluster:
    ctl = _Unread(ClusterConfig(models=(model.spec,), controller=ControllerConfig(drain_timeout_s=DRAIN_S)), [model])
    ctl.hub = types.SimpleNamespace(workers={}, close=lambda: None)
    c = Cluster.__new__(Cluster)  # as Cluster.__init__ leaves it once its controller started
    c._loop = asyncio.new_event_loop()
    c._gate = LoopGate(c._loop, "warmserve-controller")
    c._thread = c._gate.thread
    c._closed, c._close_lock, c.controller = False, threading.Lock(), ctl
    c._drain_on_close = [True]
    c._finalizer = weakref.finalize(c, _shutdown, c._gate, ctl, c._drain_on_close)
    return c


def test_a_close_without_drain_cuts_a_draining_close_that_has_not_begun_its_drain(model):
    c = _cluster(model)
    c._loop.call_soon_threadsafe(time.sleep, 0.3)  # the loop busy a moment (a tick, a decode)
    time.sleep(0.05)
    t0 = time.monotonic()
    first = threading.Thread(target=c.close)  # e.g. the with-block's normal exit, on another thread
    first.start()
    time.sleep(0.05)
    c.close(drain=False)  # while the first close's coroutine waits for the busy loop
    took_s = time.monotonic() - t0
    first.join(DRAIN_S + 10)
    assert took_s < DRAIN_S / 2, f"close(drain=False) waited {took_s:.1f} s, the drain is {DRAIN_S:g} s"
    assert not first.is_alive()
