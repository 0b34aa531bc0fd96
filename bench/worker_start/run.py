"""Local CPU worker start and restart, forked from the fork server (worker/forkserver.py) against fresh
interpreters, side by side in one run.

    python bench/worker_start/run.py [--repeats 3] [--json out.json]

For each mode (forked, fresh) and repeat: a Cluster of two CPU workers serving the demo llama-20m is started (time
to a served request), then one worker is SIGKILLed and the time until its restart is admitted is measured (the
controller's restart back-off, 0.5 s by default, included). Prints the medians and the ratios fresh / forked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time

from warmserve import Cluster
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.engine.demo import write_demo_models

MODEL = "llama-20m"


def one_run(path: str, forked: bool) -> dict:
    cfg = ClusterConfig(models=(ModelSpec(path=path),), cpu_workers=2, cpu_worker_memory_bytes=512 << 20,
                        cpu_worker_threads=1, fork_cpu_workers=forked,
                        controller=ControllerConfig(heartbeat_interval_s=0.2, worker_timeout_s=2.0))
    t0 = time.monotonic()
    c = Cluster(None, config=cfg)
    try:
        c.generate(MODEL, "hello", max_tokens=1, temperature=0)
        start_s = time.monotonic() - t0
        ident, victim = next(iter(c.controller.local_procs.items()))
        t1 = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        while True:
            proc = c.controller.local_procs.get(ident)
            w = c.controller.hub.workers.get(ident)
            if proc is not victim and w is not None and w.proc is proc and w.ready:
                break
            if time.monotonic() - t1 > 120:
                raise TimeoutError("the killed worker was not back within 120 s")
            time.sleep(0.01)
        restart_s = time.monotonic() - t1
    finally:
        c.close()
    return {"start_s": start_s, "restart_s": restart_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_demo_models(tmp, [MODEL])[MODEL]
        runs = {"forked": [], "fresh": []}
        for i in range(args.repeats):  # interleaved, so that the machine's load falls on both alike
            for mode in runs:
                runs[mode].append(one_run(path, mode == "forked"))
                print(f"repeat {i + 1}/{args.repeats} {mode}: {runs[mode][-1]}", flush=True)
    out = {mode: {k: statistics.median(r[k] for r in rs) for k in ("start_s", "restart_s")}
           for mode, rs in runs.items()}
    out["fresh_over_forked"] = {k: out["fresh"][k] / out["forked"][k] for k in ("start_s", "restart_s")}
    out["runs"] = runs
    print(f"{'':8}{'start s':>10}{'restart s':>11}")
    for mode in ("forked", "fresh"):
        print(f"{mode:8}{out[mode]['start_s']:10.2f}{out[mode]['restart_s']:11.2f}")
    r = out["fresh_over_forked"]
    print(f"{'fresh/forked':12}{r['start_s']:6.2f}x{r['restart_s']:10.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
