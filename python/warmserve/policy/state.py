"""The snapshot of cluster state the policy reads.

The driver (controller or simulator) owns these objects and keeps them current; the policy only reads them and
never mutates them. Sizes are bytes, times are seconds on the driver's clock (``now_s``), where t = 0 is a midnight
of the zone the load follows; the policy's calendar (``policy.calendar``) maps it to the time of day the
forecasters' daily season uses (``now_s % 86400`` in the simulator, whose days are 86400 s).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from warmserve.errors import InvalidArgumentError
from warmserve.geometry import PAGE_BYTES, blocks_for_tokens, is_page_size, kv_block_bytes, shard_bytes

#: Host-to-device bandwidth in the cold-start cost c_m (PAPER.md §2), bytes per second.
H2D_BYTES_PER_S = 32e9


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model the cluster serves, as far as the policy needs to know it."""

    #: Name requests use; the key of every per-model table.
    name: str
    #: Bytes of all weights together (all tensor-parallel shards).
    weight_bytes: int
    #: Tensor-parallel degree: GPUs one instance or one prewarmed replica spans, all on one server (1, 2, 4, 8).
    tp: int = 1
    #: KV-cache bytes one token takes over all layers and all shards.
    kv_bytes_per_token: int = 0
    #: Latency profile for planning and trace conversion: time of a prefill, seconds.
    prefill_s: float = 0.05
    #: Latency profile: time per generated token (one decode step), seconds.
    decode_s_per_token: float = 0.02
    #: Page of the workers' pools, bytes (a multiple of 2 MiB): a worker maps the weights in whole pages.
    page_bytes: int = PAGE_BYTES
    #: Longest request the API accepts for the model (prompt + output), tokens; 0: unknown. A KV share the policy
    #: sizes holds at least one such request (``kv_blocks_for`` raises a co-served share to it).
    max_context_tokens: int = 0
    #: Bytes one GPU holds for this model's weights (one shard), aligned to page_bytes. Derived.
    shard_bytes: int = field(init=False, repr=False, compare=False)
    #: Bytes one KV block (KV_BLOCK_TOKENS tokens, all layers) takes on each GPU of an instance, 2 MiB aligned.
    #: Derived.
    kv_block_bytes: int = field(init=False, repr=False, compare=False)
    #: KV blocks one page holds where pages are larger than blocks and whole blocks share them (1 otherwise): an
    #: engine maps whole pages, so its mapped blocks are counted in whole pages. Derived.
    kv_blocks_per_page: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.tp not in (1, 2, 4, 8):
            raise InvalidArgumentError(f"model {self.name!r}: tp must be 1, 2, 4 or 8, got {self.tp}", tp=self.tp)
        if self.weight_bytes <= 0:
            raise InvalidArgumentError(
                f"model {self.name!r}: weight_bytes must be > 0, got {self.weight_bytes}",
                weight_bytes=self.weight_bytes,
            )
        # Stored rather than computed per use: the planner reads them for every GPU it looks at.
        if not is_page_size(self.page_bytes):
            raise InvalidArgumentError(f"model {self.name!r}: page_bytes must be a positive multiple of {PAGE_BYTES}, "
                                       f"got {self.page_bytes}", page_bytes=self.page_bytes)
        object.__setattr__(self, "shard_bytes", shard_bytes(self.weight_bytes, self.tp, self.page_bytes))
        object.__setattr__(self, "kv_block_bytes", kv_block_bytes(self.kv_bytes_per_token, self.tp))
        shares = self.page_bytes > self.kv_block_bytes and self.page_bytes % self.kv_block_bytes == 0
        object.__setattr__(self, "kv_blocks_per_page", self.page_bytes // self.kv_block_bytes if shares else 1)

    @property
    def cold_start_s(self) -> float:
        """c_m of PAPER.md §2: one shard's bytes over the host-to-device bandwidth."""
        return self.weight_bytes / self.tp / H2D_BYTES_PER_S


@dataclass(slots=True)
class GpuState:
    """One GPU. Ids are dense and stable for the life of a cluster: ``state.gpus[i].gpu_id == i``; a GPU that
    joins later gets the next id, and a lost one keeps its id and entry, marked ``gone``."""

    gpu_id: int
    server_id: int
    #: Bytes the page pool offers to weights, KV caches and prewarms together.
    total_bytes: int
    #: Lost (its worker died or left): it is no longer in its server's ``gpu_ids``, and nothing is placed on it.
    gone: bool = False


@dataclass(slots=True)
class ServerState:
    """One server: its live GPUs, in NVLink order (``gpu_ids[k]`` is local GPU k); lost GPUs leave this list."""

    server_id: int
    gpu_ids: tuple[int, ...]


@dataclass(slots=True)
class InstanceState:
    """A running (or starting, or draining) serving instance of one model on ``len(gpus) == tp`` GPUs."""

    #: Chosen by the policy in StartInstance (a driver adding instances on its own picks any unique string).
    instance_id: str
    model: str
    gpus: tuple[int, ...]
    #: When StartInstance was applied.
    created_s: float
    #: When it became able to serve; None while it is still starting (a creation in flight).
    ready_s: float | None = None
    #: Requests routed to it and not finished (queued inside the engine or running).
    in_flight: int = 0
    #: StopInstance was applied: it takes no new requests and frees its GPUs once in_flight reaches 0.
    draining: bool = False
    #: KV blocks the instance could hold with all its GPUs' memory (``total_blocks`` of PAPER.md §6).
    kv_blocks_total: int = 0
    #: KV blocks holding tokens now.
    kv_blocks_used: int = 0
    #: KV blocks backed by physical pages now (used + free); the rest of the cache is unmapped.
    kv_blocks_mapped: int = 0
    #: KV blocks its engine's next step wants while it is stalled for room (0: not stalled; the simulator's
    #: engine model never stalls so): the policy keeps at least these free (``Policy._kv_targets``).
    kv_blocks_wanted: int = 0
    #: The last SetKvTarget applied (free blocks to keep mapped); None before the first.
    kv_free_target: int | None = None
    #: Prompt tokens of the requests routed here whose prefill has not completed (no first token yet), tokens.
    #: The driver keeps it from ``submit(prompt_tokens=)`` and the executor's ``prefill_done``; 0 when the
    #: executor gives no prompt sizes.
    prefill_tokens_pending: int = 0
    #: Most sequences its engine runs at once (its max_num_seqs, from ``instance_ready``); 0: not known. route()
    #: sends it no more, so a burst beyond it waits in the driver's queue, where whichever instance frees a slot or
    #: starts first takes it, not in this engine's own queue (found in review: requests queued there stayed while a
    #: new instance sat idle, and timed out).
    max_seqs: int = 0

    @property
    def ready(self) -> bool:
        return self.ready_s is not None


def least_loaded(by_prefill: bool):
    """The sort key of route()'s "least-loaded instance": the fewest requests in flight, or with ``by_prefill``
    (``PolicyConfig.route_least_prefill``) the fewest prompt tokens waiting for their prefill first (a request's
    first token waits for the prefills queued before it, not for the decodes running beside it)."""
    if by_prefill:
        return lambda i: (i.prefill_tokens_pending, i.in_flight, i.instance_id)
    return lambda i: (i.in_flight, i.instance_id)


@dataclass(slots=True)
class PrewarmState:
    """Weights of one model held (or being loaded) on ``len(gpus) == tp`` GPUs of one server, not serving."""

    #: Chosen by the policy in Prewarm.
    prewarm_id: str
    model: str
    gpus: tuple[int, ...]
    #: Fraction of the weights loaded, 0..1; 1.0 means ready to turn into an instance at once.
    progress: float = 0.0
    #: Priority the planner gave it (PAPER.md §2); lower scores are evicted first.
    score: float = 0.0

    @property
    def loaded(self) -> bool:
        return self.progress >= 1.0


@dataclass(slots=True)
class ClusterState:
    """Everything the policy reads. The driver keeps it current between calls."""

    servers: list[ServerState]
    gpus: list[GpuState]
    models: dict[str, ModelInfo]
    instances: dict[str, InstanceState] = field(default_factory=dict)
    prewarms: dict[str, PrewarmState] = field(default_factory=dict)
    #: Requests per model that arrived and wait for an instance (not yet routed), oldest first. The driver owns
    #: them (the items are its requests, opaque here); the policy reads only their lengths.
    queues: dict[str, deque] = field(default_factory=dict)
    #: Prompt tokens of the waiting requests per model (those in ``queues``), tokens; kept by the driver from
    #: ``submit(prompt_tokens=)`` (a model absent: 0).
    queued_prompt_tokens: dict[str, int] = field(default_factory=dict)
    #: Model -> the GPUs its starts failed on (not lost with them) since it last had an instance ready: a new start
    #: of it goes to other GPUs where any fit (``placement.Board.choose_for_instance``). Found in review: a node
    #: without the weights took every start of the model, each failing, while another node sat idle.
    failed_starts: dict[str, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def uniform(cls, n_servers: int, models: list[ModelInfo], *, gpus_per_server: int = 8,
                gpu_bytes: int = 72 << 30) -> ClusterState:
        """A cluster of identical servers with no instances and no prewarms."""
        if n_servers < 1 or gpus_per_server < 1:
            raise InvalidArgumentError(
                f"need at least one server and one GPU per server, got {n_servers} x {gpus_per_server}",
                n_servers=n_servers, gpus_per_server=gpus_per_server,
            )
        servers, gpus = [], []
        for s in range(n_servers):
            ids = tuple(range(s * gpus_per_server, (s + 1) * gpus_per_server))
            servers.append(ServerState(s, ids))
            gpus.extend(GpuState(g, s, gpu_bytes) for g in ids)
        return cls(servers=servers, gpus=gpus, models={m.name: m for m in models},
                   queues={m.name: deque() for m in models})

    # Derived views. They are cheap and recomputed on demand so the driver has only one thing to keep current.

    def instance_bytes_on(self) -> list[int]:
        """Bytes per GPU held by instances: weight shard plus mapped KV blocks."""
        used = [0] * len(self.gpus)
        for inst in self.instances.values():
            m = self.models[inst.model]
            b = m.shard_bytes + inst.kv_blocks_mapped * m.kv_block_bytes
            for g in inst.gpus:
                used[g] += b
        return used

    def prewarm_bytes_on(self) -> list[int]:
        """Bytes per GPU held by prewarmed (or loading) weight shards."""
        used = [0] * len(self.gpus)
        for p in self.prewarms.values():
            b = self.models[p.model].shard_bytes
            for g in p.gpus:
                used[g] += b
        return used

    def free_bytes_on(self) -> list[int]:
        """Bytes per GPU not held by an instance or a prewarm."""
        a, b = self.instance_bytes_on(), self.prewarm_bytes_on()
        return [g.total_bytes - a[i] - b[i] for i, g in enumerate(self.gpus)]

    def queued(self, model: str) -> int:
        """Requests of ``model`` waiting for an instance."""
        q = self.queues.get(model)
        return len(q) if q is not None else 0

    def prefill_backlog_tokens(self, model: str, taking=None) -> int:
        """Prompt tokens of ``model`` not yet prefilled: waiting in its queue or routed to one of its instances
        that still takes requests (a draining instance's backlog is served where it is). ``taking``: those
        instances, where the caller has them (the policy's per-model index), instead of a scan of every instance."""
        if taking is None:
            taking = (i for i in self.instances.values() if i.model == model and not i.draining)
        return self.queued_prompt_tokens.get(model, 0) + sum(i.prefill_tokens_pending for i in taking)

    def unservable(self) -> dict[str, str]:
        """Models no instance could serve on these GPUs, each with why: its tensor-parallel degree exceeds every
        server's live GPUs, or no server has ``tp`` GPUs each with room for its shard and one KV block. Empty
        when every model can be served (found in review: such a model got instances with no KV cache, or none,
        and its requests waited for ever with no error)."""
        out = {}
        sizes = [sorted((self.gpus[g].total_bytes for g in s.gpu_ids if not self.gpus[g].gone), reverse=True)
                 for s in self.servers]
        widest = max((len(z) for z in sizes), default=0)
        for name, m in sorted(self.models.items()):
            need = m.shard_bytes + m.kv_block_bytes
            if widest < m.tp:
                out[name] = (f"tp {m.tp} needs {m.tp} GPU(s) on one server; the largest server has {widest}: "
                             f"give the cluster a server with {m.tp} GPU(s) or lower the model's tp")
            elif not any(len(z) >= m.tp and z[m.tp - 1] >= need for z in sizes):
                out[name] = (f"each of its {m.tp} GPU(s) needs {need} bytes (a {m.shard_bytes}-byte shard and one "
                             f"{m.kv_block_bytes}-byte KV block); the largest has "
                             f"{max(max(z, default=0) for z in sizes)}: raise tp or use larger GPUs")
        return out

    def co_residents(self, inst: InstanceState) -> list[InstanceState]:
        """The other instances that serve (or start, or drain) on one of ``inst``'s GPUs. Prewarms do not count:
        the policy evicts them for room."""
        gpus = set(inst.gpus)
        return [o for o in self.instances.values() if o is not inst and not gpus.isdisjoint(o.gpus)]

    def busy_gpus(self) -> set[int]:
        """GPUs that carry an instance (starting, serving or draining)."""
        return {g for inst in self.instances.values() for g in inst.gpus}

    def live_gpus(self) -> int:
        """GPUs not lost (``GpuState.gone``)."""
        return sum(1 for g in self.gpus if not g.gone)


def runs_alone(tp: int, colocate_tp: bool) -> bool:
    """Whether an instance at tensor-parallel degree ``tp`` must have its GPU group to itself
    (``PolicyConfig.colocate_tp`` off)."""
    return tp > 1 and not colocate_tp


def kv_blocks_for(state: ClusterState, model: str, gpus, kv_fraction: float = 1.0) -> int:
    """KV blocks an instance of ``model`` on ``gpus`` may hold: ``kv_fraction`` of the GPUs' memory after its
    own weights shard; a share (``kv_fraction`` < 1) never below one request at the model's context
    (``ModelInfo.max_context_tokens``), nor above the whole room."""
    m = state.models[model]
    room = min(state.gpus[g].total_bytes for g in gpus) - m.shard_bytes
    blocks = max(0, int(room * kv_fraction) // m.kv_block_bytes)
    if kv_fraction < 1.0:
        # the API accepts a request at the model's full context, so a co-served instance must be able to run one
        # (its engine refuses what its cap cannot hold). Applied here, for the driver, co-serving's room sums and
        # the simulator alike: it was the live executor's alone, so live shares were larger than the policy had
        # counted and the simulator's than live's
        blocks = max(blocks, min(blocks_for_tokens(m.max_context_tokens), max(0, room) // m.kv_block_bytes))
    return blocks
