"""Reopening a light model's dedicated GPUs as a co-serving host for a starved light model, and closing it again
(issue 11): a mixin of ``coserve.CoServing``, kept apart so that coserve.py stays readable. ``moves.GpuMoves``
acts on what it decides (``_reopen_host``, ``_close_reopened``)."""

from __future__ import annotations

from collections import Counter

from warmserve.policy.state import ClusterState, InstanceState


class Reopening:
    """Mixed into ``coserve.CoServing``; uses its ``cfg``, ``models``, ``ids``, ``merging``, ``splitting``,
    ``converting``, ``pending``, ``batch``, ``keep``, ``oversubscribed`` and its sizing and host methods."""

    def __init__(self, cfg, models):
        super().__init__(cfg, models)
        #: Co-served instance started for the owner of a reopened host -> the starved model it was reopened for.
        self.reopened: dict[str, str] = {}
        #: Of those, the ones whose guests went quiet and were stopped: ``dedications`` turns each into a dedicated
        #: instance once it is alone on its GPUs.
        self.closing: set[str] = set()
        #: Reopened host (its owner's instance) -> since when its guest has been quiet (``quiet_guests``).
        self.quiet_since: dict[str, float] = {}
        #: Guest model -> when the quiet spell began that closed its last host (``reopened_for`` measures its gap).
        self.left: dict[str, float] = {}
        #: Guest model -> how long it must be quiet before its host closes (default min_lifetime_s).
        self.quiet_s: dict[str, float] = {}

    def forget_reopened(self) -> None:
        """A tick begins (after ``ids`` are trimmed to the state): reopened hosts whose owner's instance is gone."""
        self.reopened = {i: g for i, g in self.reopened.items() if i in self.ids}
        self.closing &= self.reopened.keys()
        self.quiet_since = {i: t for i, t in self.quiet_since.items() if i in self.reopened}

    def reopened_for(self, owner_id: str, guest: str, now_s: float) -> None:
        """A host reopened for ``guest`` (``owner_id``: the owner's co-served instance started there). Where a
        host closed for it before, the guest came back after a quiet spell of g seconds: this host closes only
        after 2 x g of quiet (at least min_lifetime_s, at most a forecast window, window_s), so that a guest
        sending now and then does not reopen a host (its owner's requests moved again) at each request: measured,
        one request every 20 s reopened one 30 times in 600 s with a fixed quiet period; now twice."""
        self.reopened[owner_id] = guest
        since = self.left.pop(guest, None)
        if since is not None:
            self.quiet_s[guest] = min(self.cfg.window_s, max(self.cfg.min_lifetime_s, 2 * (now_s - since)))

    def reopenable(self, state: ClusterState, model: str, now_s: float, min_age_s: float, stopping: set[str],
                   reserved: set[int]) -> list[InstanceState]:
        """Dedicated instances whose GPUs may reopen as a host for ``model`` (light, over-subscribed, no instance):
        each is the only instance of a light model (busy ones too: a quiet one merges), ready for ``min_age_s``,
        alone on GPUs of ``model``'s tp (none in ``reserved``), not stopping, merging nor splitting; the pair's
        round within the merge band of the TPOT target (over it the host splits them again) and each batch within
        its KV share there (as ``join`` admits a first instance). Fewest in flight first (they are moved)."""
        if not self.oversubscribed or not self.light(model):
            return []
        by_model: dict[str, list[InstanceState]] = {}
        on_gpu: Counter[int] = Counter()
        for inst in state.instances.values():
            on_gpu.update(inst.gpus)
            if not inst.draining:
                by_model.setdefault(inst.model, []).append(inst)
        out = []
        for m, insts in by_model.items():
            i = insts[0]
            if len(insts) != 1 or m == model or m in self.merging or m in self.splitting or not self.light(m) \
                    or i.instance_id in self.ids or i.instance_id in stopping or not i.ready \
                    or now_s - i.ready_s < min_age_s or len(i.gpus) != self.models[model].tp \
                    or reserved.intersection(i.gpus) or any(on_gpu[g] > 1 for g in i.gpus):
                continue
            size = self.host_bytes(state, i.gpus)
            if min(self.models_per_host(m, size), self.models_per_host(model, size)) >= 2 \
                    and self.round_s({m, model}) <= self.cfg.coserve_tpot_s * self.merge_band \
                    and self.kv_fits(m, size, 1.0) and self.kv_fits(model, size, 1.0):
                out.append((i.in_flight, self.batch.get(m, 0.0), i.instance_id, i))
        return [i for *_, i in sorted(out, key=lambda x: x[:3])]

    def quiet_guests(self, state: ClusterState, now_s: float, min_age_s: float,
                     stopping: set[str]) -> list[InstanceState]:
        """Guests to stop so that reopened hosts close: a host reopened for ``g`` (``reopened``), served for
        ``min_age_s``, whose other instances are all of ``g`` and quiet as the scale-in counts it (``g``'s load
        and prefill backlog 0 over load_window_s, ``keep``; nothing queued nor in flight) for ``quiet_s`` (by
        default ``min_age_s``; longer for a guest that came back, ``reopened_for``), each instance ready for
        ``min_age_s``. Found in review: ``g``'s forecast batch, tiny but positive, kept the cluster
        over-subscribed and ``g``'s idle instance alive (``keeps_last``), and a light host is never dedicated, so
        the busy owner kept a fifth of its KV for good. Each such host is marked ``closing``; ``dedications``
        gives the owner back a dedicated instance, its whole KV, once the guests are gone (``g`` coming back later
        starves and reopens a host again, as the first time). A host that any other model joined is a host like
        any other: it is forgotten here."""
        out: list[InstanceState] = []
        hosts = self.hosts(state)
        for iid, g in sorted(self.reopened.items()):
            owner = state.instances.get(iid)
            if owner is None or owner.draining or not owner.ready or iid in stopping:
                continue
            gpus = tuple(owner.gpus)
            guests = [i for i in hosts.get(gpus, ()) if i is not owner]
            if any(i.model != g for i in guests) or any(m != g for m in self.pending.get(gpus, ())):
                del self.reopened[iid]
                self.closing.discard(iid)
                continue
            if state.queued(g) or self.keep.get(g, 0.0) > 0 or any(i.in_flight for i in guests):
                self.quiet_since.pop(iid, None)  # busy: its quiet spell starts again
                continue
            since = self.quiet_since.setdefault(iid, now_s)
            if now_s - since < self.quiet_s.get(g, min_age_s) or now_s - owner.ready_s < min_age_s \
                    or owner.model in self.merging or owner.model in self.splitting or gpus in self.converting \
                    or g in self.merging or g in self.splitting \
                    or not all(i.ready and now_s - i.ready_s >= min_age_s for i in guests):
                continue
            self.closing.add(iid)
            self.left[g] = since
            out.extend(i for i in guests if not i.draining and i.instance_id not in stopping)
        return out
