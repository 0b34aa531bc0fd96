"""Why a policy misses the TTFT SLO at a given rate: per model, the SLO attainment, where the misses waited
(in the driver's queue for an instance, or inside the engine), and the GPUs the model held over time.

    python bench/simulate/issue11/diagnose.py --preset paper-code --policy warmserve,shared --rate-scale 0.42 --seed 0

Per model: requests, SLO attainment, misses; of the misses, the share that waited in the driver's queue (no
instance took them: ``send`` came later than the arrival) more than half the SLO, and the mean engine-side wait
(first token - send - the request's own prefill time, i.e. waiting behind other prefills or for batch/KV room);
GPUs held (instances x tp, starting and draining included) sampled every tick: mean, min, max, and the mean
number of instances sharing a GPU with another instance ("co"); busy: the mean share of the instance-time its
engine spent in prefill / decode; reclaims: GPU groups moved between models by ``reclaim_victims`` over the
whole run, warm-up included; instances stopped over the replayed span by the rule that stopped them (scale-in,
reclaim, time-sharing; "last instance": the model had no other); in-place conversions: co-served instances
dedicated where they stand (``Dedicate``), the co-residents moved off their hosts for them (``vacate``), and
co-served replicas of models that outgrew their host (``replica``). One
seeded simulation per policy, no search."""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np

from warmserve.sim.presets import PRESETS
from warmserve.sim.simulator import Simulator


def diagnose(preset_name: str, policy: str, rate_scale: float, seed: int, options: list[str],
             n_models: int | None = None, burst_cv: float | None = None) -> dict:
    from warmserve.policy.config import parse_policy_options
    import dataclasses

    kw = ({"n_models": n_models} if n_models else {}) | ({"burst_cv": burst_cv} if burst_cv else {})
    preset = PRESETS[preset_name](**kw)
    cfg = preset.config
    if options:
        cfg = dataclasses.replace(cfg, policy_config=parse_policy_options(options, cfg.policy_config))
    w = preset.build(rate_scale, seed)
    sim = Simulator(w, preset.models, policy, config=cfg)
    sent = {}
    orig_send = sim.send

    def send(rid, ist, now_s):
        sent.setdefault(rid, now_s)
        orig_send(rid, ist, now_s)

    sim.send = send
    gpus_t: dict[str, list[int]] = defaultdict(list)
    shared_t: list[int] = []
    phase_t: dict[str, list[tuple[int, int]]] = defaultdict(list)
    orig_tick = sim.driver.tick

    def tick(now_s):
        orig_tick(now_s)
        if now_s < sim.clock0:
            return
        held = defaultdict(int)
        per_gpu = defaultdict(int)
        busy = defaultdict(lambda: [0, 0])
        for inst in sim.state.instances.values():
            held[inst.model] += len(inst.gpus)
            for g in inst.gpus:
                per_gpu[g] += 1
        for e in sim.insts.values():
            busy[e.st.model][0] += e.phase == 2
            busy[e.st.model][1] += e.phase == 1
        for m in sim.names:
            gpus_t[m].append(held[m])
            phase_t[m].append(tuple(busy[m]))
        shared_t.append(sum(1 for c in per_gpu.values() if c > 1))

    sim.driver.tick = tick
    moves = [0]
    reclaim = getattr(sim.policy, "_reclaim_for", None)
    stops: dict[str, int] = defaultdict(int)  # instances stopped over the replayed span, by the rule that stopped them
    why = ["scale-in"]
    if reclaim is not None:
        def counted(*a, **k):
            why[0] = "reclaim"
            try:
                got = reclaim(*a, **k)
            finally:
                why[0] = "scale-in"
            moves[0] += bool(got[0])
            return got

        sim.policy._reclaim_for = counted
        preempt, stop = sim.policy._preempt_for, sim.policy._stop

        def preempt_counted(*a, **k):
            why[0] = "time-sharing"
            try:
                return preempt(*a, **k)
            finally:
                why[0] = "scale-in"

        def stop_counted(state, inst, now_s, board, out):
            if now_s >= sim.clock0:
                last = sum(1 for i in state.instances.values() if i.model == inst.model and not i.draining) == 1
                stops[why[0] + (" (last instance)" if last else "")] += 1
            return stop(state, inst, now_s, board, out)

        sim.policy._preempt_for, sim.policy._stop = preempt_counted, stop_counted
    converted = {"dedicated": 0, "moves": 0, "replicas": 0}  # co-served hosts converted, replicas (warm-up included)
    dedicate, vacate = sim.dedicate_instance, getattr(sim.policy, "_vacate", None)
    replica = getattr(sim.policy, "_co_replica", None)

    def dedicate_counted(ist, now_s):
        converted["dedicated"] += 1
        return dedicate(ist, now_s)

    sim.dedicate_instance = dedicate_counted
    if vacate is not None:
        def vacate_counted(state, board, model, out):
            n = len(out)
            got = vacate(state, board, model, out)
            converted["moves"] += len(out) - n  # warm-up included (the policy call has no clock)
            return got

        sim.policy._vacate = vacate_counted
    if replica is not None:
        def replica_counted(*a, **k):
            got = replica(*a, **k)
            converted["replicas"] += got
            return got

        sim.policy._co_replica = replica_counted
    r = sim.run()
    r.summary["offered_rate_rps"] = len(w.trace) / w.duration_s
    k = sim.n_warm
    out = {"policy": policy, "summary": {x: r.summary[x] for x in ("slo_attainment", "ttft_p99_s", "offered_rate_rps",
                                                                   "instance_starts", "gpu_seconds")},
           "shared_gpus_mean": float(np.mean(shared_t)) if shared_t else 0.0, "reclaims": moves[0],
           "stops": dict(sorted(stops.items())), "converted": converted, "models": {}}
    for mi, m in enumerate(sim.names):
        info = sim.infos[mi]
        slo = sim.cfg.ttft_slo_s or sim.cfg.slo_scale * info.prefill_s
        rows = [i for i in range(k, len(sim.arrival)) if sim.req_model[i] == mi]
        if not rows:
            continue
        miss_q, miss_e, n_miss = 0, [], 0
        for i in rows:
            first = sim.first[i]
            ttft = first - sim.arrival[i] if not math.isnan(first) else math.inf
            if ttft <= slo:
                continue
            n_miss += 1
            s = sent.get(i, math.inf)
            if s - sim.arrival[i] > slo / 2:
                miss_q += 1
            if not math.isnan(first) and s < math.inf:
                own = sim.cost.prefill_s(sim.mcost[mi], sim.prompt[i])
                miss_e.append(first - s - own)
        g = gpus_t[m]
        ph = phase_t[m]
        out["models"][m] = {
            "requests": len(rows), "slo": 1 - n_miss / len(rows), "misses": n_miss,
            "miss_queued_share": miss_q / n_miss if n_miss else 0.0,
            "miss_engine_wait_s": float(np.mean(miss_e)) if miss_e else 0.0,
            "gpus_mean": float(np.mean(g)), "gpus_min": int(min(g)), "gpus_max": int(max(g)),
            "prefilling_mean": float(np.mean([p[0] for p in ph])), "decoding_mean": float(np.mean([p[1] for p in ph])),
            "p99_s": r.per_model.get(m, {}).get("ttft_p99_s", math.nan),
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper-code", choices=sorted(PRESETS))
    ap.add_argument("--policy", default="warmserve,shared")
    ap.add_argument("--rate-scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy-option", action="append", default=[])
    ap.add_argument("--models", type=int, default=None, help="models of the preset (default: its own)")
    ap.add_argument("--burst-cv", type=float, default=None, help="re-draw inter-arrivals with this Gamma CV")
    a = ap.parse_args()
    for pol in a.policy.split(","):
        d = diagnose(a.preset, pol, a.rate_scale, a.seed, a.policy_option, a.models, a.burst_cv)
        s = d["summary"]
        print(f"{pol} @ {s['offered_rate_rps']:.1f} rps: SLO {s['slo_attainment']:.4f}, P99 {s['ttft_p99_s']:.2f} s, "
              f"starts {s['instance_starts']}, GPU-s {s['gpu_seconds']:.0f}, GPUs shared (mean) "
              f"{d['shared_gpus_mean']:.1f}, reclaims {d['reclaims']} (warm-up included)")
        c = d["converted"]
        print(f"  in-place conversions (warm-up included): {c['dedicated']} instances dedicated, {c['moves']} "
              f"co-residents moved for them; {c['replicas']} co-served replicas started")
        if d["stops"]:
            print("  instances stopped (replayed span), by rule: "
                  + ", ".join(f"{k} {v}" for k, v in d["stops"].items()))
        print(f"  {'model':<13}{'reqs':>6}{'SLO':>7}{'miss':>6}{'queued':>7}{'eng.wait':>9}{'p99':>7}"
              f"{'GPUs mean/min/max':>19}{'pf/dec busy':>13}")
        for m, v in d["models"].items():
            print(f"  {m:<13}{v['requests']:>6}{v['slo']:>7.3f}{v['misses']:>6}{v['miss_queued_share']:>7.2f}"
                  f"{v['miss_engine_wait_s']:>9.2f}{v['p99_s']:>7.2f}"
                  f"{v['gpus_mean']:>9.1f}/{v['gpus_min']}/{v['gpus_max']:<5}"
                  f"{v['prefilling_mean']:>6.2f}/{v['decoding_mean']:.2f}")


if __name__ == "__main__":
    main()
