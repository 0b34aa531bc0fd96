"""Co-serving light models on one GPU group (beyond the paper; issue 11, "a universal worker that serves several
light models at once").

The paper gives every instance its GPUs to itself, so with 7 models on 16 GPUs the models that one instance
carries with room to spare (the "light" ones) hold GPUs a demand-proportional static layout gives to the busy
ones. Here a light model's instance may share its GPU group with other light models of the same tensor-parallel
degree (a "host": GPUs whose instances were all started co-served), as MuxServe colocates models, but decided
online from the same load signals as the §5 scaling:

- light: the model's scale-out demand (``Policy._wanted``, without the floor of one instance while requests wait)
  is below one instance: its in-flight load is under 0.8 x B and its prefill backlog under 0.8 x its budget;
- the round: co-resident instances time-share the GPUs, so a token of each waits for one decode step of every
  busy co-resident. The predicted round is the sum of their decode steps, each at its predicted batch (the
  larger of its 5 s load and the forecast of the window), from what the policy knows of a model
  (``ModelInfo``) and three planning figures (``PolicyConfig.decode_read_bytes_per_s``,
  ``weight_read_bytes_per_s``, ``coserve_context_tokens``); ``step_s`` gives the formula;
- join: a light model's *first* instance goes to a host whose round, with it, stays within
  ``coserve_tpot_s`` x scale_in_threshold / scale_out_threshold (the §5 band, 0.5 / 0.8), best fit first; with no
  such host it opens one on idle GPUs (others may join later). Memory: at most ``models_per_host`` shards (weights
  within 80% of a GPU, as in the `shared` baseline, each beside a KV share for 0.5 x B sequences); KV is elastic: each
  co-served instance may map up to what ``models_per_host`` shards leave (``kv_fraction``), from the shared pool,
  as its load needs;
- split (it bursts): a host whose round exceeds ``coserve_tpot_s`` marks its costliest model, and a co-served
  model that is no longer light scales out as any model does; its new instance is dedicated (a model that runs
  an instance already co-serves another only as a replica, below). Once a dedicated instance of the model is
  ready, its co-served instance is stopped (it drains): the model "turns into" a dedicated instance;
- convert in place (no GPUs for the dedicated instance): the host's other models move to other hosts that fit
  them (``vacate``; each as a merge below), and once the bursting model's instance is alone on its GPUs it is
  dedicated where it stands (``dedications``, ``A.Dedicate``: its KV cap rises, nothing is copied);
- replica (neither GPUs nor a host to convert): one more co-served instance of the model on another host, sized
  for its share of the model's batch (``replica``); a model's copies split its batch (``share``);
- merge: while another model is short of GPUs that are not free, a model whose load is below the scale-in
  threshold (0.5 x B: the §5 band again) and that runs one dedicated instance starts a co-served one on a host that
  fits it; once that is ready its dedicated instance stops, and its GPUs go to the model short of them.

When (``update``): only while the cluster is over-subscribed, i.e. the models with demand need more GPUs for one
instance each than are live (or always, ``coserve_always``). Where every model fits on GPUs of its own (the
paper's 7- and 4-model presets) nothing here acts and the policy is the paper's. Over-subscribed, the rules
that keep GPUs free to split out to are dropped (there are none; the alternative is no instance): a model with
no instance joins a host (up to the TPOT target, evicting prewarms there) instead of waiting for another model's
GPUs; a quiet model with steady demand keeps its instance instead of going to zero (``keeps_last``); a model
that outgrows its host and finds no GPU takes GPUs by time-sharing, as a model with no instance does
(``outgrown``).

Everything here is pure: it reads the state and the policy's load figures and returns decisions."""

from __future__ import annotations

from collections import Counter

import numpy as np

from warmserve.policy import actions as A
from warmserve.policy.arbitration import freed_group
from warmserve.policy.config import PolicyConfig
from warmserve.policy.cosizing import HostSizing, kv_per_token
from warmserve.policy.gpu_masks import MAX_GPUS_PER_SERVER
from warmserve.policy.placement import Board
from warmserve.policy.reopening import Reopening
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo, kv_blocks_for


class CoServing(Reopening, HostSizing):
    """The co-serving decisions of one policy object (``core.Policy._co``)."""

    def __init__(self, cfg: PolicyConfig, models: dict[str, ModelInfo]):
        super().__init__(cfg, models)
        #: Instances started co-served (kv_fraction < 1) that may still be in the state.
        self.ids: set[str] = set()
        #: Models whose co-served instance is to become a dedicated one (their host's round is over target).
        self.splitting: set[str] = set()
        #: Model -> (its instance to stop, the co-served instance started to replace it): the first stops once the
        #: second is ready.
        self.merging: dict[str, tuple[str, str]] = {}
        #: Host GPUs -> the model it turns into a dedicated instance of (``vacate``): nobody joins it meanwhile.
        self.converting: dict[tuple[int, ...], str] = {}
        #: Host GPUs -> models that joined it since the last tick (not in the state until the driver applies them).
        self.pending: dict[tuple[int, ...], set[str]] = {}
        #: Instances this tick stopped with nothing in flight (``Policy._stop``): the driver removes them as it
        #: applies the tick, so they are on no host any more (a host left with none is idle GPUs, which the same
        #: tick may give to a dedicated instance).
        self.stopped_idle: set[str] = set()
        #: Per model, ``route_cap`` (with the instance membership it was worked out for).
        self.caps: dict[str, tuple[tuple, int]] = {}
        #: ``seq_capacity`` per (model, GPU bytes): fixed for a policy's configuration.
        self.caps_by_size: dict[tuple[str, int], int] = {}
        #: Per model, from the last tick: scale-out demand (instances, no floor), scale-in demand, predicted batch.
        self.out: dict[str, float] = {}
        self.keep: dict[str, float] = {}
        self.batch: dict[str, float] = {}
        #: Whether the cluster is over-subscribed (``update``), and whether co-serving is engaged: models join
        #: and merge onto hosts only while it is (hosts already running keep splitting and retiring either way).
        self.oversubscribed = False
        self.active = cfg.coserve_always or cfg.consolidate
        #: Per model, its co-served instances taking requests (several: ``replica``), from the last tick.
        self.copies: Counter[str] = Counter()
        #: From the last tick: the GPUs the models with demand need for one instance each.
        self.demand_gpus = 0
        #: Live GPUs when the colocation's first tick found the served models need more GPUs than that and no
        #: static layout holding them all (``Colocating._colocation``); 0: it did not. While no GPU has joined
        #: since, the cluster counts as over-subscribed before any load says so (``over_with``): a first
        #: instance opens a host on the last idle GPUs and the next model joins it (found live: six 74 MB models
        #: on one 500 MiB CPU worker started dedicated, which no model joins, and ran one at a time, each switch
        #: 5 s, and 30 s once all had been idle).
        self.layout_refused_gpus = 0

    # ---- the model (the step and a host's memory: ``cosizing.HostSizing``) ------------------------------------

    def host_models(self, gpus: tuple[int, ...], insts) -> set[str]:
        """The models a host serves: its instances that take requests, and those joined since the last tick."""
        return {i.model for i in insts if not i.draining} | self.pending.get(gpus, set())

    def share(self, model: str) -> float:
        """The predicted batch of one co-served instance of ``model``: its batch over its co-served copies (routing
        sends each request to the least loaded instance)."""
        return self.batch.get(model, 0.0) / max(1, self.copies.get(model, 0))

    def round_s(self, names, batch: dict[str, float] | None = None) -> float:
        """Predicted decode round of a host serving ``names``: one step of each at its predicted batch per copy
        (``batch`` overrides it for some: a new replica's share of its model's batch)."""
        batch = batch or {}
        return sum(self.step_s(m, batch.get(m, self.share(m))) for m in names)

    def route_cap(self, state: ClusterState, model: str, inst: InstanceState | None = None) -> int:
        """``seq_capacity`` of a co-served instance of ``model`` at its host's GPU size: ``inst``'s host, or without
        it the smallest host among the model's co-served instances (found in review: sized by the smallest live
        GPU, a small GPU joining the cluster made every co-served instance's cap divide by zero). Kept per model
        while the instances stay the same: route() asks for every request."""
        if inst is not None:  # per request: the figure depends on the model and the GPU size alone
            size = self.host_bytes(state, inst.gpus)
            cap = self.caps_by_size.get((model, size))
            if cap is None:
                cap = self.caps_by_size[model, size] = self.seq_capacity(model, size)
            return cap
        key = (id(state.instances), len(state.instances), next(reversed(state.instances), None))
        got = self.caps.get(model)
        if got is None or got[0] != key:
            hosts = (state.instances.get(iid) for iid in self.ids)
            gpu_bytes = min((self.host_bytes(state, i.gpus) for i in hosts if i is not None and i.model == model),
                            default=0)
            got = self.caps[model] = (key, self.seq_capacity(model, gpu_bytes))
        return got[1]

    def light(self, model: str) -> bool:
        return self.out.get(model, 0.0) < 1.0

    def kv_fits(self, model: str, gpu_bytes: int, share: float, batch: float | None = None) -> bool:
        """Whether the model's predicted batch (or ``batch``), at coserve_context_tokens each, needs at most
        ``share`` of the KV bytes (per GPU) its co-served instance may hold (the engine admits a request only with
        room for its KV)."""
        m = self.models[model]
        cap = self.kv_fraction(model, gpu_bytes) * (gpu_bytes - m.shard_bytes)
        b = self.share(model) if batch is None else batch
        need = b * self.cfg.coserve_context_tokens * kv_per_token(m) / m.tp
        return need <= share * cap

    # ---- reading the state --------------------------------------------------------------------------------

    def hosts(self, state: ClusterState) -> dict[tuple[int, ...], list[InstanceState]]:
        """GPU groups that hold only co-served instances, with them (draining ones included: they still run; those
        this tick stopped with nothing in flight, ``stopped_idle``, left out: found in review, a merge joined a host
        whose only instance the same tick had stopped and whose GPU it had given to a dedicated instance, 60 GiB of
        weights beside the joiner's 13.5 GB on a 72 GiB GPU)."""
        groups: dict[tuple[int, ...], list[InstanceState]] = {}
        other: set[int] = set()
        for inst in state.instances.values():
            if inst.instance_id in self.stopped_idle:
                continue
            if inst.instance_id in self.ids:
                groups.setdefault(tuple(inst.gpus), []).append(inst)
            else:
                other.update(inst.gpus)
        return {g: v for g, v in groups.items() if not other.intersection(g)}

    # ---- decisions ----------------------------------------------------------------------------------------

    def update(self, state: ClusterState, out: dict[str, float], keep: dict[str, float],
               batch: dict[str, float]) -> None:
        """A tick begins: the loads it decides on. Ids of instances no longer in the state are forgotten here
        (not later in the tick: its own StartInstances reach the state only once the driver applies them).

        Over-subscribed: the models with demand (a predicted batch above 0: load in the last load window, or a
        forecast for this window) need more GPUs, one instance of each at its tp, than are live. Then some model
        can have an instance only by sharing GPUs or by taking another's (a start, a stop, a cold cache for
        both), so co-serving engages; where every model with demand fits on GPUs of its own it stays off
        (unless ``coserve_always``), and the policy is the paper's."""
        self.ids &= state.instances.keys()
        self.forget_reopened()
        hosted = {(tuple(i.gpus), i.model) for i in state.instances.values() if i.instance_id in self.ids}
        self.out, self.keep, self.batch = out, keep, batch
        self.converting = {g: m for g, m in self.converting.items() if (g, m) in hosted
                           and (m in self.splitting or not self.light(m))}
        self.copies = Counter(i.model for i in state.instances.values() if i.instance_id in self.ids and not i.draining)
        self.pending = {}
        self.stopped_idle = set()
        self.caps = {}
        live = state.live_gpus()
        self.demand_gpus = sum(self.models[m].tp for m, b in batch.items() if b > 0)
        if self.demand_gpus > live:  # a model no server can hold needs no GPUs (found in review: a tp-4 model's
            # forecast on 2-GPU servers co-served two light models on one GPU, the other idle for good)
            self.demand_gpus -= sum(self.models[m].tp for m in state.unservable() if batch.get(m, 0.0) > 0)
        self.oversubscribed = self.demand_gpus > live
        self.active = self.cfg.coserve_always or self.cfg.consolidate or self.oversubscribed

    def over_with(self, state: ClusterState, model: str) -> bool:
        """Over-subscribed, counting ``model`` as a model with demand: one whose first requests came after the last
        tick (it is asked about because a request of it waits) is not in that tick's figures; or, with no GPU
        joined since, the first tick found no layout holding every model (``layout_refused_gpus``)."""
        live = state.live_gpus()
        return self.oversubscribed or 0 < live <= self.layout_refused_gpus or (
            self.batch.get(model, 0.0) <= 0 and self.demand_gpus + self.models[model].tp > live)

    @property
    def merge_band(self) -> float:
        """Share of the TPOT target a merge (or a join on GPUs that suffice) may fill: the §5 band,
        scale_in_threshold / scale_out_threshold, so that a model does not join and split back and forth."""
        return self.cfg.scale_in_threshold / self.cfg.scale_out_threshold

    def could_join(self, state: ClusterState, model: str) -> bool:
        """A cheap first test of ``join`` on existing hosts (route() builds no Board when it fails)."""
        m = self.models[model]
        if not (self.active or self.over_with(state, model)) or not self.light(model):
            return False
        for g, v in self.hosts(state).items():
            if len(g) != m.tp or any(state.gpus[x].gone for x in g):
                continue
            names = self.host_models(g, v)
            k = self.models_per_host(model, self.host_bytes(state, g))  # < 2: the model is not co-served there
            if model not in names and len(names) < k and k >= 2:
                return True
        return False

    def join(self, state: ClusterState, board: Board, model: str, reserved: set[int], *, new_host: bool,
             new_id, merge: bool = False, vacating: bool = False, replicas: int = 0) -> A.StartInstance | None:
        """A co-served instance of ``model`` on the best-fitting host (the one whose round with it is the longest
        within the join target), or, with ``new_host``, on idle GPUs as a new host; None when neither fits.
        Updates ``board`` (the GPUs' memory, and busy for a new host). ``reserved``: GPUs kept for other models.
        Only while engaged (``active``). Where GPUs suffice, a model co-serves only while, after it joins, an idle
        group of its tp remains to split out to (a host in a full cluster could not split when a model bursts);
        over-subscribed, none is required: the alternative is no instance at all, and a model that bursts there
        splits out as any model scales out (reclaim, merges of quiet models, time-sharing). ``merge``: the model
        runs a dedicated instance and moves here to free its GPUs (it joins within the §5 band, below).
        ``vacating``: the model moves off a host that another of its models turns into a dedicated instance
        (``vacate``): no idle group is required (there is none: that is why the host converts in place).
        ``replicas``: the model runs that many co-served instances, outgrew them, and finds no GPUs and no host to
        convert: one more co-served instance on another host (``replica``), sized for its share of the model's
        batch (batch / (replicas + 1)), not for the whole. Each host is sized by its own GPUs (``host_bytes``): a
        GPU too small for 2 of the model's shards hosts none of its co-served instances."""
        m = self.models[model]
        sizes = self.fits_sizes(state, model)
        over = self.over_with(state, model)
        spare = 0 if over or vacating or replicas else (2 if new_host else 1)
        # spare 0 (over-subscribed) needs no count: idle_groups' scan of every GPU was 5% of paper-conv at 200 models
        if not sizes or not (self.active or over or vacating) or not (self.light(model) or replicas) \
                or (spare and self.idle_groups(board, m.tp, reserved) < spare):
            return None
        mine = {model: self.batch.get(model, 0.0) / (replicas + 1)}
        # the §5 band below the split target keeps a model from joining and splitting back and forth; over-
        # subscribed, a model with no instance (not a merge) joins up to the target itself: its alternative is
        # no instance at all, i.e. waiting for time-sharing (preempt_after_s) and taking another model's GPUs
        band = 1.0 if over and not merge else self.merge_band
        target = self.cfg.coserve_tpot_s * band
        best = None
        for gpus, insts in self.hosts(state).items():
            names = self.host_models(gpus, insts)
            if len(gpus) != m.tp or reserved.intersection(gpus) or model in names or gpus in self.converting:
                continue
            if any(i.model == model for i in insts) or any(g not in board.local for g in gpus):
                continue
            gpu_bytes = self.host_bytes(state, gpus)
            if len(names) >= self.models_per_host(model, gpu_bytes):
                continue
            frac = self.kv_fraction(model, gpu_bytes)
            r = self.round_s(names | {model}, mine)
            # room for its shard and its whole KV share (its mapping may grow to it), beside the residents' shards
            # and whole shares: exact for a host whose instances still start, too (the board counts such a GPU as
            # full); prewarms there are evicted for it, lowest score first (a model served beats a copy kept for a
            # scale-out that may come)
            need = m.shard_bytes + kv_blocks_for(state, model, gpus, frac) * m.kv_block_bytes
            if r > target or not self.kv_fits(model, gpu_bytes, band, mine[model]):
                continue
            # the model's own replica exactly there becomes the start's weights (a hit); one that meets the
            # GPUs otherwise goes (found in review: it stayed, a second copy beside the instance's weights)
            s, mask = board.mask_of(gpus)
            own = [p.prewarm_id for p in board.by_server[s].values() if p.model == model and p.mask & mask]
            use = next((p for p in own if board.reps[p].mask == mask), None)
            evict = self._evictions(state, board, gpus, insts, need, use, [p for p in own if p != use])
            if evict is None:
                continue
            key = (bool(evict), use is None, -r, gpus)  # best fit among hosts that evict nothing, if any
            if best is None or key < best[0]:
                best = (key, gpus, evict, need, use, frac)
        if best is not None:
            _, gpus, evict, need, use, frac = best
            for pid in evict + ([use] if use is not None else []):
                board.remove(pid)
            for g in gpus:
                s, c = board.local[g]
                board.inst_count[s, c] += 1
                # charged here, so this tick's plan does not place a prewarm in the bytes promised to the joiner
                # (found in review: a 40 GiB GPU was promised 50 GiB)
                board.free[s, c] = max(0, board.free[s, c] - need)
            board.note_instance(model, gpus)
            act = A.StartInstance(new_id(model, "i"), model, gpus, prewarm_id=use, evict=tuple(evict),
                                  kv_fraction=frac, warm_engine=self.cfg.warm_engine)
            self.pending.setdefault(gpus, set()).add(model)
        elif new_host and not replicas and self.step_s(model, self.batch.get(model, 0.0)) <= target \
                and any(self.kv_fits(model, b, band) for b in sizes):
            held = [board.local[g] for g in reserved if g in board.local and not board.busy[board.local[g]]]
            # GPUs kept for other models count as busy for this choice (as in Policy._start_outside_reservations),
            # and so do those of a size that cannot host the model
            small = [b for b in {g.total_bytes for g in state.gpus if not g.gone}
                     if b not in sizes or not self.kv_fits(model, b, band)]
            if small:
                held += [(int(s), int(c)) for s, c in zip(*((~board.busy) & np.isin(board.total, small)).nonzero())]
            for loc in held:
                board.busy[loc] = True
            try:
                got = board.choose_for_instance(model)
            finally:
                for loc in held:
                    board.busy[loc] = board.inst_count[loc] > 0
            if got is None:
                return None
            gpus, used, evicted = got
            act = A.StartInstance(new_id(model, "i"), model, gpus, prewarm_id=used, evict=tuple(evicted),
                                  kv_fraction=self.kv_fraction(model, self.host_bytes(state, gpus)),
                                  warm_engine=self.cfg.warm_engine)
        else:
            return None
        self.ids.add(act.instance_id)
        return act

    def _room(self, state: ClusterState, board: Board, gpu: int, insts) -> int:
        """Bytes of ``gpu`` not promised: less the host's instances' shards and whole KV shares (and those that
        joined since the last tick, at their share) and the prewarms there."""
        used = 0
        for i in insts:
            mi = self.models[i.model]
            used += mi.shard_bytes + i.kv_blocks_total * mi.kv_block_bytes
        total = state.gpus[gpu].total_bytes
        here = {i.model for i in insts}
        for name in self.pending.get(tuple(insts[0].gpus), ()):
            if name in here:  # joined through route() since the tick: already counted among the host's instances
                continue
            mi = self.models[name]
            frac = self.kv_fraction(name, self.host_bytes(state, insts[0].gpus))  # as ``join`` sized it
            used += mi.shard_bytes + kv_blocks_for(state, name, insts[0].gpus, frac) * mi.kv_block_bytes
        s, k = board.local[gpu]
        used += sum(r.shard_bytes for r in board.by_server[s].values() if r.mask >> k & 1)
        return total - used

    def _evictions(self, state: ClusterState, board: Board, gpus, insts, need: int, use: str | None = None,
                   forced=()) -> list[str] | None:
        """Prewarms on the host's GPUs to evict (``forced`` ones, then the lowest score first) so that each has
        ``need`` bytes not promised; None when even evicting them all is not enough. ``use``: a prewarm the start
        takes as its weights (its bytes count as room; never evicted)."""
        evict: list[str] = list(forced)
        for g in gpus:
            s, k = board.local[g]
            room = self._room(state, board, g, insts) + sum(
                board.by_server[s][p].shard_bytes for p in evict + [use] if p is not None
                and board.by_server[s][p].mask >> k & 1)
            reps = sorted((r for r in board.by_server[s].values() if r.mask >> k & 1 and r.prewarm_id not in evict
                           and r.prewarm_id != use),
                          key=lambda r: (r.score, r.prewarm_id))
            for r in reps:
                if room >= need:
                    break
                evict.append(r.prewarm_id)
                room += r.shard_bytes
            if room < need:
                return None
        return evict

    @staticmethod
    def idle_groups(board: Board, tp: int, reserved: set[int]) -> int:
        """Aligned groups of tp GPUs with no instance and none kept for another model."""
        n = 0
        for s in range(board.n_servers):
            for start in range(0, MAX_GPUS_PER_SERVER - tp + 1, tp):
                cols = range(start, start + tp)
                if all(board.gpu_ids[s, k] >= 0 and int(board.gpu_ids[s, k]) not in reserved and not board.busy[s, k]
                       for k in cols):
                    n += 1
        return n

    def split(self, state: ClusterState, active: dict[str, list[InstanceState]], want_out: dict[str, int]) -> None:
        """Hosts over the TPOT target: their costliest model not yet splitting is marked; a marked model asks
        for one instance more than it runs (a dedicated one), until its co-served instance is retired."""
        self.splitting &= {i.model for i in state.instances.values() if i.instance_id in self.ids}
        for m in sorted(self.splitting):
            if self.light(m) and self.fits_everywhere(state, m):
                self.splitting.discard(m)  # its hosts are back within the target: no split
                continue
            if self.copies.get(m, 0) >= 2 and self.fits_everywhere(state, m):
                self.splitting.discard(m)  # its replicas carry it within the target: nothing more to split
        for gpus, insts in self.hosts(state).items():
            live = [i for i in insts if not i.draining]
            names = self.host_models(gpus, live)
            if len(names) < 2 or any(i.model in self.splitting for i in live):
                continue  # one split per host at a time: the round is re-read once it is done
            gpu_bytes = self.host_bytes(state, gpus)
            short = [i for i in live if not self.kv_fits(i.model, gpu_bytes, 1.0)]  # its batch outgrew its share
            if short or self.round_s(names) > self.cfg.coserve_tpot_s:
                worst = max(short or live, key=lambda i: (self.step_s(i.model, self.share(i.model)), i.instance_id))
                self.splitting.add(worst.model)
        for m in self.splitting:
            if not any(i.instance_id not in self.ids for i in active[m]):  # no dedicated one started yet
                want_out[m] = max(want_out[m], len(active[m]) + 1)

    def dedications(self, state: ClusterState) -> list[A.Dedicate]:
        """Hosts left with one instance, whose model outgrew co-serving (marked to split, or no longer light) or
        whose host was reopened for a guest that went quiet (``closing``), and nothing else on the GPUs (a draining
        co-resident still holds its KV): that instance becomes the model's dedicated instance in place
        (``A.Dedicate``): no start, no copy, no GPUs taken from anyone. A light one stays co-served otherwise
        (models may join it)."""
        out = []
        for gpus, insts in self.hosts(state).items():
            if len(insts) != 1 or self.pending.get(gpus):
                continue
            inst = insts[0]
            if inst.ready and not inst.draining and inst.model not in self.merging and (
                    inst.model in self.splitting or not self.light(inst.model) or inst.instance_id in self.closing):
                self.ids.discard(inst.instance_id)
                self.reopened.pop(inst.instance_id, None)
                self.closing.discard(inst.instance_id)
                self.caps.pop(inst.model, None)  # its host's size no longer bounds the model's co-served copies
                self.splitting.discard(inst.model)
                self.converting.pop(gpus, None)
                out.append(A.Dedicate(inst.instance_id))
        return out

    def vacate(self, state: ClusterState, board: Board, model: str, reserved: set[int], new_id,
               stopping=frozenset()) -> list[A.StartInstance]:
        """In-place conversion, where ``model`` outgrew its host and no GPUs are free for a dedicated instance:
        the host's other models move, each to another host that fits it (``join``, as a merge: its instance
        here stops once the new one is ready), so that ``model`` is left alone on the host and ``dedications``
        turns it into a dedicated instance. Each move that fits is made (one that does not leaves the host
        shared, but with a shorter round). Nothing while a move off this host is still under way."""
        mine = [i for i in state.instances.values() if i.model == model and i.instance_id in self.ids
                and not i.draining]
        if len(mine) != 1:
            return []
        gpus = tuple(mine[0].gpus)
        insts = self.hosts(state).get(gpus, [])
        others = sorted((i for i in insts if i.model != model and not i.draining),
                        key=lambda i: (-self.batch.get(i.model, 0.0), i.instance_id))
        # ``stopping``: instances this tick already stops (a move that retire finished): moving them again would
        # start a duplicate copy
        if not others or any(i.model in self.merging or i.instance_id in stopping for i in others):
            return []
        out = []
        self.converting[gpus] = model
        for inst in others:
            act = self.join(state, board, inst.model, reserved | set(gpus), new_host=False, new_id=new_id,
                            vacating=True)
            if act is not None:
                out.append(act)
                self.merging_into(inst.model, inst.instance_id, act.instance_id)
        if not out:
            del self.converting[gpus]
        return out

    def fits_everywhere(self, state: ClusterState, model: str) -> bool:
        """Whether every host serving ``model`` stays within the TPOT target, and each of its copies' batch within
        its KV share, with its batch spread over its copies."""
        for gpus, insts in self.hosts(state).items():
            names = self.host_models(gpus, insts)
            if model in names and (self.round_s(names) > self.cfg.coserve_tpot_s
                                   or not self.kv_fits(model, self.host_bytes(state, gpus), 1.0)):
                return False
        return True

    def replica(self, state: ClusterState, board: Board, model: str, reserved: set[int], new_id,
                stopping: set[str]) -> A.StartInstance | None:
        """One more co-served instance of a model that outgrew its (only co-served) instances and found neither GPUs
        nor a host to convert (``vacate``): on another host whose round stays within the target with the model's
        share of its batch (``join`` with ``replicas``). Requests then spread over its instances (``route``: the
        least loaded). As `shared` gives a popular model several colocated replicas, but decided online."""
        live = [i for i in state.instances.values() if i.model == model and not i.draining]
        cap = self.cfg.max_instances_per_model
        # one more instance, not a conversion: never past the cap (found in review: a model capped at 1 ran 2)
        if not live or any(i.instance_id not in self.ids for i in live) or not self.active \
                or not all(i.ready for i in live) or (cap and len(live) >= cap) or self.fits_everywhere(state, model):
            return None
        for gpus, insts in self.hosts(state).items():
            staying = {i.model for i in insts if not i.draining and i.instance_id not in stopping}
            if model in staying and (gpus in self.converting or staying == {model}):
                return None  # its host converts in place (or is about to be dedicated): no replica for it
        return self.join(state, board, model, reserved, new_host=False, new_id=new_id, replicas=len(live))

    def retire(self, state: ClusterState, stopping: set[str]) -> list[InstanceState]:
        """Instances to stop now: a co-served instance whose model (splitting, or no longer light) has a ready
        dedicated instance; a merging model's old instance once its co-served replacement is ready."""
        out = []
        by_model: dict[str, list[InstanceState]] = {}
        for inst in state.instances.values():
            if not inst.draining and inst.instance_id not in stopping:
                by_model.setdefault(inst.model, []).append(inst)
        for m in sorted(self.merging):
            old, new = self.merging[m]
            mine = {i.instance_id: i for i in by_model.get(m, ())}
            if old not in mine or new not in mine:
                del self.merging[m]  # one of them went (scaled in, lost): nothing left to finish
            elif mine[new].ready:
                del self.merging[m]
                if old in self.ids or (self.light(m) and m not in self.splitting):
                    out.append(mine[old])
                # else it outgrew co-serving while it moved: the move is called off, it keeps its dedicated
                # instance and the co-served one is retired below (as a split's); retiring the old one here too
                # stopped both
        for m, insts in sorted(by_model.items()):
            if m in self.merging:
                continue
            co = [i for i in insts if i.instance_id in self.ids]
            ded = [i for i in insts if i.instance_id not in self.ids]
            if co and any(i.ready for i in ded) and (m in self.splitting or not self.light(m)):
                out.extend(i for i in co if i.ready)
                self.splitting.discard(m)
        return out

    def merge_candidates(self, state: ClusterState, now_s: float, min_age_s: float,
                         stopping=frozenset()) -> list[tuple[str, str]]:
        """(model, instance) pairs that may move onto a host, freeing the instance's GPUs: the model is below the
        scale-in threshold and runs one instance, ready and past the minimum lifetime, that has its GPUs to itself
        (dedicated, or co-served alone on its host); not merging already, and none of its instances stopped by
        this tick already (``stopping``: scaled in, retired; found in review: a model scaled to zero joined a host,
        or opened one from the weights its stop had just kept, in the same tick's merge, and was stopped again a
        few ticks later); quietest first. None unless engaged."""
        if not self.active:
            return []
        by_model: dict[str, list[InstanceState]] = {}
        on_gpu: dict[int, int] = {}
        changing: set[str] = set()
        for inst in state.instances.values():
            for g in inst.gpus:
                on_gpu[g] = on_gpu.get(g, 0) + 1
            if inst.instance_id in stopping:
                changing.add(inst.model)
            elif not inst.draining:
                by_model.setdefault(inst.model, []).append(inst)
        out = []
        for m, insts in by_model.items():
            if len(insts) != 1 or m in changing or m in self.merging or m in self.splitting \
                    or self.keep.get(m, 0.0) > 1.0 or not self.light(m):
                continue
            i = insts[0]
            if not i.ready or now_s - i.ready_s < min_age_s or any(on_gpu[g] > 1 for g in i.gpus):
                continue
            out.append((self.batch.get(m, 0.0), m, i.instance_id))
        return [(m, iid) for _, m, iid in sorted(out)]

    @staticmethod
    def frees_group_for(state: ClusterState, board: Board, gpus, tps) -> bool:
        """Whether freeing ``gpus`` completes an aligned group of one of ``tps`` (the wanting models' degrees)
        whose other GPUs are idle: only then does a merge give a model short of GPUs a place to start."""
        return freed_group(state, board, gpus, tps) is not None

    def outgrown(self, model: str, insts: list[InstanceState]) -> bool:
        """Whether ``model`` runs only co-served instances (at least one) and wants a dedicated one: it is marked to
        split, or no longer light (its load asks for an instance or more of its own)."""
        live = [i for i in insts if not i.draining]
        return bool(live) and all(i.instance_id in self.ids for i in live) \
            and (model in self.splitting or not self.light(model))

    def keeps_last(self, state: ClusterState, model: str, insts: list[InstanceState]) -> bool:
        """Whether ``model``'s last instance stays although its load has been 0 for the load window: while engaged
        and the model has demand (its window forecast is above 0), when that instance is co-served (stopping it
        frees only a share of a host) or the model could join a host (a merge, not a stop, then frees its GPUs
        for a model that wants them). Stopping it would only start it again at its next request, on GPUs that
        another model must then lose (measured: 236 such stops in 20 minutes, paper-conv with 12 models). With
        ``PolicyConfig.forecast_keep_yields_to_starved`` the caller (``core.Policy``, step 3) does not ask while
        another model starves on a cluster too small for one instance of every model."""
        if not self.active or self.batch.get(model, 0.0) <= 0:
            return False
        return all(i.instance_id in self.ids for i in insts) or self.could_join(state, model)

    def could_pair(self, state: ClusterState, model: str, other: str) -> bool:
        """Whether ``model`` and ``other`` could share a host as merges do: the host holds two such shards, their
        round stays within the merge band of the TPOT target, and each one's batch fits its KV share there."""
        gpu_bytes = self.gpu_bytes(state)
        if not gpu_bytes or min(self.models_per_host(model, gpu_bytes), self.models_per_host(other, gpu_bytes)) < 2:
            return False
        band = self.merge_band
        return self.round_s({model, other}) <= self.cfg.coserve_tpot_s * band \
            and self.kv_fits(model, gpu_bytes, band) and self.kv_fits(other, gpu_bytes, band)

    def merging_into(self, model: str, old_id: str, new_id: str) -> None:
        self.merging[model] = (old_id, new_id)
