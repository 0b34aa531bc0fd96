"""Every message that crosses a ZeroMQ socket in warmserve: msgspec structs, MessagePack, one tagged union.

Requests carry an ``id`` chosen by the sender; every reply and stream event about that request carries the same
``id``, so replies are asynchronous and a peer can keep many requests in flight on one socket. A request ends
with exactly one final message: its typed reply, ``Error``, or (for ``Generate``) a ``Tokens`` with
``finished=True``. ``PrewarmProgress`` and unfinished ``Tokens`` are stream events before the end; a request's
``Tokens`` are numbered (``seq``), so a reader sees any the connection lost.

The worker side binds a ROUTER (or connects a DEALER to a controller's ROUTER and says ``Hello`` first); a client
connects a DEALER. Never pickle: a peer can only make us build these structs.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from . import errors
from .protocol_peek import leading_request_id

# Sampling crosses the wire inside Generate and Tokens; it lives in sampling.py, and stays importable from here.
from .sampling import (  # noqa: F401
    GREEDY_TEMPERATURE, MAX_TOP_LOGPROBS, MIN_REPETITION_PENALTY, SEED_MAX, SEED_MIN, SamplingParams, TokenLogprobs,
    stop_strings,
)


#: The version of this protocol a worker says it speaks (``Hello.protocol_version``); the controller refuses a
#: worker of another (``controller.launch.refusal``). Bump it whenever a message gains a field a peer must
#: understand: msgspec drops fields it does not know, so a worker of an older warmserve would ignore them, unsaid
#: (found in review: SamplingParams.min_p and min_tokens, a client asking min_tokens=10 got fewer tokens). 0: a
#: worker from before versions. 1: the first numbered version (Hello.protocol_version, Refused, min_p, min_tokens).
PROTOCOL_VERSION = 1
#: The first version whose workers read ``Refused``; an older one is left unanswered (it cannot decode it).
REFUSED_SINCE_VERSION = 1


class _Msg(msgspec.Struct, tag=True, tag_field="msg", omit_defaults=True):
    """Base of all messages; the tag (field "msg") is the class name."""


# ---------------------------------------------------------------- engine limits


class EngineConfig(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Limits of the engine of each running instance: part of the cluster's configuration (the config file's
    [engine] table, ``warmserve.config.ClusterConfig.engine``) and sent with every activation
    (``Activate.engine``), so workers on other hosts follow the cluster's file too. A worker activated without
    one uses its own (``WorkerCore(engine=...)``)."""

    #: Most sequences one instance runs at once (continuous batching); 0: the policy's instance_capacity (the
    #: controller fills it in), so the engine runs what the policy plans with.
    max_num_seqs: int = 0
    #: Most tokens one engine step computes (prefill chunks plus one per decoding sequence).
    max_batch_tokens: int = 2048
    #: Most KV blocks one instance may hold; 0: as many as its worker's pool can map.
    max_kv_blocks: int = 0
    #: Most KV blocks mapped per engine step while growing toward the target (mapping is throttled so that it
    #: does not stall a step).
    kv_map_blocks_per_step: int = 16

    def __post_init__(self):
        for name in self.__struct_fields__:
            if (e := errors.wire_int_error(f"EngineConfig.{name}", getattr(self, name), field=name)) is not None:
                raise e  # found in review: a value past 2**63-1 was accepted, then no activation could carry it
        if self.max_batch_tokens < 1 or self.kv_map_blocks_per_step < 1:
            raise errors.InvalidArgumentError(
                f"EngineConfig: max_batch_tokens ({self.max_batch_tokens}) and kv_map_blocks_per_step "
                f"({self.kv_map_blocks_per_step}) must be >= 1")

    def resolved(self, instance_capacity: int) -> "EngineConfig":
        """With max_num_seqs filled in from the policy's instance capacity when left at 0."""
        return self if self.max_num_seqs else msgspec.structs.replace(self, max_num_seqs=instance_capacity)


# ---------------------------------------------------------------- requests (client -> worker)


class Prewarm(_Msg):
    """Load a checkpoint into a new slot of the worker's pool; answered by progress events, then ``Prewarmed``."""

    id: int
    #: Directory of a Hugging Face checkpoint on the worker's file system.
    path: str
    #: Name the model is known by; defaults to the directory's base name.
    name: str = ""
    dtype: str = "auto"
    #: Tensor-parallel split: load only shard ``rank`` of a ``tp``-way instance (engine/parallel.py has the rules).
    tp: int = 1
    rank: int = 0
    #: Largest batch the instances of this model will run (EngineConfig.max_num_seqs): the decode CUDA graphs
    #: captured while it is prewarmed cover up to it; 0: the worker's own.
    max_num_seqs: int = 0


class Evict(_Msg):
    """Drop a prewarmed (not running) model; its pages go back to the pool at once. Answered by ``Evicted``."""

    id: int
    name: str


class Activate(_Msg):
    """Turn a prewarmed model into a running instance, with no copy of its weights. Answered by ``Activated``.

    With ``shared=False`` no other instance may be running (the one-instance worker of the paper); ``shared=True``
    is the GPU-sharing baseline: several instances, each with a fixed KV share of ``kv_blocks`` blocks.
    """

    id: int
    name: str
    #: KV blocks to give the instance; None lets the engine size it from the free pool.
    kv_blocks: int | None = None
    shared: bool = False
    #: Free KV blocks to keep mapped from the start (the KV reservation, see SetKvTarget); None: all of them.
    kv_target_free_blocks: int | None = None
    #: The engine's limits; None: the worker's own.
    engine: EngineConfig | None = None
    #: A tensor-parallel shard (Prewarm ``tp`` > 1) runs in this process group, joined ahead (``JoinGroup``); its
    #: rank in the group is the shard's. Rank 0 (the leader) takes the requests and drives the other ranks.
    group_id: str = ""
    #: Most wall seconds, s, a step of this shared instance should take while other instances run beside it on the
    #: worker (co-serving's TPOT target: a long prompt is prefilled in chunks that fit it); 0: no limit.
    turn_s: float = 0.0


class Deactivate(_Msg):
    """Stop a running instance (its requests are aborted); its weights stay prewarmed. Answered by ``Deactivated``."""

    id: int
    name: str


class Generate(_Msg):
    """Generate from token ids on a running instance; answered by a stream of ``Tokens``, the last finished."""

    id: int
    model: str
    prompt_ids: list[int]
    sampling: SamplingParams = msgspec.field(default_factory=SamplingParams)
    #: Tokens the request generated already, elsewhere (a resumption: its instance stopped or was lost). They
    #: count as its output (max_tokens, penalties, stop ids); the engine computes their KV with the prompt's
    #: and streams only what follows them.
    output_ids: list[int] = []


class Abort(_Msg):
    """Abort the ``Generate`` this peer sent with id ``request_id``; it ends with ``finish_reason="abort"``.

    Answered by ``Ok`` (also when the request already finished: aborting is idempotent).
    """

    id: int
    request_id: int


class SetKvTarget(_Msg):
    """Set a running instance's target of free KV blocks: surplus pages go back to the pool, a deficit is
    mapped back from it (PAPER.md §6). Answered by ``KvTargetSet``."""

    id: int
    model: str
    free_blocks: int


class Dedicate(_Msg):
    """A shared instance, now alone on its worker (its co-residents left), becomes the worker's one instance: its
    KV cap rises to all the slot holds and other instances may no longer join. Answered by ``KvTargetSet``."""

    id: int
    model: str


class GetStats(_Msg):
    """Ask for ``Stats``; ``pages=True`` adds each model's physical weight page ids (for zero-copy checks)."""

    id: int
    pages: bool = False


class Heartbeat(_Msg):
    """Liveness, sent both ways every ``heartbeat_interval_s``; never answered, any message counts as alive."""

    id: int = 0
    #: Sender's wall-clock time (time.time()).
    time_s: float = 0.0
    #: Requests the sender has in flight with the receiver (worker -> client: all its in-flight generations).
    in_flight: int = 0
    #: Worker -> client: a random id made as the worker starts ("": not said; another is a restart), and the id of
    #: the first message it had from the client (a client's heartbeat carries its next request id as its id).
    start_id: str = ""
    first_id: int = 0


class Rejoin(_Msg):
    """Controller -> a connected worker it does not know: it declared the worker lost (silent past its
    ``worker_timeout_s``: the worker or its host stalled for a moment) and started its requests over elsewhere, yet
    hears it again. The worker aborts what it ran for the controller, unanswered, and says ``Hello`` at once, to be
    admitted again; never answered otherwise. Always these same bytes (no field set), so the worker's link thread
    knows it without decoding every message."""

    id: int = 0


class Refused(_Msg):
    """Controller -> a worker whose Hello it refuses (another protocol version, a pool that holds none of the
    models): why, and what to do, in words. Its link thread logs it and says Hello on (``worker/server.py``). Sent
    only to workers of ``REFUSED_SINCE_VERSION`` or later; keep its shape in every version, since the workers it is
    sent to are those of other versions."""

    reason: str
    id: int = 0


class Shutdown(_Msg):
    """Abort everything, free the pool, answer ``Ok`` and exit."""

    id: int


class HostGroupStore(_Msg):
    """Host the rendezvous store of the process groups this worker leads (one per worker, started on the first
    call, loopback only: a tensor-parallel group never spans two machines). Answered by ``GroupStoreHosted``."""

    id: int


class JoinGroup(_Msg):
    """Join process group ``group_id`` as ``rank`` of ``world_size``, meeting at the store rank 0's worker hosts
    on this machine (``HostGroupStore``). The rendezvous runs in the background; answered by ``GroupJoined`` once
    every rank is in (the communicator is then built, ahead of any instance that will use it)."""

    id: int
    group_id: str
    rank: int
    world_size: int
    store_port: int
    #: Seconds a collective of the group, and the rendezvous itself, waits for the other ranks.
    timeout_s: float = 30.0


class LeaveGroup(_Msg):
    """Drop process group ``group_id`` (a member was lost: the group cannot run collectives again). Answered by
    ``Ok``; an instance still bound to it is deactivated first."""

    id: int
    group_id: str


# ---------------------------------------------------------------- replies and events (worker -> client)


class Ok(_Msg):
    id: int


class Error(_Msg):
    """A request failed; ``type``/``message``/``fields`` are ``errors.to_wire`` of a typed error."""

    id: int
    type: str
    message: str
    fields: dict[str, Any] = {}

    @classmethod
    def of(cls, id: int, exc: BaseException) -> "Error":
        if not isinstance(exc, errors.WarmServeError):
            exc = errors.WarmServeError(f"{type(exc).__name__}: {exc}")
        w = exc.to_wire()
        return cls(id=id, type=w["type"], message=w["message"], fields=_plain(w["fields"]))

    def exception(self) -> errors.WarmServeError:
        return errors.from_wire({"type": self.type, "message": self.message, "fields": self.fields})


class GroupStoreHosted(_Msg):
    id: int
    #: Loopback port of the store.
    port: int


class GroupJoined(_Msg):
    id: int
    group_id: str
    #: Seconds from the JoinGroup's arrival to the group being ready on this rank: the rendezvous and the
    #: communicators' set-up, and any wait for the joins that came before it (they run one at a time).
    setup_s: float
    #: The backend of the group's collectives: "gloo" (CPU tensors) or "nccl" (CUDA devices).
    backend: str = ""


class PrewarmProgress(_Msg):
    id: int
    name: str
    loaded_bytes: int
    total_bytes: int


class Prewarmed(_Msg):
    id: int
    name: str
    weight_bytes: int
    #: Pages of the pool the weights occupy.
    pages: int
    max_context: int
    load_s: float
    #: Seconds spent capturing the decode CUDA graphs after the load (0: none, e.g. on CPU).
    graphs_capture_s: float = 0.0


class Evicted(_Msg):
    id: int
    name: str
    #: Bytes the pool got back at once.
    freed_bytes: int


class Activated(_Msg):
    id: int
    name: str
    kv_blocks: int
    activate_s: float
    #: Bytes loaded into the model's own slot during activation: 0 is the proof of a zero-copy switch.
    copied_bytes: int
    #: Seconds of activate_s spent capturing decode CUDA graphs: 0 where the prewarm's graphs served as they were
    #: (or where none run: CPU, tensor-parallel shards).
    graphs_capture_s: float = 0.0


class Deactivated(_Msg):
    id: int
    name: str
    #: Requests that were still running and got aborted.
    aborted: int


class Tokens(_Msg):
    """New tokens of one ``Generate``; the last event has ``finished=True`` and a ``finish_reason``."""

    id: int
    token_ids: list[int]
    finished: bool = False
    #: "stop" (EOS or a stop token), "length" (max_tokens or context), "abort".
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    #: One entry per token of ``token_ids`` when the request asked for ``SamplingParams.logprobs``, else empty.
    logprobs: list[TokenLogprobs] = []
    #: With the first token of a request that asked for ``SamplingParams.prompt_logprobs``: one entry per prompt
    #: token after the first.
    prompt_logprobs: list[TokenLogprobs] = []
    #: Index of this message among its request's Tokens (0 first), numbered as the worker sends them
    #: (``TokensNumbering``): a reader that sees one skipped knows its connection lost messages in flight.
    seq: int = 0


class KvStats(msgspec.Struct, omit_defaults=True):
    """One instance's KV cache, in blocks of ``block_tokens`` tokens over all layers; the field names are the
    policy's (``warmserve.policy.state.InstanceState``), so the controller copies them across as they are."""

    #: Blocks the instance could hold: the span of its KV region (``total_blocks`` of PAPER.md §6).
    kv_blocks_total: int = 0
    #: Blocks holding tokens now.
    kv_blocks_used: int = 0
    #: Blocks backed by physical pages now (used + free); the rest of the region is unmapped.
    kv_blocks_mapped: int = 0
    #: Mapped blocks holding no token (kv_blocks_mapped - kv_blocks_used).
    kv_blocks_free: int = 0
    #: Free blocks the instance keeps mapped (the last SetKvTarget, or the engine's default).
    kv_free_target: int = 0
    #: Tokens per block.
    block_tokens: int = 0
    #: Running sequences preempted (their blocks freed, recomputed later) since the instance started.
    num_preemptions: int = 0
    #: While the engine is stalled for room (its next step can allocate nothing): the blocks that step wants
    #: (``Scheduler.blocks_wanted``); 0 when it is not stalled. The policy keeps at least these free, evicting
    #: prewarmed weights beside it for their pages (``Policy._kv_targets``).
    kv_blocks_wanted: int = 0


class KvTargetSet(_Msg):
    id: int
    model: str
    kv: KvStats


class ModelState(msgspec.Struct, omit_defaults=True):
    name: str
    path: str
    #: "loading", "prewarmed" or "running".
    state: str
    loaded_bytes: int = 0
    total_bytes: int = 0
    weight_bytes: int = 0
    pages: int = 0
    max_context: int = 0
    #: Physical page ids of the weights, only with ``GetStats(pages=True)``.
    physical_pages: list[int] = []
    #: Tensor-parallel shard held: rank of tp (tp 1: the whole model).
    tp: int = 1
    rank: int = 0


class WorkerInstance(msgspec.Struct, omit_defaults=True):
    """A running instance on a worker, as its Stats report it (the policy's view of an instance is
    ``warmserve.policy.state.InstanceState``)."""

    name: str
    #: Generations in flight on this instance.
    in_flight: int
    kv: KvStats = msgspec.field(default_factory=KvStats)
    shared: bool = False
    #: Pool pages the instance's mapped KV blocks hold.
    kv_pages: int = 0
    #: Tensor-parallel instance: the process group it runs in, and this worker's rank there.
    group_id: str = ""
    rank: int = 0
    #: Of ``in_flight``, the sequences in the engine's running batch (the rest wait in the engine's own queue,
    #: behind max_num_seqs or for KV room). -1: not reported (a worker from before this field).
    running: int = -1
    #: The engine's recent means over its decode steps (those that ran only decodes): wall time of one, seconds,
    #: and its running sequences; and how many it has run (a count that moved: a fresh measure). Co-served engines
    #: on a worker step in turn, so a co-served model's TPOT is about the sum of its host's engines' steps (the
    #: policy sums them: ``Policy.observe_decode_step``). 0: none yet, or a worker from before these fields.
    decode_step_s: float = 0.0
    decode_batch: float = 0.0
    decode_steps: int = 0


class PoolStats(msgspec.Struct, omit_defaults=True):
    """A worker's page pool (``warmserve.memory.PagePool.stats()`` and its pages by slot tag)."""

    #: "host" or "cuda".
    backend: str = ""
    page_bytes: int = 0
    total_pages: int = 0
    free_pages: int = 0
    total_bytes: int = 0
    free_bytes: int = 0
    #: Bytes written into pages by finished loads since the pool started (0 during an activation: zero copy).
    bytes_loaded: int = 0
    #: Pages by slot tag ("prewarm:NAME", "instance:NAME", ...), and "free".
    pages_by_tag: dict[str, int] = {}
    #: The pool's other counters (map/unmap/move operations, backend calls, huge_pages, ...), as it reports them.
    counters: dict[str, Any] = {}

    @classmethod
    def of(cls, stats: dict, pages_by_tag: dict[str, int]) -> "PoolStats":
        d = dict(stats)
        known = {f: d.pop(f) for f in ("backend", "page_bytes", "total_pages", "free_pages", "total_bytes",
                                       "free_bytes", "bytes_loaded") if f in d}
        return cls(**known, pages_by_tag=dict(pages_by_tag), counters=d)


class Stats(_Msg):
    """Answer to ``GetStats``; a worker connected to a controller also pushes one with ``id=0`` every heartbeat."""

    id: int
    worker_id: str
    device: str
    pid: int
    uptime_s: float
    pool: PoolStats
    models: list[ModelState]
    instances: list[WorkerInstance]
    in_flight: int
    #: Process groups this worker has joined (``JoinGroup``), ready for tensor-parallel instances.
    groups: list[str] = []
    #: Its host checkpoint cache's counters (``HostCheckpointCache.stats()``: hits, fills, bytes_from_cache, ...);
    #: empty when it runs none (``--host-cache-gib`` 0).
    host_cache: dict[str, int] = {}
    #: It was sent SIGTERM and drains (``worker/server.py``, ``WorkerServer.drain``): the controller sends it no new
    #: work and lets the requests on it finish. False (absent): serving, or a worker from before drains; no version
    #: bump, as for Hello's late fields.
    draining: bool = False
    #: Seconds left of its drain's time when this was sent (0: not draining, time up, or a worker from before it):
    #: a draining worker that leaves earlier with requests in flight crashed or hung, not drained.
    drain_left_s: float = 0.0
    #: It was sent SIGTERM and stops without a drain (a tensor-parallel rank, --drain-timeout-s 0): what it aborts
    #: on its way out starts over elsewhere, as after a drain's time is up (found in review: a rolling restart of a
    #: tp = 2 instance's ranks failed every stream, each counted two worker losses).
    stopping: bool = False
    #: Its process's resident memory when sent, bytes: rss, and its parts anon, file and shmem (the pool's touched
    #: pages), from /proc/self/status; empty elsewhere, or from a worker before it. What it holds beyond its pool.
    memory: dict[str, int] = {}


class Hello(_Msg):
    """First message of a worker that connects to a controller (``--controller``); also its readiness line."""

    worker_id: str
    device: str
    pid: int
    endpoint: str = ""
    capacity_bytes: int = 0
    page_bytes: int = 0
    id: int = 0
    #: The machine it runs on (its host name, or --host-name): the controller's server for it, since tensor-parallel
    #: groups never span two. "" from a worker before this field: the controller reads the server from its id.
    host: str = ""
    #: The ``PROTOCOL_VERSION`` the worker speaks; 0 (absent): a worker from before versions.
    protocol_version: int = 0
    #: Its --heartbeat-interval-s: the controller waits a multiple of it too before it declares it lost (found in
    #: review: a remote worker at its default 1 s under a 0.25/0.5 s controller was lost while healthy). 0 (absent):
    #: not said, judged by worker_timeout_s alone. No version bump: a controller that drops it judges as before.
    heartbeat_interval_s: float = 0.0
    #: Its ``Heartbeat.start_id`` (random, made as it starts): two live processes under one --worker-id are told
    #: apart by it (``controller/worker_claims.py``). "" (absent): not said; no version bump, as above.
    start_id: str = ""


Request = Union[Prewarm, Evict, Activate, Deactivate, Generate, Abort, SetKvTarget, Dedicate, GetStats, Heartbeat,
                Rejoin, Shutdown, HostGroupStore, JoinGroup, LeaveGroup, Refused]
Reply = Union[
    Ok, Error, PrewarmProgress, Prewarmed, Evicted, Activated, Deactivated, Tokens, KvTargetSet, Stats, Heartbeat,
    Hello, GroupStoreHosted, GroupJoined,
]
#: Messages that end a request (everything but progress events, unfinished Tokens and Heartbeat).
FINAL = (Ok, Error, Prewarmed, Evicted, Activated, Deactivated, KvTargetSet, Stats, GroupStoreHosted, GroupJoined)

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_reply_decoder = msgspec.msgpack.Decoder(Reply)


#: How every encoded ``Refused`` begins (msgspec writes the tag first): the worker's link reads only those whole.
_REFUSED_TAG = b"\xa3msg\xa7Refused"
_refused_decoder = msgspec.msgpack.Decoder(Refused)


def refused_reason(data: bytes) -> str | None:
    """The reason of a ``Refused`` message; None for any other message (read without decoding it)."""
    if _REFUSED_TAG not in data[:1 + len(_REFUSED_TAG)]:
        return None
    try:
        return _refused_decoder.decode(data).reason
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # the link thread reads it: never raise
        return None


def encode(msg: _Msg) -> bytes:
    return _encoder.encode(msg)


def decode_request(data: bytes) -> Request:
    """Decode a request; raises ``errors.ProtocolError`` (with the request id when it can be read) if malformed."""
    try:
        return _request_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
        raise _protocol_error("request", data, e) from None


def decode_reply(data: bytes) -> Reply:
    try:
        return _reply_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
        raise _protocol_error("reply", data, e) from None


def is_final(msg: Reply) -> bool:
    return isinstance(msg, FINAL) or (isinstance(msg, Tokens) and msg.finished)


class _IdOnly(msgspec.Struct):
    id: int = -1


# Reads the id alone, skipping the other fields unbuilt: found in review, decoding the whole message built every
# value of a malformed one (a 36 MB prompt list: 0.5 s and some 300 MB). It still walks every value: the worker's
# link thread reads ids from a message's first bytes instead (protocol_peek.py).
_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


def request_id_of(data: bytes) -> int:
    """Best-effort id of a message that did not validate, so its sender can match the error; -1 if unreadable."""
    try:
        return _id_decoder.decode(data).id
    except Exception:  # garbage bytes, an id that is no int, cut short, nesting too deep
        # then the id its first bytes give, if any: one cut short or nested too deep still names its request up
        # front (found in review: answered under -1, its sender waited for its timeout)
        return leading_request_id(data)


def _protocol_error(kind: str, data: bytes, e: Exception) -> errors.ProtocolError:
    # msgspec raises RecursionError past its depth limit (1,000-10,000 nested arrays or maps by Python version):
    # found in review, it went through decode_request and ended the worker's engine loop.
    why = f"nested too deep ({e})" if isinstance(e, RecursionError) else str(e)
    return errors.ProtocolError(
        f"malformed {kind} ({len(data)} bytes): {why}; send a msgspec-encoded warmserve.protocol message",
        size_bytes=len(data), request_id=request_id_of(data))


def _plain(d: dict) -> dict:
    """Error fields reduced to what MessagePack carries (numbers, strings, lists, dicts)."""
    try:
        return msgspec.to_builtins(d, str_keys=True, enc_hook=str)
    except Exception:  # a field msgspec cannot walk: keep its text
        return {str(k): str(v) for k, v in d.items()}
