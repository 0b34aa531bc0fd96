"""warmserve's first-tick colocation where the models outnumber the GPUs (``PolicyConfig.colocate_when_oversubscribed``),
a mixin of ``core.Policy`` kept apart so that core.py stays readable. The layout is `shared`'s
(``colocation.plan_shared``), weighted by the forecast; this module decides when it is laid out, how each KV share
is floored, when it is given up, and what an instance of it may hold once the rules route to it."""

from __future__ import annotations


from warmserve.geometry import blocks_for_tokens
from warmserve.policy.colocation import (UnplacedModelError, floor_kv_shares, placement_order, plan_shared,
                                         request_blocks, starts)
from warmserve.policy.state import ClusterState, InstanceState


class Colocating:
    """Mixed into ``core.Policy``; uses its ``cfg``, ``models``, ``period``, ``_co``, ``_new_id``, ``_hist`` and
    ``forecast_need`` (``demand.Demand``)."""

    #: The colocation's instances still standing (id -> whether it shares its GPUs); {} once given up or never laid
    #: out; None until the first tick decides.
    _pinned: dict[str, bool] | None = None
    #: Live GPUs when it was laid out, and the forecast window it was last checked against.
    _pinned_gpus = 0
    _pinned_window = 0
    #: Every instance the colocation laid out (kept after it is given up: their KV shares are its own).
    _colocated: frozenset[str] = frozenset()

    def _colocation(self, state: ClusterState, now_s: float) -> list | None:
        """The tick's actions while the colocation stands (its layout at the first tick, then none), None where
        the rules decide. Laid out at the first tick, on an empty cluster with co-serving on, when the models with
        forecast demand need more GPUs than are live (one instance each at its tp); given up, for good, when one
        of its instances is lost, GPUs join or leave, or a window's forecast, from history reaching a day back,
        says those models fit. A request routed before the first tick starts an instance, and then nothing is
        laid out. While it stands route() may still start an instance on GPUs it left idle."""
        live = state.live_gpus()
        window = self.window_of(now_s)
        if self._pinned is None:
            self._pinned, self._pinned_window = {}, window
            never = state.unservable()
            need, demand = self._servable_need(window, never)
            if state.instances or self._co is None or need <= live:
                return None
            # a model no server can ever hold is left out: its requests get their error elsewhere, and were it
            # planned, plan_shared's UnplacedModelError refused the colocation for every other model too (found in
            # review: a light model's request waited 122.6 s beside a tp-4 model on 2-GPU servers, 0 s without it)
            models = {m: info for m, info in self.models.items() if m not in never}
            order = placement_order(models, demand)
            try:
                plan = plan_shared(state, models, order, demand, laminar=self.cfg.placement == "laminar",
                                   colocate_tp=self.cfg.colocate_tp, max_replicas=self.cfg.max_instances_per_model)
            except UnplacedModelError:
                return None  # no colocation holds every servable model: the rules do what they can (time-sharing)
            plan = floor_kv_shares(state, plan, request_blocks(models, self.cfg.coserve_context_tokens))
            if plan is None:
                return None  # a group cannot hold one such request for each of its models
            out = []
            for act, shared in starts(plan, lambda m: self._new_id(m, "i"), warm_engine=self.cfg.warm_engine):
                out.append(act)
                self._pinned[act.instance_id] = shared
            # instances that share GPUs are co-served hosts to the rules, once they decide
            self._co.ids |= {i for i, shared in self._pinned.items() if shared}
            self._colocated = frozenset(self._pinned)
            self._pinned_gpus = live
            return out
        if not self._pinned:
            return None
        if window != self._pinned_window:
            self._pinned_window = window
            # the rules can give every model GPUs of its own again; a forecast from history reaching less than a
            # day back is not trusted with it (found in review: with no history, the first idle window forecast no
            # demand at all, and a fresh cluster gave its colocation up before its first request)
            if (self._hist.span_windows() >= self.period
                    and self._servable_need(window, state.unservable())[0] <= live):
                self._pinned = {}
                return None
        if live == self._pinned_gpus and self._pinned.keys() <= state.instances.keys():
            return []
        self._pinned = {}  # lost an instance (or it never started), or GPUs joined or left: the rules take over
        return None

    def _servable_need(self, window: int, never: dict) -> tuple[int, dict[str, float]]:
        """``forecast_need`` less the GPUs of the models in ``never`` (``ClusterState.unservable``) that it counts:
        no GPU count serves those, so they neither call for a colocation nor keep one standing (found in review: a
        tp-4 model on 2-GPU servers laid one out for a single tp-1 model that fits on its own)."""
        need, demand = self.forecast_need(window)
        if never:
            names = sorted(never)
            need -= sum(self.models[m].tp for m, a in zip(names, self.forecast_all(window, names)[0]) if not a <= 0)
        return need, demand

    def _colocated_cap(self, inst: InstanceState) -> int | None:
        """Requests an instance of the given-up colocation may hold: what its own KV share holds at the planning
        context (the co-served route cap is an equal part of a host's KV, and its shares follow demand; found in
        review: the busy model's share was capped below what it held, a quiet one's above). None for any other
        instance."""
        if inst.instance_id not in self._colocated:
            return None
        return max(1, inst.kv_blocks_total // blocks_for_tokens(self.cfg.coserve_context_tokens))
