"""The load signals and KV targets of ``core.Policy`` (a mixin, kept apart so that core.py stays readable): the 5 s
load averages the §5 scaling reads, the prefill backlog trigger (issue 11), the scale-out/in figures, and the §6
KV targets of running instances."""

from __future__ import annotations

import math

from warmserve.geometry import align_up
from warmserve.policy import actions as A
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, InstanceState

#: Prompt tokens ``ModelInfo.prefill_s`` is the prefill time of (the paper's prompts are cut to 1024 tokens, and
#: ``sim.inputs.model_infos`` profiles a 1024-token prefill): per-token prefill time = prefill_s / this.
PREFILL_PROFILE_TOKENS = 1024


class LoadSignals:
    """Mixed into ``core.Policy``; uses its ``cfg``, ``models``, ``_hist``, ``_load``, ``_prefill_load``,
    ``_keep_load``, ``_exact``, ``_inflight``, ``_meter_set`` and ``_meters``."""

    def _load_avg(self, model: str, now_s: float, value: float, series: dict | None = None,
                  window_s: float | None = None) -> float:
        """Time-weighted mean of the sampled load over the last ``window_s`` (default load_window_s; a step
        function). ``series``: which sampled series (default: the in-flight load)."""
        q = (self._load if series is None else series)[model]
        if not q or q[-1][1] != value:  # a step function: an unchanged value needs no new sample
            q.append((now_s, value))
        lo = now_s - (self.cfg.load_window_s if window_s is None else window_s)
        while len(q) > 1 and q[1][0] <= lo:
            q.popleft()
        t_prev, v_prev = q[0]
        start = max(t_prev, lo)
        if len(q) == 1 or now_s <= start:
            return value
        # only the oldest sample can start before the window (the loop above drops the others)
        area, t_prev = 0.0, start
        for i in range(1, len(q)):
            t, v = q[i]
            area += v_prev * (t - t_prev)
            t_prev, v_prev = t, v
        area += v_prev * (now_s - t_prev)  # the last value holds until now
        return area / (now_s - start)


    def _record(self, state: ClusterState, now_s: float) -> dict[str, float]:
        """Sample the load (for autoscaling) and the concurrency (for forecast windows); returns the 5 s loads."""
        load = {m: 0 for m in self.models}
        seen = {m: 0 for m in self.models}
        for inst in state.instances.values():
            seen[inst.model] += inst.in_flight
            if not inst.draining:
                load[inst.model] += inst.in_flight
        for m, q in state.queues.items():
            if m in load and q:
                load[m] += len(q)
                seen[m] += len(q)
        avg5 = {m: self._load_avg(m, now_s, load[m]) for m in sorted(self.models)}
        w = self.cfg.scale_in_window_s
        self._keep_avg = {m: self._load_avg(m, now_s, load[m], self._keep_load, w) for m in self.models} if w else {}
        for m in sorted(self.models):
            if m not in self._meters:
                # Watched since the policy's first input (a request event before this first tick: exact mode).
                self._meters[m] = self._live_meter(m, now_s if self._first_input_s is None else self._first_input_s)
            # Exact (request events): every model's meter moves on too. Found in review: a model with no event
            # yet had no meter, so its idle windows were recorded as missing, not 0, and its forecast kept
            # yesterday's level.
            self._meter_set(m, now_s, self._inflight[m] if self._exact else seen[m])
        return avg5

    def prefill_budget_s(self, model: str) -> float:
        """Seconds of prefill backlog one instance may hold while a request arriving behind it still meets the
        TTFT target T = ttft_target_prefills x p (p: the model's prefill time). A continuously batching engine
        decodes its running batch in every step it prefills in, so a backlog of b prefill-seconds clears in
        b x (p + d) / p, d the decode step (PAPER.md's planning profile: 35 + 15, 70 + 20, 100 + 30 ms for 7B,
        13B, 70B). The last request's own prefill is stretched the same way: (b + p) x (p + d) / p <= T gives
        b <= T x p / (p + d) - p. Without ``prefill_budget_decode_stretch``: (ttft_target_prefills - 1) x p. 0: off."""
        k = self.cfg.ttft_target_prefills
        if k <= 0:
            return 0.0
        info = self.models[model]
        p, d = info.prefill_s, info.decode_s_per_token
        if not self.cfg.prefill_budget_decode_stretch:
            return (k - 1.0) * p
        return max(0.0, k * p * p / (p + d) - p)

    def _prefill_backlog_s(self, state: ClusterState, model: str, taking=None) -> float:
        """Prefill time of the model's backlog (prompt tokens waiting or routed and not yet prefilled), seconds:
        tokens x prefill_s / PREFILL_PROFILE_TOKENS (prefill is compute-bound, about linear in tokens).
        ``taking``: the model's instances that take requests, if known (``ClusterState.prefill_backlog_tokens``)."""
        tokens = state.prefill_backlog_tokens(model, taking)
        return tokens * self.models[model].prefill_s / PREFILL_PROFILE_TOKENS

    def routed_capacity(self, b: float | None = None) -> float:
        """Requests route() gives one instance: ``b`` (default B, instance_capacity), no more than
        ``route_cap_per_instance`` when one is set. Whatever converts load to instances divides by it (scale-out,
        scale-in, the prewarm plan, migrations' room): found in review, with a cap of 8 below B = 32 a steady 16
        in flight kept ceil(16 / 0.5 / 32) = 1 instance, so each tick stopped one that route() revived (115 of
        each in 120 s). Without a cap it is B, as before."""
        b = self.cfg.instance_capacity if b is None else b
        cap = self.cfg.route_cap_per_instance
        return min(b, cap) if cap else b

    def _wanted(self, m: str, load: float, prefill_s: float, queued: int,
                keep_load: float = 0.0) -> tuple[float, float]:
        """(instances to scale out to, instances to scale in to) for a load (in-flight + queued requests) and a
        prefill backlog (seconds), both averaged over load_window_s. In-flight (§5): out to ceil(load / 0.8 / B)
        when load > 0.8 x B x instances, in to ceil(load / 0.5 / B), B here the routed capacity (``routed_capacity``:
        min(B, route_cap_per_instance)); prefill, with the same thresholds over the per-instance budget: out to
        ceil(backlog / (0.8 x budget)), never in below ceil(backlog / (0.5 x budget)). At least one instance while
        requests wait. ``keep_load``: the load averaged over scale_in_window_s (0: off); scale-in goes no lower
        than ceil(keep_load / 0.5 / B) either."""
        cfg, B = self.cfg, self.routed_capacity()
        out, keep = load / cfg.scale_out_threshold / B, max(load, keep_load) / cfg.scale_in_threshold / B
        budget = self.prefill_budget_s(m)
        if budget > 0:
            out = max(out, prefill_s / cfg.scale_out_threshold / budget)
            keep = max(keep, prefill_s / cfg.scale_in_threshold / budget)
        if queued:
            out, keep = max(out, 1.0), max(keep, 1.0)
        return out, keep


    def kv_free_target(self, inst: InstanceState) -> int:
        """Free KV blocks to keep mapped (§6): total * in_flight / B, at least min_free_kv_blocks; everything
        when KV reservation is off."""
        if not self.cfg.kv_reservation:
            return max(0, inst.kv_blocks_total - inst.kv_blocks_used)
        want = math.ceil(inst.kv_blocks_total * inst.in_flight / self.cfg.instance_capacity)
        return max(0, min(max(want, self.cfg.min_free_kv_blocks), inst.kv_blocks_total - inst.kv_blocks_used))

    def _held_need(self, model: str, now_s: float, need: float) -> float:
        """The most instances ``model`` wanted over the last scale_in_hold_s, ``need`` (now's) included."""
        q = self._need_peaks[model]
        while q and q[0][0] < now_s - self.cfg.scale_in_hold_s:
            q.popleft()
        while q and q[-1][1] <= need:
            q.pop()
        q.append((now_s, need))
        return q[0][1]

    def _kv_targets(self, state: ClusterState, board: Board, out: list, deferred: list | None = None) -> None:
        """Set each ready instance's KV target (§6). ``deferred``: shrinks are not ordered but listed there as
        (instance, blocks, block bytes, blocks per page), their room released on ``board`` (``kv_shrink_on_demand``)."""
        stopping = A.stopping(out)
        for iid in sorted(state.instances):
            inst = state.instances[iid]
            if not inst.ready or inst.draining or iid in stopping or inst.kv_blocks_total <= 0:
                continue
            block, k = self.models[inst.model].kv_block_bytes, self.models[inst.model].kv_blocks_per_page
            # An engine stalled for room asks for what its next step wants, beyond the load's share: found in
            # review, a long prompt beside another model's prewarm waited out request_timeout_s, the target
            # (total x in_flight / B) too small to evict the prewarm whose pages it lacked.
            free = max(self.kv_free_target(inst),
                       min(inst.kv_blocks_wanted, inst.kv_blocks_total - inst.kv_blocks_used))
            if k > 1:  # the engine maps whole pages of k blocks: ask for whole pages
                free = min(align_up(inst.kv_blocks_used + free, k), inst.kv_blocks_total) - inst.kv_blocks_used
            delta = inst.kv_blocks_used + free - inst.kv_blocks_mapped
            if k > 1 and delta < 0 and inst.kv_free_target == free:
                # Pages held past the target by blocks in use spread over them: the engine compacts them itself
                # (KVCache.compact); asking again, or counting them as given back, would repeat at every tick.
                delta = 0
            if delta > 0:  # load rose: take pages back, evicting the lowest-score prewarms on these GPUs first
                can = min(self._room_blocks(board, g, block) for g in inst.gpus)
                delta = min(delta, can)
                free = inst.kv_blocks_mapped + delta - inst.kv_blocks_used
                for g in inst.gpus:
                    for pid in board.take_bytes(g, delta * block) or []:
                        self._scores.pop(pid, None)
                        out.append(A.Evict(pid, "kv"))
            elif delta < 0:
                board.release_instance(inst.gpus, -delta * block)
                if deferred is not None:  # the plan may use the room; unmapped only where it does
                    deferred.append((inst, -delta, block, k))
                    continue
            if delta != 0 or inst.kv_free_target != free:
                out.append(A.SetKvTarget(iid, max(free, 0)))

    @staticmethod
    def _shrinks_placed(deferred: list, board: Board) -> list:
        """The deferred KV shrinks (``_kv_targets``) the placements on ``board`` use: on each GPU, the room the
        prewarms took beyond what was free besides the deferred pages, taken from its instances in turn (whole
        pages); the rest stay mapped."""
        room: dict[int, int] = {}
        for inst, blocks, block, _ in deferred:
            for g in inst.gpus:
                room[g] = room.get(g, 0) + blocks * block
        need = {g: max(0, b - int(board.free[board.local[g]])) for g, b in room.items()}
        acts = []
        for inst, blocks, block, k in deferred:
            want = max(need[g] for g in inst.gpus)
            if want <= 0:
                continue
            n = min(blocks, align_up(-(-want // block), k))
            for g in inst.gpus:
                need[g] = max(0, need[g] - n * block)
            acts.append(A.SetKvTarget(inst.instance_id, max(inst.kv_blocks_mapped - n - inst.kv_blocks_used, 0)))
        return acts

    def _forget_gone(self, board: Board) -> None:
        """Forget the prewarms the state no longer holds: failed, or lost with their GPU, unsaid to the policy
        (found in review: a score each, kept forever). In place: the board reads ``_scores``."""
        self._kept &= board.reps.keys()
        for k in self._scores.keys() - board.reps.keys():
            del self._scores[k]

    @staticmethod
    def _room_blocks(board: Board, gpu: int, block: int) -> int:
        s, k = board.local[gpu]
        room = int(board.free[s, k]) + sum(r.shard_bytes for r in board.by_server[s].values() if r.mask >> k & 1)
        return max(0, room // block)
