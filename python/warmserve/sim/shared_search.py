"""The layout search of the `shared` baseline (MuxServe-like): the static layout that best meets the SLO.

MuxServe places its colocated models by searching with a cost model of their throughput; this does the same with
the simulator's cost model, analytically (a few milliseconds per candidate), then simulates a shortlist:

1. Workload: per model, the request rate and the mean prompt and output lengths of the part of the workload
   that comes before the measured span (the warm-up replay and the history: what an operator knows when
   laying out; steps 1-4 never read the measured span, step 5 does).
2. Candidates: every split of the GPUs into tp-GPU groups per tensor-parallel class (the class with the
   smallest tp takes whatever GPUs are left), times at most 1, 2 or 3 models per group. Each candidate is
   laid out by ``policy.colocation.plan_shared`` exactly as the policy will lay it out (replicas and KV shares
   by demand, each share floored at one of the model's longest requests: ``colocation.floored``); candidates
   that leave a model without an instance are skipped.
3. Score: the largest multiple x of the workload's rates that every instance sustains. An instance of model m
   with KV fraction f and r replicas gets x lambda_m / r requests/s; at saturation it runs its largest batch
   n = min(max running seqs, KV tokens / (prompt + output)), its KV tokens the blocks the simulator gives it
   (``policy.state.kv_blocks_for``: f of what its GPUs hold after its shard, whole page-padded blocks; plan_shared
   made f of the room all of the group's shards leave), so each request costs it
   w = prefill_s(prompt) + output x decode_step_s(n, n x (prompt + output / 2)) / n seconds of its GPUs.
   Colocated instances time-share their GPUs (the engine model's interference model: an iteration takes as
   many times longer as there are busy instances on the GPU; ``CostModel.colocation_interference`` "none" drops
   the neighbours' term, "phase" is scored as time-sharing), so its load is
   rho = x lambda w (1 + sum of its neighbours' busy shares), a neighbour being busy while it has a request
   in flight: 1 - exp(-x lambda_o L_o), L_o its uncontended latency (prefill + output small-batch steps).
   x is the largest value with every rho <= 1 (bisection; rho grows with x).
4. Candidates are ranked by x (ties: fewer models per group, then fewer large groups). The demand weights
   are each model's GPU-seconds per second at a moderate batch (``search_shared_layout``).
5. Shortlist, simulated (found in review: x is a throughput bound, not the SLO, and passed over layouts of its
   own candidate set that met the SLO better, e.g. paper-code at rate scale 0.5 seed 1: ((4,1),(2,3),(1,6)),
   1 per group, 0.956 vs ((4,2),(2,2),(1,4)), 2 per group, 0.987): the best by x of each of the
   ``SLO_SHORTLIST`` best group splits, plus the best of each models-per-group count, are each run through
   the simulator on this very workload and rate (the run the layout is chosen for, GPU losses included); the
   highest SLO attainment wins, ties by x. So the
   baseline's layout is tuned on the measured span itself, an advantage no live operator has: it can only
   make `shared` stronger than it would be.

Bounded: on the paper's 16 GPUs about 60 candidates scored in well under a second, then at most
``SLO_SHORTLIST`` + 3 simulated runs. Above ``MAX_CANDIDATES`` splits the search keeps to splits near the
demand-proportional one.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace

import numpy as np

from warmserve.geometry import KV_BLOCK_TOKENS
from warmserve.policy.colocation import (SharedLayout, UnplacedModelError, default_groups, floored,
                                         placement_order, plan_shared, tp_classes)
from warmserve.policy.state import kv_blocks_for

#: most group splits scored (x 3 colocation degrees); larger clusters search near the proportional split
MAX_CANDIDATES = 400
#: models per group tried
PER_GROUP_CHOICES = (1, 2, 3)
#: group splits whose best-scoring candidate is simulated for the final pick (step 5), besides the best of each
#: colocation degree
SLO_SHORTLIST = 4


def workload_stats(sim) -> dict[str, tuple[float, float, float]]:
    """(requests/s, mean prompt tokens, mean output tokens) per model over the workload before the measured
    span; models with no request there get a rate of 1e-3 requests/s and the overall means."""
    h = sim.workload.history
    names = sim.names
    out = {}
    if len(h):
        spans = sim.workload.history_spans
        # the history is stretches of earlier days: rates are over the time they cover, not the gaps between
        span = sum(b - a for a, b in spans) if spans else float(h.arrival_s.max() - h.arrival_s.min())
        span = max(span, 1.0)
        idx = {n: i for i, n in enumerate(h.models)}
        for n in names:
            sel = h.model == idx[n] if n in idx else np.zeros(len(h), bool)
            if sel.any():
                out[n] = (float(sel.sum()) / span, float(h.prompt_tokens[sel].mean()),
                          float(h.output_tokens[sel].mean()))
    p_all = float(h.prompt_tokens.mean()) if len(h) else 1024.0
    o_all = float(h.output_tokens.mean()) if len(h) else 256.0
    for n in names:
        out.setdefault(n, (1e-3, p_all, o_all))
    return out


def _splits(state, classes: dict[int, list[str]], proportional: dict[int, int]):
    """Group counts per class: every split that fits the live GPUs (smallest tp takes the rest)."""
    n_gpus = state.live_gpus()
    tps = sorted(classes, reverse=True)
    big, last = tps[:-1], tps[-1]
    ranges = [range(1, n_gpus // tp + 1) for tp in big]
    if math.prod(len(r) for r in ranges) > MAX_CANDIDATES:
        ranges = [range(max(1, proportional[tp] // 2), 2 * proportional[tp] + 1) for tp in big]
    for combo in itertools.product(*ranges):
        used = sum(n * tp for n, tp in zip(combo, big))
        rest = (n_gpus - used) // last
        if rest < 1:
            continue
        yield tuple(zip(big, combo)) + ((last, rest),)


def score(sim, plan, stats) -> float:
    """The largest rate multiple every instance of ``plan`` sustains (see the module doc, step 3)."""
    cost = sim.cost
    limits = cost.limits
    reps: dict[str, int] = {}
    for _, hosted in plan:
        for m, _ in hosted:
            reps[m] = reps.get(m, 0) + 1
    groups = []
    for gpus, hosted in plan:
        insts = []
        for m, frac in hosted:
            c = sim.mcost[sim.midx[m]]
            lam, p, o = stats[m]
            # the driver's own rule: restated here per unpadded token, it credited a page-padded block's padding
            # as room (a 3 MiB block takes 4 MiB)
            kv_tokens = kv_blocks_for(sim.state, m, gpus, frac) * KV_BLOCK_TOKENS
            n = max(1, min(limits.max_running_seqs, int(kv_tokens // max(p + o, 1.0))))
            step = cost.decode_step_s(c, n, n * (p + o / 2))
            w = cost.prefill_s(c, int(p)) + o * step / n
            lat = cost.prefill_s(c, int(p)) + o * cost.decode_step_s(c, 1, int(p + o / 2))
            insts.append((lam / reps[m], w, lat))
        groups.append(insts)

    # Neighbours slow an instance as the engine model's interference rule says; "phase" is scored as "time-share"
    # (an upper bound of its slowdown: the shortlist, step 5, is simulated under the run's own rule)
    shares = cost.colocation_interference != "none"

    def fits(x: float) -> bool:
        for insts in groups:
            busy = [1.0 - math.exp(-x * lam * lat) for lam, _, lat in insts]
            tot = sum(busy) if shares else 0.0
            for (lam, w, _), b in zip(insts, busy):
                if x * lam * w * (1.0 + (tot - b if shares else 0.0)) > 1.0:
                    return False
        return True

    lo, hi = 1e-4, 1e4
    if not fits(lo):
        return 0.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def simulate_layout(sim, layout: SharedLayout | None) -> dict:
    """The summary of ``sim``'s run (its workload, served models, cost model and GPU losses) with its static
    policy laying out ``layout`` (None: the policy's own layout)."""
    from warmserve.sim.simulator import Simulator

    trial = Simulator(sim.workload, sim.served, sim.policy.name, config=replace(sim.cfg, shared_search=False),
                      cost=sim.cost, gpu_losses=sim.gpu_losses, history=sim.history,
                      max_losses_per_request=sim.max_losses_per_request)
    trial.policy.layout = layout
    return trial.run().summary


def slo_key(summary: dict) -> tuple[float, float]:
    """Higher is better: SLO attainment (a run with no request: 0), then a lower P99 TTFT."""
    slo, p99 = summary["slo_attainment"], summary["ttft_p99_s"]
    return (0.0 if math.isnan(slo) else slo, -math.inf if math.isnan(p99) else -p99)


def _placed_candidates(sim, per_group_choices, stats):
    """Every candidate layout (module doc, step 2) that gives every model an instance, as (layout, plan), in the
    order the search scores them. Raises UnplacedModelError, naming the search, when none does."""
    models = sim.policy.models
    cost = sim.cost
    # demand weight: GPU-seconds per second each model asks for on its own instance at a moderate batch
    demand = {}
    for m, (lam, p, o) in stats.items():
        c = sim.mcost[sim.midx[m]]
        demand[m] = max(lam * (cost.prefill_s(c, int(p)) + o * cost.decode_step_s(c, 16, int(16 * (p + o / 2))) / 16),
                        1e-9)
    order = placement_order(models, demand)
    classes = tp_classes(models, order)
    colocate_tp = sim.policy.cfg.colocate_tp
    proportional = dict(default_groups(sim.state, models, order, demand, colocate_tp=colocate_tp))
    dem = tuple(sorted(demand.items()))
    tried = placed = 0
    for groups in _splits(sim.state, classes, proportional):
        for per_group in per_group_choices:
            layout = SharedLayout(groups, per_group, dem)
            tried += 1
            try:
                plan = plan_shared(sim.state, models, order, demand, layout, colocate_tp=colocate_tp,
                                   max_replicas=sim.policy.cfg.max_instances_per_model)
            except UnplacedModelError:
                continue
            plan = floored(sim.state, plan, models, sim.policy.cfg.coserve_context_tokens)
            placed += 1
            yield layout, plan
    if placed:
        return
    # nothing fits every model: the default layout's error names a model left out, but its fix, "or let the layout
    # search choose", is wrong where the search has run (found in review)
    try:
        plan_shared(sim.state, models, order, demand, None, colocate_tp=colocate_tp)
    except UnplacedModelError as e:
        n_gpus = sim.state.live_gpus()
        what = (f"none of the {tried} layouts it tried gives every model an instance" if tried else
                f"the {n_gpus} GPUs cannot give each tensor-parallel class (tp {sorted(classes, reverse=True)}) a "
                f"group of its own")
        raise UnplacedModelError(
            f"shared layout search: {what}, nor does the demand-proportional layout (it leaves "
            f"{e.fields.get('model')!r}, tp {e.fields.get('tp')}, without one): add GPUs, or serve fewer or smaller "
            f"models", **e.fields, layouts_tried=tried, gpus=n_gpus) from e
    raise AssertionError("unreachable: the default layout placed what no candidate could")


def placeable_layout(sim, per_group_choices=None) -> SharedLayout:
    """The first layout of the search's candidates that gives every model an instance (without scoring or
    simulating any): whether ``search_shared_layout`` can place the run at all, checked before any run. Raises
    UnplacedModelError as the search does."""
    stats = workload_stats(sim)
    return next(_placed_candidates(sim, per_group_choices or PER_GROUP_CHOICES, stats))[0]


def search_shared_layout(sim, per_group_choices=None) -> tuple[SharedLayout, dict]:
    """The best ``SharedLayout`` for ``sim``'s workload and cluster, and a record of the search (for reports).
    ``per_group_choices``: the models per group tried (default ``PER_GROUP_CHOICES``); the shortlist is run with
    ``sim``'s own static policy."""
    t0 = time.perf_counter()
    per_group_choices = per_group_choices or PER_GROUP_CHOICES
    stats = workload_stats(sim)
    scored: list[tuple[tuple, SharedLayout]] = []
    for layout, plan in _placed_candidates(sim, per_group_choices, stats):
        x = score(sim, plan, stats)
        scored.append(((x, -layout.per_group, tuple(-n for _, n in layout.groups)), layout))
    scored.sort(key=lambda c: c[0], reverse=True)
    # one candidate per split: x is often bound by one class alone, so it ties across the colocation degrees of
    # a split, and the top few by x alone can all be one or two splits
    shortlist, splits = [], set()
    for c in scored:
        if len(splits) < SLO_SHORTLIST and c[1].groups not in splits:
            splits.add(c[1].groups)
            shortlist.append(c)
    for per_group in per_group_choices:
        top = next((c for c in scored if c[1].per_group == per_group), None)
        if top is not None and top not in shortlist:
            shortlist.append(top)
    checked = [(simulate_layout(sim, layout), key, layout) for key, layout in shortlist]
    # SLO attainment first, then the score (ties as the analytic search ranks them)
    best_run, best_key, best = max(checked, key=lambda c: (slo_key(c[0])[0], c[1]))
    record = {"candidates": len(scored), "groups": [list(g) for g in best.groups], "per_group": best.per_group,
              "rate_multiple": best_key[0], "slo_attainment": best_run["slo_attainment"],
              "ttft_p99_s": best_run["ttft_p99_s"],
              "simulated": [{"groups": [list(g) for g in lay.groups], "per_group": lay.per_group,
                             "rate_multiple": key[0], "slo_attainment": run["slo_attainment"],
                             "ttft_p99_s": run["ttft_p99_s"]} for run, key, lay in checked],
              "search_s": time.perf_counter() - t0}
    return best, record
