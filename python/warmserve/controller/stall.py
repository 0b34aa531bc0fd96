"""The bound on an HTTP answer's writes: a client that stopped reading has its connection closed (``StallWatch``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from aiohttp import web

log = logging.getLogger("warmserve.controller")


class StallWatch:
    """Closes an answer's connection once one of its writes (a stream's event, or a whole body: the API's
    ``_write_whole``) has waited ``timeout_s`` (the API's STREAM_WRITE_TIMEOUT_S) with the client taking no bytes of
    it; looked at every ``timeout_s``, so closed within twice that. The request then ends as one whose client hung
    up (a stream's generations aborted on their workers, its max_concurrent_requests slots freed). Found in review:
    aiohttp's writes have no timeout, so a client that never read kept its slots, its generations long ended, for
    as long as it kept its socket open, and every other request got 429. One timer per answer: an asyncio timeout
    around each write costs more than the write."""

    def __init__(self, request: web.Request, rid: str, timeout_s: float):
        self._request, self._rid, self._timeout_s = request, rid, timeout_s
        self._loop = asyncio.get_running_loop()
        # when the write in progress began, or its client last took bytes of it (loop time); None between writes
        self._since: float | None = None
        self._held = 0  # bytes the transport held then (after the write's own): fewer later, the client read
        self._stalled = False
        self._timer = self._loop.call_later(self._timeout_s, self._check)

    async def write(self, resp: web.StreamResponse, data: bytes) -> None:
        await self.wait(resp.write(data), len(data))

    async def wait(self, write: Awaitable, size: int) -> None:
        """Awaits ``write``, which hands the transport about ``size`` bytes."""
        self._held = self._buffered() + size
        self._since = self._loop.time()
        try:
            await write
        finally:
            self._since = None
        if self._stalled:  # a write the closed connection woke returns as if it were done
            raise ConnectionResetError("the client stopped reading its answer")

    def _buffered(self) -> int:
        """Bytes the transport holds, not yet taken by the client (its socket's buffers full)."""
        transport = self._request.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _check(self) -> None:
        now = self._loop.time()
        if self._since is not None and now - self._since >= self._timeout_s:
            held = self._buffered()
            if held >= self._held:
                self._stall()
                return
            # The client took bytes: a slow reader of a large write (a whole answer's body), not a stalled one.
            # A never-reading client's first look may count what its socket's buffers took: closed at the next.
            self._since, self._held = now, held
        since = now if self._since is None else self._since
        self._timer = self._loop.call_later(since + self._timeout_s - now, self._check)

    def _stall(self) -> None:
        self._stalled = True
        log.warning("request %s: its client took no bytes of its answer for %g s (it stopped reading): the "
                    "connection is closed", self._rid, self._timeout_s)
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        self._timer.cancel()
