"""Every message that crosses a ZeroMQ socket in warmserve: msgspec structs, MessagePack, one tagged union.

Requests carry an ``id`` chosen by the sender; every reply and stream event about that request carries the same
``id``, so replies are asynchronous and a peer can keep many requests in flight on one socket. A request ends
with exactly one final message: its typed reply, ``Error``, or (for ``Generate``) a ``Tokens`` with
``finished=True``. ``PrewarmProgress`` and unfinished ``Tokens`` are stream events before the end.

The worker side binds a ROUTER (or connects a DEALER to a controller's ROUTER and says ``Hello`` first); a client
connects a DEALER. Never pickle: a peer can only make us build these structs.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from . import errors


class _Msg(msgspec.Struct, tag=True, tag_field="msg", omit_defaults=True):
    """Base of all messages; the tag (field "msg") is the class name."""


# ---------------------------------------------------------------- sampling


class Sampling(msgspec.Struct, omit_defaults=True):
    """Sampling parameters of one request; temperature 0 (the default) is greedy. Stop strings are the
    controller's business: it detokenizes, workers see token ids."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    #: 0 means no top-k cut.
    top_k: int = 0
    #: None draws from the worker's generator; an int makes the sample reproducible.
    seed: int | None = None
    stop_token_ids: list[int] = []
    ignore_eos: bool = False


# ---------------------------------------------------------------- requests (client -> worker)


class Prewarm(_Msg):
    """Load a checkpoint into a new slot of the worker's pool; answered by progress events, then ``Prewarmed``."""

    id: int
    #: Directory of a Hugging Face checkpoint on the worker's file system.
    path: str
    #: Name the model is known by; defaults to the directory's base name.
    name: str = ""
    dtype: str = "auto"


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


class Deactivate(_Msg):
    """Stop a running instance (its requests are aborted); its weights stay prewarmed. Answered by ``Deactivated``."""

    id: int
    name: str


class Generate(_Msg):
    """Generate from token ids on a running instance; answered by a stream of ``Tokens``, the last finished."""

    id: int
    model: str
    prompt_ids: list[int]
    sampling: Sampling = msgspec.field(default_factory=Sampling)


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


class Shutdown(_Msg):
    """Abort everything, free the pool, answer ``Ok`` and exit."""

    id: int


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
    #: Bytes the pool's loaders wrote during activation: 0 is the proof of a zero-copy switch.
    copied_bytes: int


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


class KvTargetSet(_Msg):
    id: int
    model: str
    kv: dict[str, Any]


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


class InstanceState(msgspec.Struct, omit_defaults=True):
    name: str
    #: Generations in flight on this instance.
    in_flight: int
    #: The engine's kv_stats(): total_blocks, mapped_blocks, free_blocks, used_blocks, target_free_blocks, ...
    kv: dict[str, Any] = {}
    shared: bool = False
    #: Pool pages the instance's mapped KV blocks hold.
    kv_pages: int = 0


class Stats(_Msg):
    """Answer to ``GetStats``; a worker connected to a controller also pushes one with ``id=0`` every heartbeat."""

    id: int
    worker_id: str
    device: str
    pid: int
    uptime_s: float
    #: The pool's stats(): pages by tag, free and total bytes, bytes_loaded, ...
    pool: dict[str, Any]
    models: list[ModelState]
    instances: list[InstanceState]
    in_flight: int


class Hello(_Msg):
    """First message of a worker that connects to a controller (``--controller``); also its readiness line."""

    worker_id: str
    device: str
    pid: int
    endpoint: str = ""
    capacity_bytes: int = 0
    page_bytes: int = 0
    id: int = 0


Request = Union[Prewarm, Evict, Activate, Deactivate, Generate, Abort, SetKvTarget, GetStats, Heartbeat, Shutdown]
Reply = Union[
    Ok, Error, PrewarmProgress, Prewarmed, Evicted, Activated, Deactivated, Tokens, KvTargetSet, Stats, Heartbeat, Hello
]
#: Messages that end a request (everything but progress events, unfinished Tokens and Heartbeat).
FINAL = (Ok, Error, Prewarmed, Evicted, Activated, Deactivated, KvTargetSet, Stats)

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_reply_decoder = msgspec.msgpack.Decoder(Reply)


def encode(msg: _Msg) -> bytes:
    return _encoder.encode(msg)


def decode_request(data: bytes) -> Request:
    """Decode a request; raises ``errors.ProtocolError`` (with the request id when it can be read) if malformed."""
    try:
        return _request_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _protocol_error("request", data, e) from None


def decode_reply(data: bytes) -> Reply:
    try:
        return _reply_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _protocol_error("reply", data, e) from None


def is_final(msg: Reply) -> bool:
    return isinstance(msg, FINAL) or (isinstance(msg, Tokens) and msg.finished)


def request_id_of(data: bytes) -> int:
    """Best-effort id of a message that did not validate, so its sender can match the error; -1 if unreadable."""
    try:
        raw = msgspec.msgpack.decode(data)
    except Exception:  # garbage bytes: any decode failure means "no id"
        return -1
    rid = raw.get("id") if isinstance(raw, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else -1


def _protocol_error(kind: str, data: bytes, e: Exception) -> errors.ProtocolError:
    return errors.ProtocolError(
        f"malformed {kind} ({len(data)} bytes): {e}; send a msgspec-encoded warmserve.protocol message",
        size_bytes=len(data),
        request_id=request_id_of(data),
    )


def _plain(d: dict) -> dict:
    """Error fields reduced to what MessagePack carries (numbers, strings, lists, dicts)."""
    try:
        return msgspec.to_builtins(d, str_keys=True, enc_hook=str)
    except Exception:  # a field msgspec cannot walk: keep its text
        return {str(k): str(v) for k, v in d.items()}
