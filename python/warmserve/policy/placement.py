"""Where prewarmed replicas and new instances go: laminar placement (§3), eviction, scale-up allocation (§4).

A ``Board`` is the policy's working copy of GPU memory and prewarms during one decision round. It is built from a
ClusterState, changed as the round's actions are decided, and thrown away. Per server it keeps numpy rows of free
bytes, busy flags and score sums over the (at most 8) local GPUs, and GPU sets as 8-bit masks, so a replica is
placed with a handful of array operations over all servers at once.

Laminar rule: any two prewarmed replicas on a server have GPU sets that are disjoint or nested. The groups a
replica of degree tp may take are every tp-subset of the server's GPUs; a group conflicts with an existing
replica P when they overlap partly (G & P not in {0, G, P}). Removing a replica never breaks the rule, so
evictions are always safe; adding one checks the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.policy.gpu_masks import (CONFLICT, GROUP_BITS, GROUPS, MASK_COLS, MAX_GPUS_PER_SERVER, POPCOUNT, TPS,
                                        forbidden, group_fits, lexmin, pack_key)
from warmserve.policy.state import ClusterState, ModelInfo

@dataclass(slots=True)
class Replica:
    """A prewarmed replica on the board."""

    prewarm_id: str
    model: str
    server: int
    mask: int
    score: float
    loaded: bool
    shard_bytes: int
    #: Local GPU indices of ``mask``.
    cols: tuple[int, ...] = ()

    def __post_init__(self):
        self.cols = MASK_COLS[self.mask]


def _rows(rows: list[list], dtype) -> np.ndarray:
    """Per-server lists of per-GPU values as an (n servers, MAX_GPUS_PER_SERVER) array (n may be 0)."""
    return np.array(rows, dtype=dtype).reshape(len(rows), MAX_GPUS_PER_SERVER)


class Board:
    """GPU memory, busy GPUs and prewarmed replicas, as the policy sees them during one round."""

    def __init__(self, state: ClusterState, scores: dict[str, float] | None = None, *, laminar: bool = True,
                 rr_cursor: int = 0, rr_step: int = 0):
        self.models: dict[str, ModelInfo] = state.models
        self.failed_starts = state.failed_starts
        self.laminar = laminar
        n = len(state.servers)
        self.n_servers = n
        # Built in plain lists, then made arrays once: the policy builds a Board every tick, and numpy's scalar
        # updates per GPU and per replica were most of a tick's Board (7% of a run). The same integer and
        # float operations in the same order, so the arrays hold the same values.
        gpu_ids = [[-1] * MAX_GPUS_PER_SERVER for _ in range(n)]
        free = [[-1] * MAX_GPUS_PER_SERVER for _ in range(n)]  # a missing GPU never has room
        self.local: dict[int, tuple[int, int]] = {}
        for s, srv in enumerate(state.servers):
            if len(srv.gpu_ids) > MAX_GPUS_PER_SERVER:
                raise InvalidArgumentError(
                    f"server {srv.server_id} has {len(srv.gpu_ids)} GPUs; the placement handles at most "
                    f"{MAX_GPUS_PER_SERVER} per server: split it into several servers",
                    n_gpus=len(srv.gpu_ids),
                )
            for k, g in enumerate(srv.gpu_ids):
                if state.gpus[g].gone:  # drivers take lost GPUs out of their server; never place on one anyway
                    continue
                gpu_ids[s][k] = g
                free[s][k] = state.gpus[g].total_bytes
                self.local[g] = (s, k)
        self.gpu_ids = _rows(gpu_ids, np.int64)
        #: Each GPU's pool size: what an idle GPU offers once its instances are gone.
        self.total = _rows(free, np.int64)
        busy = [[g < 0 for g in row] for row in gpu_ids]
        inst_count = [[0] * MAX_GPUS_PER_SERVER for _ in range(n)]
        #: Model -> server -> mask of GPUs where an instance of the model runs: no replica of it goes there (a
        #: second copy of its weights, useless for a scale-out since the GPUs are busy, would also keep the
        #: instance's own weights from staying as a prewarm when it stops).
        self.inst_masks: dict[str, dict[int, int]] = {}
        for inst in state.instances.values():
            m = self.models[inst.model]
            b = m.shard_bytes + inst.kv_blocks_mapped * m.kv_block_bytes
            for g in inst.gpus:
                s, k = self.local[g]
                free[s][k] -= b
                if inst.ready_s is None:  # a starting instance will map its KV cache: count the GPU as full
                    free[s][k] = min(free[s][k], 0)
                busy[s][k] = True
                inst_count[s][k] += 1
            self.note_instance(inst.model, inst.gpus)
        self.busy = _rows(busy, bool)
        self.inst_count = _rows(inst_count, np.int64)
        # per GPU: the sum over its replicas of score / tp, their highest score, the sum of 1 / tp
        share, maxscore, nrep = ([[0.0] * MAX_GPUS_PER_SERVER for _ in range(n)] for _ in range(3))
        self.reps: dict[str, Replica] = {}
        self.by_server: list[dict[str, Replica]] = [{} for _ in range(n)]
        self.model_masks: dict[str, dict[int, int]] = {}  # model -> server -> OR of its replicas' masks
        self.rr_cursor, self.rr_step = rr_cursor, rr_step
        self.version = 0  # bumped by every change, so a failed eviction search can be remembered
        self._evict_failed: dict[tuple, tuple[int, float]] = {}
        self.group_scans = None  # arbitration.GroupScans, while the policy's step 4 reclaims (Policy._autoscale)
        scores = scores or {}
        masks: list[list[int]] = [[] for _ in range(n)]
        for p in state.prewarms.values():
            s0, mask = None, 0
            for g in p.gpus:
                s, k = self.local[g]
                if s0 is not None and s != s0:
                    raise InvalidArgumentError(f"prewarm {p.prewarm_id} spans servers {s0} and {s}", gpus=p.gpus)
                s0 = s
                mask |= 1 << k
            m = self.models[p.model]
            r = Replica(p.prewarm_id, p.model, s0, mask, scores.get(p.prewarm_id, p.score), p.loaded, m.shard_bytes)
            self._book(r, free, share, nrep, maxscore)  # on the lists; the laminar rows below, from every mask at once
            masks[s0].append(mask)
        self.free, self.share = _rows(free, np.int64), _rows(share, np.float64)
        self.maxscore, self.nrep = _rows(maxscore, np.float64), _rows(nrep, np.float64)
        self.forb = {tp: np.zeros((n, len(GROUPS[tp])), dtype=bool) for tp in TPS}
        for s, ms in enumerate(masks):
            if ms:
                key = tuple(sorted(set(ms)))
                for t in TPS:
                    self.forb[t][s] = forbidden(t, key)

    # ---- bookkeeping ------------------------------------------------------------------------------------

    def gpus_of(self, server: int, mask: int) -> tuple[int, ...]:
        return tuple(int(self.gpu_ids[server, k]) for k in range(MAX_GPUS_PER_SERVER) if mask >> k & 1)

    def mask_of(self, gpus) -> tuple[int, int]:
        s0, mask = None, 0
        for g in gpus:
            s, k = self.local[g]
            if s0 is not None and s != s0:
                raise InvalidArgumentError(f"GPU set {tuple(gpus)} spans servers {s0} and {s}", gpus=tuple(gpus))
            s0, mask = s, mask | (1 << k)
        return s0, mask

    def _cols(self, mask: int) -> list[int]:
        return [k for k in range(MAX_GPUS_PER_SERVER) if mask >> k & 1]

    def _book(self, r: Replica, free, share, nrep, maxscore) -> None:
        """Enter replica ``r`` into the board: its bytes and score shares into ``free``, ``share``, ``nrep`` and
        ``maxscore``, the board's arrays or, while ``__init__`` builds them, its per-server lists (``[s][k]`` serves
        both), and its model's mask; not the laminar rows."""
        self.version += 1
        self.reps[r.prewarm_id] = r
        self.by_server[r.server][r.prewarm_id] = r
        s, tp = r.server, len(r.cols)
        fs, ss, ns, ms = free[s], share[s], nrep[s], maxscore[s]  # rows (numpy views): no fancy indexing for 8 GPUs
        for k in r.cols:
            fs[k] -= r.shard_bytes
            ss[k] += r.score / tp
            ns[k] += 1.0 / tp
            if r.score > ms[k]:
                ms[k] = r.score
        mm = self.model_masks.setdefault(r.model, {})
        mm[s] = mm.get(s, 0) | r.mask

    def _add(self, r: Replica) -> None:
        self._book(r, self.free, self.share, self.nrep, self.maxscore)
        s = r.server
        for t in TPS:
            row = self.forb[t][s]
            np.logical_or(row, CONFLICT[t][r.mask], out=row)

    def remove(self, prewarm_id: str) -> Replica:
        self.version += 1
        r = self.reps.pop(prewarm_id)
        srv = self.by_server[r.server]
        del srv[prewarm_id]
        cols = list(r.cols)
        tp = len(cols)
        self.free[r.server, cols] += r.shard_bytes
        self.share[r.server, cols] -= r.score / tp
        self.nrep[r.server, cols] -= 1.0 / tp
        for k in cols:
            self.maxscore[r.server, k] = max((o.score for o in srv.values() if o.mask >> k & 1), default=0.0)
        mm = self.model_masks[r.model]
        rest = 0
        for o in srv.values():
            if o.model == r.model:
                rest |= o.mask
        if rest:
            mm[r.server] = rest
        else:
            del mm[r.server]
            if not mm:
                del self.model_masks[r.model]
        for t in TPS:
            row = np.zeros(len(GROUPS[t]), dtype=bool)
            for o in srv.values():
                row |= CONFLICT[t][o.mask]
            self.forb[t][r.server] = row
        return r

    def rescore(self, prewarm_id: str, score: float) -> None:
        self.version += 1
        r = self.reps[prewarm_id]
        cols = list(r.cols)
        self.share[r.server, cols] += (score - r.score) / len(cols)
        r.score = score
        srv = self.by_server[r.server]
        for k in cols:
            self.maxscore[r.server, k] = max((o.score for o in srv.values() if o.mask >> k & 1), default=0.0)

    def _model_rows(self, model: str) -> np.ndarray:
        """Per server, the mask of GPUs holding a replica or an instance of ``model`` (no replica of it goes
        there)."""
        rows = np.zeros(self.n_servers, dtype=np.int64)
        for s, m in self.model_masks.get(model, {}).items():
            rows[s] = m
        for s, m in self.inst_masks.get(model, {}).items():
            rows[s] |= m
        return rows

    def note_instance(self, model: str, gpus) -> None:
        """An instance of ``model`` runs (or starts) on ``gpus``: no replica of the model is placed there."""
        s, mask = self.mask_of(gpus)
        mm = self.inst_masks.setdefault(model, {})
        mm[s] = mm.get(s, 0) | mask

    @staticmethod
    def _pack(b: np.ndarray) -> np.ndarray:
        """Rows of 8 booleans as 8-bit masks (bit k = local GPU k)."""
        return np.packbits(b, axis=1, bitorder="little")[:, 0].astype(np.int64)

    # ---- placing prewarms -------------------------------------------------------------------------------

    def place(self, prewarm_id: str, model: str, score: float, *,
              evict: bool = True) -> tuple[tuple[int, ...], list[str]] | None:
        """Place one replica; returns its GPUs and the prewarm ids evicted to make room, or None (skipped)."""
        m = self.models[model]
        if not self.laminar:
            got = self._place_round_robin(m)
            if got is None:
                return None
            s, mask = got
            self._add(Replica(prewarm_id, model, s, mask, score, False, m.shard_bytes))
            return self.gpus_of(s, mask), []
        got = self._best_group(m, score)
        evicted: list[str] = []
        if got is None and evict:
            got = self._best_group_with_eviction(m, score)
            if got is not None:
                evicted = got[2]
                for pid in evicted:
                    self.remove(pid)
        if got is None:
            return None
        s, mask = got[0], got[1]
        self._add(Replica(prewarm_id, model, s, mask, score, False, m.shard_bytes))
        return self.gpus_of(s, mask), evicted

    def _startable(self, m: ModelInfo) -> np.ndarray:
        """GPUs an instance of ``m`` could start on (``choose_for_instance``'s test: its shard and one KV block):
        a prewarm anywhere else is never used (found in review: one went on a 40 GiB GPU beside an idle 80 GiB one
        and counted as the model's replica for good; a model no GPU can serve took all prewarm memory)."""
        return self.total >= m.shard_bytes + m.kv_block_bytes

    def _best_group(self, m: ModelInfo, score: float):
        tp = m.tp
        gm = GROUPS[tp]
        # Fast path: tp idle GPUs with no replica at all form a master group with nothing overlapped, the best
        # key there is; take the lowest such GPUs of the first server that has them (what the search would pick).
        empty = (self.nrep <= 1e-9) & ~self.busy & (self.free >= m.shard_bytes) & self._startable(m)
        counts = empty.sum(axis=1)
        if counts.max(initial=0) >= tp:
            s = int(np.argmax(counts >= tp))
            cols = np.nonzero(empty[s])[0][:tp]
            return s, int(sum(1 << int(k) for k in cols))
        bad = self._pack((self.free < m.shard_bytes) | ~self._startable(m)) | self._model_rows(m.name)
        feasible = ((bad[:, None] & gm[None, :]) == 0) & ~self.forb[tp]
        if not feasible.any():
            return None
        # Master groups first (the replica outranks everything on its GPUs), then groups on idle GPUs, then the
        # least overlapped score. Overlap counts each replica's score spread evenly over its GPUs. Compared in
        # that order, not summed into one key (found in review: at 1e18 a float step is 128, and the overlap
        # tie-break vanished among non-master groups); ties go to the first group.
        nonmaster = self._pack(self.maxscore > score)
        nm = (nonmaster[:, None] & gm[None, :]) != 0
        busy = POPCOUNT[(self._pack(self.busy)[:, None] & gm[None, :])]
        overlap = self.share @ GROUP_BITS[tp].T
        i = lexmin(feasible, nm, busy, overlap)
        s, k = divmod(i, len(gm))
        return s, int(gm[k])

    def _best_group_with_eviction(self, m: ModelInfo, score: float):
        """Cheapest group (by evicted score) that evicting only lower-score replicas makes feasible."""
        # Nothing changed since a search for the same size (and the same model, or any model with no replica and
        # no instance) failed at a higher score: this one fails too (fewer replicas are below it). The KV block is part
        # of the size: it decides which GPUs the model may use at all (``_startable``; found in review, a large
        # block's failure skipped a model whose small block fits a GPU with replicas to evict).
        key = (m.tp, m.shard_bytes, m.kv_block_bytes,
               m.name if m.name in self.model_masks or m.name in self.inst_masks else None)
        failed = self._evict_failed.get(key)
        if failed is not None and failed[0] == self.version and score <= failed[1]:
            return None
        got = self._search_eviction(m, score)
        if got is None:
            self._evict_failed[key] = (self.version, score)
        return got

    def _search_eviction(self, m: ModelInfo, score: float):
        tp = m.tp
        low_bytes = np.zeros_like(self.free)
        for r in self.reps.values():
            if r.score < score:
                for k in r.cols:
                    low_bytes[r.server, k] += r.shard_bytes
        ok = (self.free + low_bytes >= m.shard_bytes) & (self.gpu_ids >= 0) & self._startable(m)
        ok_mask = self._pack(ok) & ~self._model_rows(m.name)
        counts = POPCOUNT[ok_mask & 0xFF]
        servers = np.nonzero(counts >= tp)[0]
        if len(servers) == 0:
            return None
        # the few servers with the least score to lose: the cheapest eviction is almost always among them
        order = servers[np.argsort(self.share[servers].sum(axis=1), kind="stable")][:6]
        best = None
        for s in order:
            s = int(s)
            reps = sorted(self.by_server[s].values(), key=lambda r: (r.score, r.prewarm_id))
            for g in GROUPS[tp]:
                g = int(g)
                if g & ~int(ok_mask[s]):
                    continue
                cost = self._eviction_cost(s, g, reps, m, score)
                if cost is not None and (best is None or cost[0] < best[0]):
                    best = (cost[0], s, g, cost[1])
        if best is None:
            return None
        return best[1], best[2], best[3]

    def _eviction_cost(self, s: int, g: int, reps: list[Replica], m: ModelInfo, score: float):
        out: list[str] = []
        gone: set[str] = set()
        for r in reps:
            i = r.mask & g
            if i and i != r.mask and i != g:
                if r.score >= score:
                    return None
                out.append(r.prewarm_id)
                gone.add(r.prewarm_id)
        for k in self._cols(g):
            room = int(self.free[s, k]) + sum(r.shard_bytes for r in reps if r.prewarm_id in gone and r.mask >> k & 1)
            for r in reps:  # lowest score first
                if room >= m.shard_bytes:
                    break
                if r.prewarm_id in gone or not (r.mask >> k & 1):
                    continue
                if r.score >= score:
                    return None
                out.append(r.prewarm_id)
                gone.add(r.prewarm_id)
                room += r.shard_bytes
            if room < m.shard_bytes:
                return None
        return sum(self.reps[p].score for p in out), out

    def _place_round_robin(self, m: ModelInfo):
        """The ablation: the next tp consecutive GPUs of a server with room, from a cursor that moves on."""
        n_slots = self.n_servers * MAX_GPUS_PER_SERVER
        holders = self._model_rows(m.name)
        for step in range(n_slots):
            pos = (self.rr_cursor + step) % n_slots
            s, k = divmod(pos, MAX_GPUS_PER_SERVER)
            if k + m.tp > MAX_GPUS_PER_SERVER:
                continue
            mask = ((1 << m.tp) - 1) << k
            cols = list(range(k, k + m.tp))
            if (self.free[s, cols] >= m.shard_bytes).all() and self._startable(m)[s, cols].all() \
                    and not (int(holders[s]) & mask):
                self.rr_cursor = (pos + (self.rr_step or m.tp)) % n_slots
                return s, mask
        return None

    def place_at(self, prewarm_id: str, model: str, gpus, score: float) -> bool:
        """Put a replica of ``model`` exactly on ``gpus`` when they are idle, have room for a shard, hold no
        replica of the model and the laminar rule allows it (a stopped instance's weights kept in place)."""
        m = self.models[model]
        s, mask = self.mask_of(gpus)
        cols = self._cols(mask)
        if len(cols) != m.tp or self.busy[s, cols].any() or (self.free[s, cols] < m.shard_bytes).any():
            return False
        if self.model_masks.get(model, {}).get(s, 0) & mask:
            return False
        if self.laminar:
            k = int(np.nonzero(GROUPS[m.tp] == mask)[0][0])
            if self.forb[m.tp][s, k]:
                return False
        self._add(Replica(prewarm_id, model, s, mask, score, False, m.shard_bytes))
        return True

    # ---- scale-up (§4) ----------------------------------------------------------------------------------

    def _avoiding_failed(self, model: str, room: np.ndarray) -> np.ndarray:
        """``room`` (per server, a mask of the GPUs a start of ``model`` may use) less the GPUs its starts failed
        on (``ClusterState.failed_starts``), where a group of its tp still fits in what is left; else ``room``."""
        failed = self.failed_starts.get(model)
        if not failed:
            return room
        kept = room.copy()
        for g in failed:
            if g in self.local:
                s, k = self.local[g]
                kept[s] &= ~(1 << k)
        return kept if group_fits(kept, self.models[model].tp).any() else room

    def choose_for_instance(self, model: str) -> tuple[tuple[int, ...], str | None, list[str]] | None:
        """GPUs for a new instance of ``model``: its GPUs, the prewarm it consumes (or None: a cold load), and
        the other prewarms it evicts. Marks the GPUs busy and removes those replicas; None when no GPUs fit."""
        m = self.models[model]
        # Idle GPUs whose pool holds the shard and one KV block: with mixed GPU sizes a smaller one would get an
        # instance with no KV cache, its memory over-committed, and a real worker's start fails out of memory on
        # it at every retry (found in review: a 10 GiB GPU chosen for a 13 GiB shard beside an idle 80 GiB one).
        # Prewarms are placed only where this holds too (``_startable``), steps 1-2 test it still; the packing key
        # below still counts every idle GPU (fragmentation is about all of them).
        idle = self._pack(~self.busy)
        room = self._avoiding_failed(model, idle & self._pack(self.total >= m.shard_bytes + m.kv_block_bytes))
        best = None
        for loaded in (True, False):  # 1. a loaded prewarm on idle GPUs, 2. a loading one
            for s, mask in self.model_masks.get(model, {}).items():
                for r in self.by_server[s].values():
                    if r.model != model or r.loaded != loaded or (r.mask & ~int(room[s])):
                        continue
                    damage = sum(o.score for o in self.by_server[s].values() if o is not r and o.mask & r.mask)
                    key = (damage, r.prewarm_id)
                    if best is None or key < best[0]:
                        best = (key, s, r.mask, r.prewarm_id)
            if best is not None:
                break
        if best is None:  # 3. idle GPUs holding the fewest prewarmed replicas
            gm = GROUPS[m.tp]
            fits = group_fits(room, m.tp)
            if not fits.any():
                return None
            # Fewest prewarmed models first (§4): each replica that meets the group is evicted whole, so it counts
            # once whatever its tp (found in review: counted 1/tp per GPU, a tp-1 start evicted a whole tp-4
            # replica rather than a tp-1 one); among equals, pack: an aligned group in the aligned block and server
            # with the fewest idle GPUs left, so that free GPUs stay in whole blocks a large-tp model can use; then
            # the least score evicted (as steps 1-2 weigh theirs).
            reps = list(self.reps.values())
            meets = (np.array([r.mask for r in reps], dtype=np.int64).reshape(-1, 1) & gm[None, :]) != 0
            where = np.array([r.server for r in reps], dtype=np.int64)
            hit = np.zeros((self.n_servers, len(gm)))
            lost = np.zeros((self.n_servers, len(gm)))
            np.add.at(hit, where, meets)  # unbuffered, in replica order: repeated servers all count
            np.add.at(lost, where, meets * np.array([r.score for r in reps]).reshape(-1, 1))
            i = lexmin(fits, hit, pack_key(tuple(idle.tolist()), m.tp), lost)
            s, k = divmod(i, len(gm))
            best = (None, s, int(gm[k]), None)
        _, s, mask, used = best
        evicted = [r.prewarm_id for r in list(self.by_server[s].values()) if r.mask & mask and r.prewarm_id != used]
        for pid in evicted:
            self.remove(pid)
        if used is not None:
            self.remove(used)
        cols = self._cols(mask)
        self.busy[s, cols] = True
        self.inst_count[s, cols] += 1
        self.free[s, cols] = 0  # its KV cache takes the rest until a KV target says otherwise
        gpus = self.gpus_of(s, mask)
        self.note_instance(model, gpus)
        return gpus, used, evicted

    def stop_instance(self, gpus, total_bytes: int | None = None) -> None:
        """An instance on ``gpus`` is gone: a GPU with no other instance is idle again with its pool size less its
        prewarms. ``total_bytes``: that size where the caller gives one for all the GPUs; None: each GPU's own
        (found in review: the smallest GPU's size for all of them understated the larger ones)."""
        self.version += 1  # room appeared: a remembered failed eviction search may succeed now
        for g in gpus:
            s, k = self.local[g]
            self.inst_count[s, k] -= 1
            if self.inst_count[s, k] <= 0:
                self.inst_count[s, k] = 0
                self.busy[s, k] = False
                total = int(self.total[s, k]) if total_bytes is None else total_bytes
                self.free[s, k] = total - sum(r.shard_bytes for r in self.by_server[s].values() if r.mask >> k & 1)
                for mm in self.inst_masks.values():
                    if s in mm:
                        mm[s] &= ~(1 << k)

    def release_instance(self, gpus, freed_bytes: int) -> None:
        """An instance on ``gpus`` stops (or shrinks its KV cache): its bytes go back to the pool."""
        self.version += 1  # room appeared: a remembered failed eviction search may succeed now
        for g in gpus:
            s, k = self.local[g]
            self.free[s, k] += freed_bytes

    def take_bytes(self, gpu: int, n_bytes: int, for_score: float = np.inf) -> list[str] | None:
        """Claim ``n_bytes`` on one GPU for a running instance, evicting the lowest-score replicas there first.
        Returns the evicted ids, or None when even evicting every replica below ``for_score`` is not enough."""
        s, k = self.local[gpu]
        reps = sorted((r for r in self.by_server[s].values() if r.mask >> k & 1), key=lambda r: (r.score, r.prewarm_id))
        room = int(self.free[s, k])
        need: list[str] = []
        for r in reps:
            if room >= n_bytes:
                break
            if r.score >= for_score:
                break
            need.append(r.prewarm_id)
            room += r.shard_bytes
        if room < n_bytes:
            return None
        for pid in need:
            self.remove(pid)
        self.free[s, k] -= n_bytes
        return need

    def server_masks(self) -> list[list[int]]:
        """The replica masks per server, for checking the laminar rule."""
        return [[r.mask for r in srv.values()] for srv in self.by_server]
