"""Where an engine step's wall time goes, phase by phase, on any device: the scheduler's pick (``schedule``), the
forward pass as the host sees it (``forward``: the compute itself on a CPU; on a GPU, packing the inputs and
launching the kernels or replaying a decode graph, which return before the device is done), the wait for the
device (``wait``: a synchronize put in front of sampling, which would block on the first token read back anyway),
sampling and appending the tokens (``sample``), and the rest of ``Engine.step`` (KV tidying, step records).

On a GPU, ``wait`` is the device's share of a step that the host covers, and every other phase is time the
device idles between steps unless it is still busy: so ``host_us`` (the step less its wait) bounds what launching
step n+1 before step n's token is read back could hide (bench/engine/README.md: 0.15 ms of a 1.10 ms batch-1
step of the 1b demo on an H200, inferred from a kernel profile). Used by bench/gpu_graphs.py (part 8).
"""

from __future__ import annotations

import time

def step_phases(eng, steps: int, sync=None) -> dict:
    """Run up to ``steps`` steps of ``eng`` (its requests added; stops early when none is left) with each phase
    timed; sync: the device's synchronize (None on a CPU, where nothing is left to wait for). Returns the steps run
    and microseconds per step of each phase, of the whole step, and of the host's part (step less wait). The
    engine's methods are wrapped on the instance for the run and restored after, also when a step raises."""
    acc = {"run": 0.0, "schedule": 0.0, "wait": 0.0, "sample": 0.0}
    scheduler = eng.scheduler
    schedule, run, sample = scheduler.schedule, eng._run, eng._sample

    def timed(name, fn):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                acc[name] += time.perf_counter() - t0
        return wrapper

    def waited_sample(*args, **kw):
        if sync is not None:
            t0 = time.perf_counter()
            sync()
            acc["wait"] += time.perf_counter() - t0
        return timed("sample", sample)(*args, **kw)

    scheduler.schedule, eng._run, eng._sample = timed("schedule", schedule), timed("run", run), waited_sample
    total, n = 0.0, 0
    try:
        while n < steps and eng.has_unfinished():
            t0 = time.perf_counter()
            eng.step()
            total += time.perf_counter() - t0
            n += 1
        if sync is not None:
            sync()
    finally:
        del scheduler.schedule, eng._run, eng._sample  # the class's methods again
    per = 1e6 / max(n, 1)
    out = {"steps": n, "step_us": total * per, "schedule_us": acc["schedule"] * per,
           "forward_us": (acc["run"] - acc["wait"] - acc["sample"]) * per, "wait_us": acc["wait"] * per,
           "sample_us": acc["sample"] * per}
    out["rest_us"] = out["step_us"] - out["schedule_us"] - acc["run"] * per
    out["host_us"] = out["step_us"] - out["wait_us"]
    return out


def phases_line(label: str, p: dict) -> str:
    """One line of text for a step_phases result."""
    return (f"{label}: {p['step_us']:.0f} us a step over {p['steps']} steps: schedule {p['schedule_us']:.0f}, "
            f"forward (launch) {p['forward_us']:.0f}, wait for the device {p['wait_us']:.0f}, sample "
            f"{p['sample_us']:.0f}, rest {p['rest_us']:.0f}; the host's part {p['host_us']:.0f} us")
