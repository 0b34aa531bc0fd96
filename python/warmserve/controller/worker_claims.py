"""Which process holds each worker id, and what happens when two live processes claim one (``IdClaims``).

The controller's ROUTER gives a routing id to its newest connection (ROUTER_HANDOVER), so that a worker started again
under its --worker-id takes its place at once; the connection it took the id from stays open, and what comes over
it is dropped unread (libzmq 4.3). Two live processes started with one --worker-id (a command copied to a second
host) used to end so: the second read as a restart of the first, and the first, cut off without a word, waited for
ever. A worker that hears nothing from its controller for its --peer-timeout-s now connects again
(``worker/link.py``), taking the id back and saying Hello; a process is told apart by its ``Hello.start_id``
(random, made as it starts). A Hello of the process that the id's live holder replaced is a second live process:
both are refused (``Refused``, which each logs, saying Hello on) with one reason naming both and the fix, until one
of them has not been heard for ``CLASH_CLEAR_S`` (stopped, or started again under its own id); the other is
admitted at its next Hello. Workers from before ``Hello.start_id`` say none and are judged as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from warmserve import protocol as P

log = logging.getLogger("warmserve.controller")

#: Seconds without a Hello from one of two processes clashing over an id after which the clash is over and the other
#: is admitted. The one cut off is heard only when it connects again, every --peer-timeout-s (30 s by default) of
#: silence: two and a half of those.
CLASH_CLEAR_S = 75.0


@dataclass
class _Process:
    """One process heard under a worker id: its start id, and what its last Hello said of it."""

    start_id: str
    pid: int = 0
    host: str = ""
    #: When it was last heard (time.monotonic()), seconds.
    heard_s: float = 0.0

    def named(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return f"process {self.pid}{where}" if self.pid else f"a process (start id {self.start_id})"


class IdClaims:
    """The WorkerHub's record of the process behind each routing id, and of the ids two processes clash over."""

    def __init__(self):
        #: Routing id -> the process admitted under it (by its last Hello), and the one it replaced, if any.
        self._holder: dict[bytes, _Process] = {}
        self._replaced: dict[bytes, _Process] = {}
        #: Routing id -> (its processes by start id, the reason they are refused), while two clash over it.
        self._clashes: dict[bytes, tuple[dict[str, _Process], str]] = {}

    def another_process(self, ident: bytes, hello: P.Hello) -> bool:
        """Whether ``hello`` comes from another process than the one admitted under ``ident``, by its start id (two
        hosts may give one pid); False when either said none."""
        holder = self._holder.get(ident)
        return bool(holder and holder.start_id and hello.start_id and hello.start_id != holder.start_id)

    def admitted(self, ident: bytes, hello: P.Hello, now_s: float) -> None:
        """``hello`` was taken under ``ident``: the process it came from holds the id now."""
        holder = self._holder.get(ident)
        if holder is not None and holder.start_id != hello.start_id:
            self._replaced[ident] = holder
        self._holder[ident] = _process_of(hello, now_s)

    def refusal(self, ident: bytes, hello: P.Hello, now_s: float, holder_alive: bool) -> str | None:
        """Why ``hello`` is refused, or None. Refused: a Hello of the process that the live holder of ``ident``
        replaced (a clash begins, logged here), and every Hello under an id clashed over until its sender is the
        only process heard for ``CLASH_CLEAR_S``."""
        entry = self._clashes.get(ident)
        if entry is None:
            holder, replaced = self._holder.get(ident), self._replaced.get(ident)
            if not (holder_alive and holder and replaced and hello.start_id and hello.start_id == replaced.start_id
                    and replaced.start_id != holder.start_id):
                return None
            why = (f"two live processes use the worker id {ident.decode(errors='replace')!r}: "
                   f"{_process_of(hello, now_s).named()} and {holder.named()}. The controller gives an id to its "
                   f"newest connection, so each cuts the other off; both are refused until one stops: stop one, or "
                   f"start it with its own --worker-id")
            log.error("%s", why)
            self._clashes[ident] = ({holder.start_id: holder}, why)
            entry = self._clashes[ident]
        procs, why = entry
        procs[hello.start_id] = _process_of(hello, now_s)
        for sid, proc in list(procs.items()):
            if now_s - proc.heard_s > CLASH_CLEAR_S:
                del procs[sid]
        if len(procs) > 1:
            return why
        del self._clashes[ident]
        log.warning("worker id %r: only %s has been heard for %.0f s; it is admitted", ident.decode(errors="replace"),
                    procs[hello.start_id].named(), CLASH_CLEAR_S)
        return None


def _process_of(hello: P.Hello, now_s: float) -> _Process:
    return _Process(start_id=hello.start_id, pid=hello.pid, host=hello.host, heard_s=now_s)
