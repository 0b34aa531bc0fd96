"""``InProcessWorker``: the worker's logic in the calling process, with the interface of ``WorkerClient``.

No sockets and no second process: requests go straight to a ``WorkerCore`` and the engine steps on the caller's
thread while it waits for a reply. Every message still goes through MessagePack both ways, so what passes here
also crosses a socket.
"""

from __future__ import annotations

import time
import weakref

from .. import protocol as P
from ..errors import ClosedError, ProtocolError
from .client import SyncClientBase
from .core import WorkerCore
from .numbering import TokensNumbering

_PEER = b"inprocess"


class InProcessWorker(SyncClientBase):
    """A worker in this process. Pass ``pool`` to share one (the caller keeps owning it), or let it make its own
    from ``device``, ``memory_gib`` and ``page_mib`` (None: the device's default page, as `warmserve worker` takes
    it; closed with the worker; ``prefault=False`` skips touching every host page up front, for short-lived pools).
    ``engine`` and ``host_cache``: as a worker's ``--max-num-seqs`` (and the other engine flags) and
    ``--host-cache-gib`` give them (``WorkerCore``)."""

    def __init__(self, device: str = "cpu", memory_gib: float = 1.0, *, pool=None, threads: int | None = None,
                 worker_id: str = "inprocess", prefault: bool = True, default_timeout_s: float = 60.0,
                 page_mib: int | None = None, engine: P.EngineConfig | None = None, host_cache=None):
        super().__init__()
        self.default_timeout_s = default_timeout_s
        if threads:
            import torch

            torch.set_num_threads(threads)
        owned = pool is None
        if owned:
            from .main import build_pool

            pool = build_pool(device, memory_gib, prefault=prefault, page_mib=page_mib)
        self.pool = pool
        # Numbered as a server numbers them, so that streams here are read as a socket's are.
        self._numbering = TokensNumbering()
        # A weak reference: the finalizer holds the core, and the core must not keep this object alive.
        self.core = WorkerCore(pool, device=device, worker_id=worker_id, emit=_weak_emit(self), engine=engine,
                               host_cache=host_cache)
        self._finalizer = weakref.finalize(self, _close, self.core, pool if owned else None)

    def _emit(self, peer, msg) -> None:
        self._dispatch(P.decode_reply(P.encode(self._numbering.stamp(peer, msg))))

    def _send(self, msg) -> None:
        if self.core.stopping:  # as a socket worker's loop, which has ended (found in review: served on)
            raise ClosedError(f"the in-process worker {self.core.worker_id} was shut down", worker=self.core.worker_id)
        data = P.encode(msg)
        try:
            request = P.decode_request(data)
        except ProtocolError as e:
            # Answered, as a socket worker answers it (server.py's _malformed), not raised from the call (found in
            # review: generate() raised where a socket client's stream does, and the request's inbox entry stayed).
            self._emit(_PEER, P.Error.of(P.request_id_of(data), e))
            return
        self.core.handle(_PEER, request)

    def _pump(self, timeout_s: float) -> None:
        if not self.core.tick():
            # Only loads run in the background (the loader's threads): wait for them a little.
            time.sleep(min(timeout_s, 0.002))

    def close(self) -> None:
        self._finalizer()


def _weak_emit(worker: InProcessWorker):
    ref = weakref.ref(worker)

    def emit(peer, msg) -> None:
        w = ref()
        if w is not None:  # after the worker is collected, replies (the aborts of its close) have no reader
            w._emit(peer, msg)

    return emit


def _close(core: WorkerCore, pool) -> None:
    core.close()
    if pool is not None and hasattr(pool, "close"):
        pool.close()
