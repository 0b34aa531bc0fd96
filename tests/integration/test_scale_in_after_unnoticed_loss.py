"""A scale-in applied in the same policy tick as a worker death the controller has not noticed yet, on a real CPU
cluster: the StopInstance's Deactivate cannot be sent, which runs the loss handling in the middle of the tick, and
the Prewarm that keeps the stopped instance's weights (the scale-in's next action) comes after it."""

import os
import signal
import time

import zmq

from warmserve import SamplingParams
from warmserve.policy import actions as A

import serving

MODELS = ("llama-20m", "qwen2-30m")


def _until_unreachable(hub, ident: bytes, timeout_s: float = 5.0) -> None:
    """Until the controller's socket finds the killed worker's connection gone (ROUTER_MANDATORY refuses a send to
    it), so that the tick's first send to it fails, as when the death came just before the tick. Probed with an
    empty frame straight on the socket: no loss is run, and a dead peer reads nothing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            hub.sock.send_multipart([ident, b""], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return
            raise
        time.sleep(0.01)
    raise AssertionError(f"the killed worker's connection still looks up after {timeout_s} s")


def test_a_scale_in_in_the_tick_of_an_unnoticed_worker_death_leaves_the_policy_working():
    """Found in review: the Prewarm landed on the GPU the failed send had just marked gone; every later tick raised
    KeyError (no board has a gone GPU), requests of other models waited until their timeout, and a request
    submitted meanwhile got a bare KeyError and stayed queued."""
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    with serving.demo_cluster(models=MODELS, cpu_workers=2, cpu_worker_memory_bytes=512 << 20,
                              restart_backoff_s=0.2) as c:
        ctl = c.controller
        assert c.generate("llama-20m", [5, 17, 300], params=params).completion_tokens == 2
        (iid, inst), = [(i, x) for i, x in ctl.instances.items() if x.ready and x.model == "llama-20m"]
        w, gpus = inst.worker, ctl.state.instances[iid].gpus

        async def scale_in_after_death():
            # All on the controller's loop, in one turn: no heartbeat or tick runs between the death and the tick.
            os.kill(w.pid, signal.SIGKILL)
            _until_unreachable(ctl.hub, w.ident)
            now = ctl.now_s()
            # What the policy's scale-in of an idle instance emits (Policy._stop): the stop, then its weights kept.
            for act in (A.StopInstance(iid), A.Prewarm(f"{iid}/kept", "llama-20m", gpus, 1.0, kept_from=iid)):
                ctl.driver.apply(act, now)
            st = ctl.state
            placed = {p: x.gpus for p, x in st.prewarms.items() if any(st.gpus[g].gone for g in x.gpus)}
            ctl.driver.tick(ctl.now_s())  # raised KeyError
            return [st.gpus[g].gone for g in gpus], placed

        gone, placed = c._run(scale_in_after_death(), 30)
        assert gone == [True] * len(gpus) and placed == {}
        # The other worker serves the other model: the ticks, and route(), still work.
        assert c.generate("qwen2-30m", [5, 17, 300], params=params, timeout_s=60).completion_tokens == 2
        stats = c.stats()
        assert not any(stats["queued"].values()), stats["queued"]
