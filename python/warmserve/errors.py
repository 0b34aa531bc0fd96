"""Typed errors shared by every part of warmserve.

Each error carries the numbers behind it and, where there is one, the fix. Errors raised for a caller's
mistake also derive from ValueError, so generic callers can catch them as such. ``to_wire``/``from_wire``
carry an error across a ZeroMQ hop with its class and fields intact.
"""

from __future__ import annotations

import importlib

GiB = 1 << 30


def fmt_bytes(n: int | float) -> str:
    """Human-readable size with a binary unit (2.0 GiB, 512.0 MiB)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


class WarmServeError(Exception):
    """Base of every error warmserve raises on purpose."""

    #: HTTP status the controller maps this error to.
    http_status = 500

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.message = message
        self.fields = fields
        for k, v in fields.items():
            setattr(self, k, v)

    def to_wire(self) -> dict:
        return {"type": type(self).__name__, "message": self.message, "fields": self.fields}


class InvalidArgumentError(WarmServeError, ValueError):
    """A caller passed a bad value: an offset out of range, an overlap, a double unmap."""

    http_status = 400


#: The largest integer a message carries: MessagePack's ints stop at 2**64-1 and msgspec decodes an ``int`` field
#: as a signed 64-bit one. Found in review: `serve --max-num-seqs 2**70` was accepted, the server said it was
#: ready, and every activation carrying it failed to encode (each request a 500).
WIRE_INT_MAX = 2**63 - 1


def wire_int_error(name: str, value, low: int = 0, **fields) -> InvalidArgumentError | None:
    """The typed error for a setting ``name`` whose ``value`` is no integer, is below ``low`` or past
    ``WIRE_INT_MAX``; None when it is an integer between."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}", **fields)
    if value <= WIRE_INT_MAX:
        return None
    return InvalidArgumentError(f"{name} must be an integer from {low} to {WIRE_INT_MAX} (2**63-1, the largest a "
                                f"message to a worker carries), got {value}", value=str(value), bound=WIRE_INT_MAX,
                                **fields)


def bind_error(who: str, bind: str, errno_: int, reason: str, *,
               option: str = "--bind tcp://HOST:PORT; port 0 picks a free one", any_host: str = "tcp://0.0.0.0:PORT",
               example: str = "an endpoint such as tcp://127.0.0.1:PORT (port 0 picks a free one)"
               ) -> InvalidArgumentError:
    """The typed error of a socket ``who`` (e.g. "the worker") cannot bind ``bind`` to, with the fix for its cause
    (``errno_``, ``reason``: the bind's errno and its text, zmq.strerror: a ZMQError's own strerror names the
    address again). ``option``, ``any_host``, ``example``: how the fix names the setting, the all-addresses form
    and a good value (the defaults: a ZeroMQ endpoint's; the HTTP server gives its --host/--port)."""
    import errno

    if errno_ == errno.EADDRINUSE:
        fix = ("another process holds that port (an earlier warmserve still running?): pick another port "
               f"({option}) or stop that process")
    elif errno_ == errno.EADDRNOTAVAIL:
        fix = f"the host is no address of this machine: bind one of its addresses, or {any_host} for all"
    else:
        fix = f"bind {example}"
    return InvalidArgumentError(f"{who} cannot bind {bind}: {reason}; {fix}", endpoint=bind, errno=errno_)


class OutOfMemoryError(WarmServeError, MemoryError):
    """Not enough free pages (or host memory) for what was asked."""

    http_status = 503

    def __init__(self, message: str, *, asked_bytes: int = 0, free_bytes: int = 0, total_bytes: int = 0, **fields):
        super().__init__(message, asked_bytes=asked_bytes, free_bytes=free_bytes, total_bytes=total_bytes, **fields)


class MappingLimitError(OutOfMemoryError):
    """The kernel's limit on mappings per process (vm.max_map_count) would be exceeded."""


class DriverError(WarmServeError):
    """The CUDA driver (or the kernel) returned an error code."""

    def __init__(self, message: str, *, code: int = 0, name: str = "", **fields):
        super().__init__(message, code=code, name=name, **fields)


class BackendUnavailableError(WarmServeError):
    """A memory backend was asked for on a machine that cannot provide it (cuda without a GPU)."""


class ClosedError(WarmServeError):
    """An object was used after close()."""


class CancelledError(WarmServeError):
    """A long operation (a load) was cancelled; what it had done was rolled back."""


class ViewsAliveError(InvalidArgumentError):
    """Pages cannot be unmapped or moved while tensor views over them are alive."""


class UnknownModelError(WarmServeError, KeyError):
    """A request named a model this cluster does not serve."""

    http_status = 404

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


#: How many of a server's model names an unknown-model error lists. Found in review: with 64 models served, each
#: 404 carried all 64 names (1.6 KB), and a typo's near match was lost among them.
KNOWN_MODELS_LISTED = 8


def cut_name(name, most_chars: int = 256) -> str:
    """``name`` as an error message shows it: its repr, cut to ``most_chars`` characters with its length said
    (found in review: a request for an 8 MiB model name was answered an 8 MiB 404)."""
    text = str(name)
    return repr(text) if len(text) <= most_chars else f"{text[:most_chars]!r}...({len(text)} chars)"


def served_models_words(name: str, served) -> str:
    """What an error about the unknown model ``name`` says of the ``served`` ones: the closest name first (a
    typo's fix), then at most KNOWN_MODELS_LISTED of them and how many more (GET /v1/models lists them all). A
    name that differs from a served one only in case or Unicode normalization (an NFD name, as macOS writes a
    folder's) is named as such; one far longer than every served name is compared with none (found in review:
    difflib took 1.5 s over an 8 MiB name, and "ORG/LLÄMÄ" got no hint where "org/llämä" did)."""
    import difflib  # only on this error's path
    import unicodedata

    names = sorted(served)
    folded = unicodedata.normalize("NFC", str(name)).casefold()
    same = [n for n in names if unicodedata.normalize("NFC", n).casefold() == folded]
    if same:
        hint = f"did you mean {same[0]!r} (the names differ only in case or Unicode normalization)? "
    else:
        near = [] if len(str(name)) > 2 * max(map(len, names), default=0) + 16 else \
            difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
    if len(names) <= KNOWN_MODELS_LISTED:
        return f"{hint}it serves {names}"
    return (f"{hint}it serves {len(names)} models: {names[:KNOWN_MODELS_LISTED]} and {len(names) - KNOWN_MODELS_LISTED}"
            " more (GET /v1/models lists them all)")


class PromptTooLongError(InvalidArgumentError):
    """The prompt (plus max_tokens) does not fit the model's context."""


class NoRoomHereError(PromptTooLongError):
    """The request fits its model but not the KV blocks the instance that refused it can ever hold: its KV share,
    or what its pool ever frees beside the weights of the other engines serving there (a co-served instance). The
    controller and the simulator send it on to an instance of the model that serves alone on its GPUs when there is
    one (``PolicyDriver.reroute``); otherwise the client gets it (HTTP 400). Fields: prompt_tokens, max_tokens,
    kv_blocks (what the instance holds at most), blocks_needed."""


class UnservableModelError(InvalidArgumentError):
    """A model that no instance could serve on the cluster's GPUs (``ClusterState.unservable``)."""


class ModelStateError(InvalidArgumentError):
    """A model is on a worker but in the wrong state for the request (loading, running, not running)."""

    http_status = 409


class ProtocolError(InvalidArgumentError):
    """A malformed or unexpected message on a socket."""


class WorkerLostError(WarmServeError):
    """A worker stopped answering (missed heartbeats or its process died)."""

    http_status = 503


class EngineError(WarmServeError):
    """Work of a worker's own failed for a reason that is not the request's (an engine bug, corrupted state): the
    requests it concerned end with this error, the worker goes on. Fields: model, cause (the original exception's
    type)."""


class TimeoutError_(WarmServeError, TimeoutError):
    """An operation did not finish within its timeout_s."""

    http_status = 504


_BY_NAME = {
    cls.__name__: cls
    for cls in (
        WarmServeError, InvalidArgumentError, OutOfMemoryError, MappingLimitError, DriverError,
        BackendUnavailableError, ClosedError, CancelledError, ViewsAliveError, UnknownModelError,
        PromptTooLongError, NoRoomHereError, ModelStateError, ProtocolError, WorkerLostError, EngineError,
        TimeoutError_,
    )
}


def exit_status(e: BaseException) -> int:
    """A command's exit status for a failure it reports as one line: 2 for one the caller must fix (a value, a
    name, a path: a ValueError or an HTTP 4xx), 1 for one met while running."""
    return 2 if isinstance(e, ValueError) or 400 <= getattr(e, "http_status", 500) < 500 else 1


def register(cls: type[WarmServeError]) -> type[WarmServeError]:
    """Make a subclass defined elsewhere travel over the wire as itself (use as a decorator)."""
    _BY_NAME[cls.__name__] = cls
    return cls


#: Registered errors defined beside the code that raises them, in modules a client of a worker may never import:
#: ``from_wire`` imports the module on first sight of the name. Found in review: a worker's TensorParallelError
#: reached a WorkerClient as a plain WarmServeError, which ``except TensorParallelError`` did not catch.
_DEFINED_IN = {
    "UnsupportedModelError": "warmserve.engine.arch",
    "CheckpointError": "warmserve.engine.safetensors_header",
    "TensorParallelError": "warmserve.engine.arch",
    "RanksDivergedError": "warmserve.worker.tp",
    "CacheBusyError": "warmserve.memory.cache_entry",
    "MissingExtraError": "warmserve.extras",
    "InsecureBindError": "warmserve.security",
    "GroupBuildError": "warmserve.controller.groups",
    "WorkerGoneForGoodError": "warmserve.controller.restarts",
    "RayClusterError": "warmserve.controller.ray_plan",
    "RayNodeGoneError": "warmserve.controller.ray_plan",
    "RayUnresponsiveError": "warmserve.controller.ray_plan",
    "NoWorkersError": "warmserve.controller.errors",
    "OverloadedError": "warmserve.controller.errors",
    "TooManyRequestsError": "warmserve.controller.errors",
    "UnauthorizedError": "warmserve.controller.errors",
    "InstanceGoneError": "warmserve.controller.errors",
}


def _class_named(name: str) -> type[WarmServeError]:
    if name not in _BY_NAME and name in _DEFINED_IN:
        try:
            importlib.import_module(_DEFINED_IN[name])  # registers it
        except ImportError:  # its module needs what this process lacks (torch): the base class, as before
            pass
    return _BY_NAME.get(name, WarmServeError)


def from_wire(d: dict) -> WarmServeError:
    """Rebuild an error sent with ``to_wire``; unknown types come back as WarmServeError."""
    cls = _class_named(d.get("type", ""))
    # __init__ skipped, for subclasses' own signatures. An OSError subclass (TimeoutError_) refuses Exception's
    # __new__, and a MemoryError one (OutOfMemoryError) its own as looked up (found in review: a TimeoutError_ sent
    # by a worker failed to decode)
    new = cls.__new__ if issubclass(cls, OSError) else Exception.__new__
    err = new(cls, d.get("message", ""))
    WarmServeError.__init__(err, d.get("message", ""), **(d.get("fields") or {}))
    return err


@register
class SlotUnusableError(ClosedError):
    """A failed host mmap left part of a slot's reserved address range in a state its page table cannot describe
    (unreserved, so another mmap may own it now; or still mapping pages a rollback gave back): the slot refuses
    every operation but close and never touches that range again. Fields: hole_bytes."""

    def __init__(self, message: str, *, hole_bytes: int = 0, **fields):
        super().__init__(message, hole_bytes=hole_bytes, **fields)


class FolderInUseError(InvalidArgumentError):
    """An output folder that another running process holds for its life (an flock on a lock file in it): a second
    run writing there would overwrite that one's files under it. Fields: flag (the option that sets the folder),
    path (the folder), lock_path, holder_pid (None: unknown)."""

    http_status = 409
