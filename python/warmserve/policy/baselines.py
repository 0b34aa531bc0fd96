"""The static baselines: `dedicated` (fixed GPU groups per model) and `shared` (MuxServe-like colocation of every
model with fixed KV shares). Both lay out all their instances on the first tick and never change them.

`shared`'s layout is ``plan_shared`` of a ``SharedLayout``: how many GPU groups each tensor-parallel class gets
and how many models a group hosts at most. Without one (``StaticPolicy.layout`` None) the classes get GPUs in
proportion to their demand x tp and groups host two models; the simulator sets ``layout`` to the best of a
search (``warmserve.sim.shared_search``), as MuxServe chooses its placement by searching with a cost model, and
gives `dedicated` the search's best one-model-per-group layout where that serves its run better than its own."""

from __future__ import annotations

import math

from warmserve.policy import actions as A
from warmserve.policy.colocation import (SharedLayout, UnplacedModelError, floored, placement_order, plan_shared,
                                         starts)
from warmserve.policy.core import Policy
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState


class StaticPolicy(Policy):
    """`dedicated` (fixed GPU groups per model) and `shared` (every model resident, fixed KV shares)."""

    #: Policy options a static layout does not read, and why (``warmserve simulate`` says so when one is given).
    IGNORED_OPTIONS = {
        "route_cap_per_instance": "its route sends every request to its least-loaded instance: a static layout "
                                  "has nowhere else to send one, so a cap would only hold requests in the router "
                                  "instead of its engines' batches",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._placed = False
        #: the layout to lay out, set before the first tick: `shared`'s (None: the demand-proportional default);
        #: `dedicated` lays one out too where given (one model per group, ``plan_shared``), else its own
        self.layout: SharedLayout | None = None

    def route(self, state: ClusterState, model: str, now_s: float, request_id=None):
        self._model(model)
        # the per-model index, in the instances' order as a scan of them all gives: the scan of every instance
        # per request was 10% of a static run
        ready = [i for i in self._instances_of(state).get(model, ()) if i.ready and not i.draining]
        best = ready[0] if len(ready) == 1 else min(ready, key=self._least_loaded, default=None)
        return None if best is None else A.Route(model, best.instance_id, request_id)

    def tick(self, state: ClusterState, now_s: float) -> list:
        self._record(state, now_s)
        if self._placed:
            return self._replace_lost(state)
        self._placed = True
        return self._layout(state, now_s)

    def _replace_lost(self, state: ClusterState) -> list:
        """After the layout: a model with no instance left (each lost with its GPUs: a worker died) gets one on idle
        GPUs, widest tp and most demand first, where any fit (found in review: nothing was laid out again, and its
        requests waited for ever, beside the GPU of the worker restarted in its place)."""
        have = {i.model for i in state.instances.values()}
        if have.issuperset(self.models):
            return []
        board = Board(state, laminar=True)
        acts = (self._start(board, m) for m in placement_order(self.models, self._demand()) if m not in have)
        return [act for act in acts if act is not None]

    def _demand(self) -> dict[str, float]:
        """Mean peak over the history, 1 where there is none: how the static layouts share the GPUs."""
        return self._hist.mean_peak()

    def _layout(self, state: ClusterState, now_s: float) -> list:
        board = Board(state, laminar=True)
        demand = self._demand()
        order = placement_order(self.models, demand)
        out: list = []
        if self.name == "dedicated" and self.layout is None:
            count = {m: 0 for m in self.models}
            for m in order:  # one instance each first, biggest tp first so groups pack
                act = self._start(board, m)
                if act is not None:
                    out.append(act)
                    count[m] += 1
            unplaced = [m for m in order if count[m] == 0]
            if unplaced:
                # Found in review: left out silently, and that model's requests waited until they timed out.
                n_gpus = state.live_gpus()
                free = n_gpus - sum(len(a.gpus) for a in out)
                raise UnplacedModelError(
                    f"dedicated layout: models {unplaced} get no instance: each model needs GPUs of its own, and "
                    f"the {n_gpus} GPUs (one per worker) hold {len(out)} instances of the others, {free} left free "
                    f"(too few or too small for tp {[self.models[m].tp for m in unplaced]}, shards of "
                    f"{[round(self.models[m].shard_bytes / 1e9, 2) for m in unplaced]} GB): add GPUs (workers), "
                    f"serve fewer models, or use policy 'shared' (it colocates models)",
                    model=unplaced[0], models=unplaced, gpus=n_gpus, free_gpus=free)
            cap = self.cfg.max_instances_per_model or math.inf  # found in review: 4 each under a cap of 1
            while True:  # then the rest to whichever model has the most demand per instance, up to the cap
                ranked = sorted(self.models,
                                key=lambda m: (-demand[m] / max(count[m], 1) if count[m] else -math.inf, m))
                added = False
                for m in ranked:
                    if count[m] == 0 or count[m] >= cap:
                        continue
                    act = self._start(board, m)
                    if act is not None:
                        out.append(act)
                        count[m] += 1
                        added = True
                        break
                if not added:
                    return out
        layout = self.layout
        if layout is not None and layout.demand:
            # the demand the layout was chosen for, and the order it was scored in (found in review: the order of
            # the history's demand was kept, so the search's layout could be laid out in another order)
            demand = {**demand, **dict(layout.demand)}
            order = placement_order(self.models, demand)
        # each share holds one request of the model's longest context, as warmserve's colocation floors them
        # (found on a 2-hour ServeGen replay: a quiet model's share by demand refused its longest requests, which
        # a dedicated instance serves)
        plan = plan_shared(state, self.models, order, demand, layout, colocate_tp=self.cfg.colocate_tp,
                           max_replicas=self.cfg.max_instances_per_model)
        plan = floored(state, plan, self.models, self.cfg.coserve_context_tokens)
        warm = True if self.name == "shared" else self.cfg.warm_engine
        return [act for act, _ in starts(plan, lambda m: self._new_id(m, "i"), warm_engine=warm)]
