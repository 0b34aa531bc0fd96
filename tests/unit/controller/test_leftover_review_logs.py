"""Log lines left from the review of the logs. An instance id made by the policies (MODEL/iN) is named without
"of MODEL" after it ("instance llama-20m/i1 of llama-20m" said the model twice), one of another form still with
it; a worker that said it drains and whose connection is then found gone by a send left with what is known of its
end, not "send failed: its connection is gone (process exited, or network cut)"; a shutdown without a drain names
the interpreter exiting with a Cluster open among its causes (exit_close.py closes such a Cluster so). Scripted
peers on real ZeroMQ sockets (controller_harness), and a real process for the worker that left."""

import logging
import subprocess
import sys

import pytest

from warmserve import protocol as P
from warmserve.controller.workers import WorkerHub, WorkerRecord
from warmserve.errors import WorkerLostError
from warmserve.policy import actions as A
from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, TablePeer, make_controller, run, until

LOGGER = "warmserve.controller"


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


@pytest.mark.parametrize("iid, named", [(f"{MODEL}/i7", f"instance {MODEL}/i7 "), ("i-7", f"instance i-7 of {MODEL} ")])
def test_an_instance_line_names_its_model_once(model, caplog, iid, named):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = TablePeer(ep, "host-1-cpu0", load_s=0.05)
        try:
            assert await until(lambda: any(w.ready for w in c.gpu_workers), 5)
            c.driver.apply(A.StartInstance(iid, MODEL, (0,)), c.now_s())
            assert await until(lambda: iid in c.state.instances and c.state.instances[iid].ready, 5)
            c.driver.apply(A.StopInstance(iid), c.now_s())
            assert await until(lambda: any(" stopped by the policy" in m for m in _lines(caplog)), 5)
        finally:
            await c.close(drain=False)
            peer.close()

    run(main())
    ready = [m for m in _lines(caplog) if " ready on " in m]
    stopped = [m for m in _lines(caplog) if " stopped by the policy" in m]
    assert len(ready) == 1 and len(stopped) == 1, _lines(caplog)
    for line in ready + stopped:
        assert line.startswith(named) and line.count(MODEL) == 1, line


def _record(proc: subprocess.Popen, draining: bool) -> WorkerRecord:
    w = WorkerRecord("w0", b"w0", "cpu", proc.pid, 1 << 30, 1 << 21, "h", proc=proc)
    w.draining = draining
    return w


@pytest.mark.parametrize("draining", [True, False])
def test_a_worker_gone_before_a_send_is_said_as_it_left(caplog, draining):
    """Its routing id has no connection (the process exited): the send fails with EHOSTUNREACH."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    lost = []
    hub = WorkerHub("tcp://127.0.0.1:0", on_hello=None, on_event=None, on_lost=lambda w, why: lost.append(why))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        proc.wait(30)
        w = _record(proc, draining)
        with pytest.raises(WorkerLostError):
            hub.send(w, P.encode(P.Rejoin()))
        assert not w.alive and len(lost) == 1
    finally:
        proc.kill()
        proc.wait()
        hub.close()
    said = [m for m in _lines(caplog) if m.startswith(repr(w))]
    assert len(said) == 1, _lines(caplog)
    if draining:
        assert said[0].endswith(f" left after draining: process {proc.pid} exited with status 0 (its connection "
                                "closed)"), said
    else:  # a worker that said nothing of leaving: its loss, as before
        assert said[0].endswith(" lost: send failed: its connection is gone (process exited, or network cut)"), said


def test_a_shutdown_without_a_drain_names_an_open_cluster_at_exit_among_its_causes(model, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        c = make_controller(model)
        ep = await c.start()
        peer = Peer(ep)
        peer.hold_generate = True  # the request runs until the shutdown
        try:
            await c.wait_for_workers(1, 5)
            c.submit_nowait(MODEL, [1, 2, 3], SamplingParams(max_tokens=3))
            assert await until(lambda: any(type(m).__name__ == "Generate" for m in peer.got), 5)
            await c.close(drain=False)
        finally:
            peer.close()

    run(main())
    (line,) = [m for m in _lines(caplog) if m.startswith("shutdown: ")]
    assert line.endswith("stopped without a drain (a second Ctrl-C or SIGTERM, close(drain=False), or the "
                         "interpreter exiting with a warmserve.Cluster still open)"), line
