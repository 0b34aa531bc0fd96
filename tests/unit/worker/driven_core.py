"""A real WorkerCore over a real pool, driven on the test's own thread (no server, no sockets): what the worker
core tests send it and read back."""

from __future__ import annotations

import time

from warmserve import protocol as P
from warmserve.memory import PagePool
from warmserve.worker.core import WorkerCore

PEER = "client"


class DrivenCore:
    """Messages go in through ``send``, as from peer ``PEER``; ``replies`` collects (peer, message) as emitted."""

    def __init__(self, pool_mib: int, worker_id: str = "w"):
        self.pool = PagePool(pool_mib << 20, prefault=False)
        self.replies: list = []
        self.core = WorkerCore(self.pool, device="cpu", worker_id=worker_id,
                               emit=lambda peer, m: self.replies.append((peer, m)))
        self._id = 0

    def send(self, cls, **fields) -> int:
        """Hand the core a ``cls`` message with a fresh id; returns that id."""
        self._id += 1
        self.core.handle(PEER, cls(id=self._id, **fields))
        return self._id

    def reply(self, rid: int, timeout_s: float = 60.0):
        """The final reply to request ``rid`` (progress events skipped), ticking the core meanwhile; an Error fails
        the test."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = [m for _, m in self.replies if getattr(m, "id", None) == rid
                   and not isinstance(m, P.PrewarmProgress)]
            if got:
                assert not isinstance(got[-1], P.Error), got[-1]
                return got[-1]
            if not self.core.tick():
                time.sleep(0.001)
        raise AssertionError(f"no reply to request {rid}")

    def prewarm(self, path: str, name: str) -> None:
        self.reply(self.send(P.Prewarm, path=path, name=name))

    def close(self) -> None:
        self.core.close()
        self.pool.close()
