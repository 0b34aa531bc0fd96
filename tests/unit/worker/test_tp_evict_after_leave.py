"""An Evict that reaches a follower rank whose stop was accepted but not yet done (LeaveGroup or Deactivate while
its thread holds the engine) drops the shard once the stop is done, instead of being refused.

Behind a CI failure, most likely: the leader of a tp = 2 instance was SIGKILLed under load, and the controller told
the surviving follower to leave the group and then to evict its shard. With the follower's thread inside a step,
the LeaveGroup left the instance listed (closed when the thread ends) and the Evict was refused ("running"); once
the thread ended the shard stayed, prewarmed, on a worker the controller held to be empty, and every later start
of the model there was refused ("already prewarmed") for the rest of the run.

The test holds the follower's engine lock (as a step does) while the LeaveGroup and the Evict come, so the moment
is the same on every run. In a subprocess, as test_tp_leave_midstep.py: a crash fails the test, not pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SETUP = textwrap.dedent('''
    import sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from warmserve import errors, protocol as P
    from warmserve.worker import InProcessWorker

    ws = [InProcessWorker("cpu", memory_gib=0.125, prefault=False, worker_id=f"rank{r}") for r in range(2)]
    port = ws[0].host_group_store()
    with ThreadPoolExecutor(2) as ex:
        for f in [ex.submit(w.join_group, "g", r, 2, port, group_timeout_s=20) for r, w in enumerate(ws)]:
            f.result(60)
        for r, w in enumerate(ws):
            w.prewarm(sys.argv[1], "m", tp=2, rank=r)
        for f in [ex.submit(w.activate, "m", group_id="g") for w in ws]:
            f.result(60)
    lead, fol = ws
    fi = fol.core.instances["m"]

    def evict_follower():
        try:
            return fol.evict("m", timeout_s=30)
        except errors.WarmServeError as e:
            print(f"EVICT REFUSED: {type(e).__name__}: {e}")
            sys.exit(3)

    def nothing_left():
        st = fol.stats()
        assert st.instances == [] and st.models == [], st
        assert st.pool.free_pages == st.pool.total_pages, st.pool  # no weight or KV page left
        fol.prewarm(sys.argv[1], "m", tp=2, rank=1)  # nothing in the way of the model's next shard there
''')

MID_STEP = SETUP + textwrap.dedent('''
    out = {}

    def gen():
        try:
            lead.generate("m", list(range(1, 50)), P.SamplingParams(max_tokens=200, temperature=0.0,
                                                                    ignore_eos=True)).collect()
        except BaseException as e:
            out["err"] = e

    t = threading.Thread(target=gen)
    t.start()
    while fi.tp.steps < 3:
        time.sleep(0.005)
    fi.tp.lock.acquire()  # between two plans: the follower's thread now waits for it, as if inside a step
    fol.leave_group("g")  # accepted; the engine is closed once the thread lets go of it
    assert "m" in fol.core.instances and fol.core.models["m"].state == "running"
    # Let go a moment after the Evict has come (it is applied as it is sent, on this thread).
    threading.Timer(0.5, fi.tp.lock.release).start()
    t0 = time.monotonic()
    evicted = evict_follower()
    assert evicted.name == "m" and evicted.freed_bytes > 0, evicted
    assert time.monotonic() - t0 < 10
    t.join(30)
    assert isinstance(out.get("err"), errors.WorkerLostError), out  # the leader sees a lost rank
    nothing_left()
    lead.deactivate("m")
    for w in ws:
        w.close()
    print("OK")
''')

ENDED = SETUP + textwrap.dedent('''
    lead.deactivate("m")  # the leader's stop plan ends the follower's thread; nothing closes its instance yet
    assert fi.tp.join(30)
    fol.stats()  # a tick: the instance is broken, still listed
    assert fol.core.models["m"].state == "running"
    evicted = evict_follower()
    assert evicted.name == "m" and evicted.freed_bytes > 0, evicted
    nothing_left()
    for w in ws:
        w.close()
    print("OK")
''')


def _run(script: str, path: str) -> None:
    r = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stdout[-1000:], r.stderr[-3000:])


def test_an_evict_after_a_follower_s_leave_group_mid_step_drops_the_shard_once_its_thread_ends(tiny_models):
    _run(MID_STEP, tiny_models["tiny-llama"])


def test_an_evict_of_a_follower_whose_thread_ended_closes_it_and_drops_the_shard(tiny_models):
    """Its leader stopped it (or its group failed) and no Deactivate or LeaveGroup came: nothing runs there any
    more, so the Evict that says the controller wants the weights gone closes it first."""
    _run(ENDED, tiny_models["tiny-llama"])
