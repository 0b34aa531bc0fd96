"""``AsyncWorkerClient``: the asyncio client of a worker, with the methods of ``WorkerClient`` (client.py),
awaited."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import AsyncIterator, Callable

import zmq
import zmq.asyncio

from .. import errors
from .. import protocol as P
from ..endpoints import check_endpoint
from .client import (_close_zmq, _dealer, _raise_if_error, ended_stream_words, stream_gap_error,
                     worker_restarted)


class AsyncTokenStream:
    """``async for ev in stream``: the ``Tokens`` events of one generation. As ``TokenStream``: ``await close()``
    (or ``async with``) ends it early, and one dropped unfinished is aborted by its client's next call."""

    def __init__(self, client: "AsyncWorkerClient", id: int, queue: asyncio.Queue, timeout_s: float):
        self.client, self.id, self.queue, self.timeout_s = client, id, queue, timeout_s
        self.done = False
        #: ``Tokens.seq`` of the next event.
        self._seq = 0
        self._abandoned = weakref.finalize(self, client._abandoned.append, id)

    def __aiter__(self) -> AsyncIterator[P.Tokens]:
        return self._iter()

    async def _iter(self):
        while not self.done:
            try:
                msg = await self.client._get(self.queue, self.id, self.timeout_s)
            except errors.ClosedError:
                self._end()  # the client was closed: nothing to abort through it (found in review: it reopened)
                raise
            except errors.WorkerLostError:
                # The worker may only have stalled (paused, its link cut for a moment): told nothing, it runs the
                # generation on to max_tokens holding KV blocks (found in review). Aborted by the next call, as a
                # stream dropped unfinished is.
                self._end()
                self.client._abandoned.append(self.id)
                raise
            if isinstance(msg, P.Tokens) and msg.seq != self._seq:
                # Messages of the stream were lost with a connection re-made meanwhile (worker/server.py); the
                # worker runs the generation on: aborted by the next call, as above.
                self._end()
                self.client._abandoned.append(self.id)
                raise stream_gap_error(self.client.endpoint, self.id, self._seq, msg.seq)
            self._seq += 1
            if isinstance(msg, P.Error) or (isinstance(msg, P.Tokens) and msg.finished):
                self._end()  # only the end of the request forgets it: an abandoned iterator drops nothing
            if isinstance(msg, P.Tokens):
                yield msg
            else:
                _raise_if_error(msg)

    def _end(self) -> None:
        self.done = True
        self._abandoned.detach()
        self.client._queues.pop(self.id, None)

    async def abort(self) -> None:
        if not self.done:
            await self.client.abort(self.id)

    async def close(self) -> None:
        """Stop the generation if it still runs; nothing more comes from this stream."""
        if not self.done:
            self._end()
            await self.client.abort(self.id)

    async def __aenter__(self) -> "AsyncTokenStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def collect(self) -> tuple[list[int], P.Tokens]:
        """The token ids not read yet, and the final event; ClosedError if the stream has ended already."""
        if self.done:
            raise errors.ClosedError(ended_stream_words(self.id))
        ids: list[int] = []
        last = None
        async for ev in self:
            ids.extend(ev.token_ids)
            last = ev
        return ids, last


class AsyncWorkerClient:
    """asyncio client of one worker: the methods of ``WorkerClient``, awaited (``await generate(...)`` sends the
    request and returns an ``AsyncTokenStream``).

    A receiver task reads the socket and routes replies by id; a heartbeat task keeps the worker aware of us
    and fails every waiting request with ``WorkerLostError`` when the worker has been silent too long.
    """

    def __init__(self, endpoint: str, *, heartbeat_interval_s: float = 1.0, worker_timeout_s: float = 10.0,
                 hwm: int = 100_000, default_timeout_s: float = 60.0, curve_server_key: str | None = None,
                 curve_secret_key: str | None = None):
        """The CURVE certificate files as for ``WorkerClient``."""
        # here, not at the first call, which would fail further from the cause
        check_endpoint(endpoint, "worker endpoint", listen=False)
        self.endpoint = endpoint
        self._curve_keys = (curve_server_key, curve_secret_key)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.worker_timeout_s = worker_timeout_s
        self.default_timeout_s = default_timeout_s
        self.hwm = hwm
        self._next_id = 1
        self._queues: dict[int, asyncio.Queue] = {}
        #: Generations whose streams were dropped unfinished (AsyncTokenStream's finalizer): aborted by the next call.
        self._abandoned: list[int] = []
        self._sock = None
        #: The event loop the socket's tasks run on (``_ensure``).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._lost: errors.WarmServeError | None = None
        #: The worker's ``Heartbeat.start_id`` as first heard ("": none yet): another one is a restart.
        self._start_id = ""

    async def _ensure(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            if self._loop is loop and not any(t.done() for t in self._tasks):
                return
            self._reopen()
        self._ctx, self._sock = _dealer(zmq.asyncio.Context(), self.endpoint, self.hwm, *self._curve_keys)
        self._last_heard = time.monotonic()
        self._lost = None  # a client used again after close() starts afresh, as before
        self._start_id = ""  # nothing sent on this connection went to the worker heard before it
        self._loop = loop
        # The tasks hold the client weakly (found in review: bound methods kept a client dropped without close()
        # alive for the loop's life, heartbeating its worker for ever); its finalizer ends them with the socket.
        ref = weakref.ref(self)
        self._tasks = [loop.create_task(_receive_loop(ref, self._sock)),
                       loop.create_task(_heartbeat_loop(ref, self.heartbeat_interval_s))]
        self._finalizer = weakref.finalize(self, _end, list(self._tasks), self._sock, self._ctx)

    def _reopen(self) -> None:
        """Close the connection of another event loop (a second ``asyncio.run()``: the first one's tasks ended with
        it, found in review: every call on the second waited out its whole timeout), or whose tasks ended, so that
        ``_ensure`` makes a new one on this loop. What was sent on the old one cannot be answered any more (the
        worker routes replies by connection): its calls and streams fail at once, and its dropped streams' aborts,
        which only that connection could send, are dropped (the worker aborts them once it gives that peer up)."""
        for id, q in self._queues.items():
            q.put_nowait(errors.ClosedError(
                f"request {id} went to the worker at {self.endpoint} on the connection of an event loop that has "
                f"ended (or whose client tasks did); this client reconnected on the loop now running: send the "
                f"request again", endpoint=self.endpoint, request_id=id))
        self._queues.clear()
        self._abandoned.clear()
        self._finalizer()  # the old tasks (ended with their loop) cancelled, the old socket and context closed
        self._sock, self._tasks = None, []

    def _on_message(self, data: bytes) -> None:
        self._last_heard = time.monotonic()
        self._lost = None  # heard again (a worker that was paused or cut off): new calls go through, as the
        # sync client's do; calls that failed with the loss stay failed (found in review: lost for good)
        try:
            msg = P.decode_reply(data)
        except errors.ProtocolError:
            return  # a worker of another version: its replies cannot be matched anyway
        if isinstance(msg, P.Heartbeat):
            if msg.start_id and msg.start_id != self._start_id:
                self._restarted(msg.start_id, msg.first_id)
            return
        q = self._queues.get(msg.id)
        if q is not None:
            q.put_nowait(msg)

    def _restarted(self, start_id: str, first_id: int) -> None:
        """As WorkerClient._restarted: a worker restarted at the endpoint (found in review: its heartbeats kept what
        was in flight waiting out its whole timeout) fails every waiting call and stream; new calls go through."""
        before, self._start_id = self._start_id, start_id
        if before:
            for id, q in self._queues.items():
                if id < first_id:  # from first_id on: to the new worker (WorkerClient._restarted)
                    q.put_nowait(worker_restarted(self.endpoint, id, before, start_id))

    async def _beat(self) -> None:
        silent_s = time.monotonic() - self._last_heard
        if silent_s > self.worker_timeout_s:
            self._fail_waiting(errors.WorkerLostError(
                f"worker at {self.endpoint} silent for {silent_s:.1f} s (limit {self.worker_timeout_s} s)",
                endpoint=self.endpoint, silent_s=silent_s,
            ))
        try:
            await self._send(P.Heartbeat(id=self._next_id, time_s=time.time()))  # id: Heartbeat.first_id's
        except errors.WorkerLostError:
            # Its queue is full (a worker not taking messages): the silence check above goes on beat by beat
            # (found in review: this ended the task, so a dead worker's calls waited out their whole timeout)
            pass

    def _fail_waiting(self, error: errors.WarmServeError) -> None:
        """Every call and stream waiting on this client gets ``error``; new calls too (``_open``)."""
        self._lost = error
        for q in self._queues.values():
            q.put_nowait(error)

    async def _send(self, msg) -> None:
        try:
            await self._sock.send(P.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            raise errors.WorkerLostError(
                f"worker at {self.endpoint} is not taking messages ({self.hwm} queued)", endpoint=self.endpoint
            ) from None

    async def _get(self, q: asyncio.Queue, id: int, timeout_s: float):
        if self._sock is not None and self._loop is not asyncio.get_running_loop():
            self._reopen()  # a stream of an earlier loop read on this one: its connection is gone (fails ``q``)
        try:
            msg = await asyncio.wait_for(q.get(), timeout_s)
        except asyncio.TimeoutError:
            raise errors.TimeoutError_(
                f"no answer to request {id} within {timeout_s:.1f} s: raise timeout_s or check the worker",
                timeout_s=timeout_s, request_id=id,
            ) from None
        if isinstance(msg, errors.WarmServeError):
            raise msg
        return msg

    def _open(self, id: int) -> asyncio.Queue:
        if self._lost is not None:
            raise self._lost
        q: asyncio.Queue = asyncio.Queue()
        self._queues[id] = q
        return q

    def _new_id(self) -> int:
        id = self._next_id
        self._next_id += 1
        return id

    async def _abort_abandoned(self) -> None:
        """As SyncClientBase._abort_abandoned: streams dropped unfinished, or failed by the worker's silence, are
        aborted, their answers dropped (an Abort of a request that ended meanwhile is answered Ok)."""
        while self._abandoned:
            rid = self._abandoned.pop()
            self._queues.pop(rid, None)
            try:
                await self._send(P.Abort(id=self._new_id(), request_id=rid))
            except errors.WorkerLostError:
                self._abandoned.append(rid)  # still owed: the call after the next one tries again
                raise

    async def _call(self, msg, timeout_s: float | None, on_event=None):
        await self._ensure()
        await self._abort_abandoned()
        q = self._open(msg.id)
        try:
            await self._send(msg)
            while True:
                reply = await self._get(q, msg.id, timeout_s or self.default_timeout_s)
                if P.is_final(reply):
                    return _raise_if_error(reply)
                if on_event is not None:
                    on_event(reply)
        finally:
            self._queues.pop(msg.id, None)

    # ------------------------------------------------------------------ the worker's operations

    async def prewarm(self, path: str, name: str = "", dtype: str = "auto", *, tp: int = 1, rank: int = 0,
                      max_num_seqs: int = 0, timeout_s: float = 600.0,
                      on_progress: Callable[[P.PrewarmProgress], None] | None = None) -> P.Prewarmed:
        return await self._call(P.Prewarm(id=self._new_id(), path=str(path), name=name, dtype=dtype, tp=tp,
                                          rank=rank, max_num_seqs=max_num_seqs), timeout_s, on_event=on_progress)

    async def evict(self, name: str, *, timeout_s: float | None = None) -> P.Evicted:
        return await self._call(P.Evict(id=self._new_id(), name=name), timeout_s)

    async def activate(self, name: str, kv_blocks: int | None = None, shared: bool = False, *,
                       kv_target_free_blocks: int | None = None, engine: P.EngineConfig | None = None,
                       group_id: str = "", turn_s: float = 0.0, timeout_s: float | None = None) -> P.Activated:
        return await self._call(P.Activate(id=self._new_id(), name=name, kv_blocks=kv_blocks, shared=shared,
                                           kv_target_free_blocks=kv_target_free_blocks, engine=engine,
                                           group_id=group_id, turn_s=turn_s), timeout_s)

    async def host_group_store(self, *, timeout_s: float | None = None) -> int:
        return (await self._call(P.HostGroupStore(id=self._new_id()), timeout_s)).port

    async def join_group(self, group_id: str, rank: int, world_size: int, store_port: int, *,
                         group_timeout_s: float = 30.0, timeout_s: float | None = None) -> P.GroupJoined:
        return await self._call(P.JoinGroup(id=self._new_id(), group_id=group_id, rank=rank, world_size=world_size,
                                            store_port=store_port, timeout_s=group_timeout_s), timeout_s)

    async def leave_group(self, group_id: str, *, timeout_s: float | None = None) -> None:
        await self._call(P.LeaveGroup(id=self._new_id(), group_id=group_id), timeout_s)

    async def deactivate(self, name: str, *, timeout_s: float | None = None) -> P.Deactivated:
        return await self._call(P.Deactivate(id=self._new_id(), name=name), timeout_s)

    async def generate(self, model: str, prompt_ids: list[int], sampling: P.SamplingParams | None = None, *,
                       timeout_s: float | None = None) -> AsyncTokenStream:
        """Send a generation and return its stream at once (``async for`` it; errors raise while iterating)."""
        await self._ensure()
        await self._abort_abandoned()
        id = self._new_id()
        q = self._open(id)
        await self._send(P.Generate(id=id, model=model, prompt_ids=list(prompt_ids),
                                    sampling=sampling or P.SamplingParams()))
        return AsyncTokenStream(self, id, q, timeout_s or self.default_timeout_s)

    async def abort(self, request_id: int, *, timeout_s: float | None = None) -> None:
        await self._call(P.Abort(id=self._new_id(), request_id=request_id), timeout_s)

    async def set_kv_target(self, model: str, free_blocks: int, *, timeout_s: float | None = None) -> P.KvTargetSet:
        return await self._call(P.SetKvTarget(id=self._new_id(), model=model, free_blocks=free_blocks), timeout_s)

    async def dedicate(self, model: str, *, timeout_s: float | None = None) -> P.KvTargetSet:
        return await self._call(P.Dedicate(id=self._new_id(), model=model), timeout_s)

    async def stats(self, pages: bool = False, *, timeout_s: float | None = None) -> P.Stats:
        return await self._call(P.GetStats(id=self._new_id(), pages=pages), timeout_s)

    async def shutdown(self, *, timeout_s: float | None = None) -> None:
        await self._call(P.Shutdown(id=self._new_id()), timeout_s)

    async def close(self) -> None:
        """Stop the client; calls and streams still waiting fail at once with ``ClosedError`` (found in review:
        they waited out their whole timeout for an answer nothing could bring)."""
        if self._sock is not None:
            self._fail_waiting(errors.ClosedError(f"the client of the worker at {self.endpoint} was closed",
                                                  endpoint=self.endpoint))
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: PERF203  (a cancelled task re-raises on await)
                pass
        self._tasks = []
        if self._sock is not None:
            self._finalizer()
            self._sock = None

    async def __aenter__(self):
        await self._ensure()
        return self

    async def __aexit__(self, *exc):
        await self.close()


async def _receive_loop(ref, sock) -> None:
    """A client's receiver: routes replies by id, holding the client only while it handles one."""
    while True:
        data = await sock.recv()
        client = ref()
        if client is None:
            return
        client._on_message(data)
        del client


async def _heartbeat_loop(ref, interval_s: float) -> None:
    """A client's heartbeats and silence check, holding the client only while it beats."""
    while True:
        await asyncio.sleep(interval_s)
        client = ref()
        if client is None:
            return
        await client._beat()
        del client


def _end(tasks: list, sock, ctx) -> None:
    """A client's finalizer (its close, or its collection): its tasks stop, then its socket and context close,
    whatever the tasks' loop is (closed already at exit: its tasks cannot be cancelled, found in review)."""
    try:
        for t in tasks:
            try:
                t.cancel()
            except RuntimeError:  # "Event loop is closed": nothing runs them any more
                pass
    finally:
        _close_zmq(sock, ctx)
