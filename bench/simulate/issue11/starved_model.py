"""The case a simulator fuzz found (2026-12-06): every model over its capacity, and a model of low rate with no
instance waits minutes for time-sharing, since reclaim's share tests refuse every victim. Three llama2-7b on 11
single-GPU A100 servers, Poisson arrivals of 6, 0.2 and 16 requests/s for 130 s, prompts of 1-1,499 and outputs of
1-499 tokens; the policy plans at ``instance_capacity`` 1 while the engines run 8 sequences. Prints each model's
first answer and median TTFT with and without ``reclaim_for_starved``.

    python bench/simulate/issue11/starved_model.py [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from warmserve.policy.config import PolicyConfig
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.simulator import Simulator
from warmserve.workload.request import Trace, Workload

RATES_RPS = (6.0, 0.2, 16.0)
DURATION_S = 130.0


def workload(seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    names = [f"m{i}" for i in range(len(RATES_RPS))]
    t, m = [], []
    for i, rate in enumerate(RATES_RPS):
        at = np.cumsum(rng.exponential(1 / rate, int(rate * DURATION_S * 2)))
        at = at[at < DURATION_S]
        t += at.tolist()
        m += [i] * len(at)
    order = np.argsort(t, kind="stable")
    n = len(t)
    trace = Trace(names, np.asarray(t)[order], np.asarray(m, np.int32)[order], rng.integers(1, 1500, n),
                  rng.integers(1, 500, n))
    return Workload("starved-model", trace, Trace.empty(names), DURATION_S)


def run(seed: int, starved: bool) -> list[tuple[float, float, float]]:
    """Each model's (first answer, median TTFT, longest TTFT), seconds."""
    cfg = SimConfig(n_servers=11, gpus_per_server=1, gpu="A100-80GB", tick_s=1.0, engine_model="vllm", drain_s=600.0,
                    max_num_seqs=8, policy_config=PolicyConfig(instance_capacity=1, reclaim_for_starved=starved))
    w = workload(seed)
    sim = Simulator(w, [ServedModel(n, "llama2-7b") for n in w.trace.models], "warmserve", config=cfg)
    sim.run()
    first, arrival, model = np.asarray(sim.first), np.asarray(sim.arrival), np.asarray(sim.req_model)
    ttft = first - arrival
    return [(float(np.nanmin(first[model == i])), float(np.nanmedian(ttft[model == i])),
             float(np.nanmax(ttft[model == i]))) for i in range(len(RATES_RPS))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    seed = ap.parse_args().seed
    print("| reclaim_for_starved | " + " | ".join(f"m{i} ({r:g} rps): first answer; TTFT median, longest"
                                                    for i, r in enumerate(RATES_RPS)) + " |")
    print("|---|" + "---|" * len(RATES_RPS))
    for starved in (False, True):
        cells = " | ".join(f"{a:.1f} s; {p:.1f}, {mx:.1f} s" for a, p, mx in run(seed, starved))
        print(f"| {'on' if starved else 'off'} | {cells} |")


if __name__ == "__main__":
    main()
