"""Clients of a worker: ``WorkerClient`` (sync, ZeroMQ DEALER), ``AsyncWorkerClient`` (asyncio, same methods,
awaited) and, in ``inprocess.py``, ``InProcessWorker`` (sync, no sockets, same methods as ``WorkerClient``).

Every request gets a fresh id; replies are routed by id into per-request inboxes, so many generations can stream
at once on one socket. A request that fails comes back as its typed error (``errors.from_wire``), raised here.
Silence from the worker for ``worker_timeout_s`` (it sends heartbeats every second) raises ``WorkerLostError``.
"""

from __future__ import annotations

import asyncio
import collections
import time
import weakref
from typing import AsyncIterator, Callable, Iterator

import zmq
import zmq.asyncio

from .. import errors
from .. import protocol as P


def _raise_if_error(msg):
    if isinstance(msg, P.Error):
        raise msg.exception()
    return msg


class TokenStream:
    """The ``Tokens`` events of one generation, as an iterator; ``abort()`` ends it early (its last event, "abort",
    still comes), ``close()`` (or leaving a ``with`` block) ends it and drops what is left. A stream dropped
    unfinished is aborted by its client's next call (found in review: its generation ran on to max_tokens, its
    events piling up in the client)."""

    def __init__(self, client: "SyncClientBase", id: int, timeout_s: float):
        self.client, self.id, self.timeout_s = client, id, timeout_s
        self.done = False
        # Not a send from here: a finalizer may run on another thread, and a client is not thread-safe.
        self._abandoned = weakref.finalize(self, client._abandoned.append, id)

    def __iter__(self) -> Iterator[P.Tokens]:
        # Several iterators may take turns over one stream (next(iter(s)) and later list(s)): nothing is dropped
        # when one of them is abandoned, only when the request has ended.
        while not self.done:
            msg = self.client._next(self.id, self.timeout_s)
            if isinstance(msg, P.Error) or (isinstance(msg, P.Tokens) and msg.finished):
                self._end()
            if isinstance(msg, P.Tokens):
                yield msg
            else:
                _raise_if_error(msg)

    def _end(self) -> None:
        self.done = True
        self._abandoned.detach()
        self.client._forget(self.id)

    def abort(self) -> None:
        if not self.done:
            self.client.abort(self.id)

    def close(self) -> None:
        """Stop the generation if it still runs; nothing more comes from this stream."""
        if not self.done:
            self._end()
            self.client.abort(self.id)

    def __enter__(self) -> "TokenStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def collect(self) -> tuple[list[int], P.Tokens]:
        """All generated token ids and the final event."""
        ids: list[int] = []
        last = None
        for ev in self:
            ids.extend(ev.token_ids)
            last = ev
        return ids, last


class SyncClientBase:
    """Request/reply correlation shared by the socket client and the in-process worker.

    Subclasses provide ``_send(msg)`` and ``_pump(timeout_s)`` (receive or produce what is ready, calling
    ``_dispatch`` for each reply). Not thread-safe: use one client per thread.
    """

    default_timeout_s = 60.0

    def __init__(self):
        self._next_id = 1
        self._inbox: dict[int, collections.deque] = {}
        #: Generations whose streams were dropped unfinished (TokenStream's finalizer): aborted by the next call.
        self._abandoned: list[int] = []

    # ------------------------------------------------------------------ the worker's operations

    def prewarm(self, path: str, name: str = "", dtype: str = "auto", *, tp: int = 1, rank: int = 0,
                max_num_seqs: int = 0, timeout_s: float = 600.0,
                on_progress: Callable[[P.PrewarmProgress], None] | None = None) -> P.Prewarmed:
        """Load a checkpoint (tp > 1: only shard ``rank`` of a ``tp``-way split) into a new slot; on a GPU, capture
        its decode CUDA graphs for batches up to ``max_num_seqs`` (0: the worker's engine config)."""
        return self._call(P.Prewarm(id=self._new_id(), path=str(path), name=name, dtype=dtype, tp=tp, rank=rank,
                                    max_num_seqs=max_num_seqs), timeout_s, on_event=on_progress)

    def evict(self, name: str, *, timeout_s: float | None = None) -> P.Evicted:
        return self._call(P.Evict(id=self._new_id(), name=name), timeout_s)

    def activate(self, name: str, kv_blocks: int | None = None, shared: bool = False, *,
                 kv_target_free_blocks: int | None = None, engine: P.EngineConfig | None = None,
                 group_id: str = "", timeout_s: float | None = None) -> P.Activated:
        """Turn a prewarmed model into an instance; a tensor-parallel shard runs in ``group_id`` (every rank's
        activation must be sent at about the same time: they meet in the group)."""
        return self._call(P.Activate(id=self._new_id(), name=name, kv_blocks=kv_blocks, shared=shared,
                                     kv_target_free_blocks=kv_target_free_blocks, engine=engine,
                                     group_id=group_id), timeout_s)

    def host_group_store(self, *, timeout_s: float | None = None) -> int:
        """The loopback port of the store at which the groups this worker leads meet."""
        return self._call(P.HostGroupStore(id=self._new_id()), timeout_s).port

    def join_group(self, group_id: str, rank: int, world_size: int, store_port: int, *, group_timeout_s: float = 30.0,
                   timeout_s: float | None = None) -> P.GroupJoined:
        """Join a process group; returns once every rank is in (call it for every rank at about the same time)."""
        return self._call(P.JoinGroup(id=self._new_id(), group_id=group_id, rank=rank, world_size=world_size,
                                      store_port=store_port, timeout_s=group_timeout_s), timeout_s)

    def leave_group(self, group_id: str, *, timeout_s: float | None = None) -> None:
        self._call(P.LeaveGroup(id=self._new_id(), group_id=group_id), timeout_s)

    def deactivate(self, name: str, *, timeout_s: float | None = None) -> P.Deactivated:
        return self._call(P.Deactivate(id=self._new_id(), name=name), timeout_s)

    def generate(self, model: str, prompt_ids: list[int], sampling: P.SamplingParams | None = None, *,
                 timeout_s: float | None = None) -> TokenStream:
        """Start a generation; iterate the returned stream for its ``Tokens`` (errors raise while iterating)."""
        self._abort_abandoned()
        id = self._new_id()
        self._inbox[id] = collections.deque()
        self._send(P.Generate(id=id, model=model, prompt_ids=list(prompt_ids), sampling=sampling or P.SamplingParams()))
        return TokenStream(self, id, timeout_s or self.default_timeout_s)

    def abort(self, request_id: int, *, timeout_s: float | None = None) -> None:
        self._call(P.Abort(id=self._new_id(), request_id=request_id), timeout_s)

    def set_kv_target(self, model: str, free_blocks: int, *, timeout_s: float | None = None) -> P.KvTargetSet:
        return self._call(P.SetKvTarget(id=self._new_id(), model=model, free_blocks=free_blocks), timeout_s)

    def dedicate(self, model: str, *, timeout_s: float | None = None) -> P.KvTargetSet:
        return self._call(P.Dedicate(id=self._new_id(), model=model), timeout_s)

    def stats(self, pages: bool = False, *, timeout_s: float | None = None) -> P.Stats:
        return self._call(P.GetStats(id=self._new_id(), pages=pages), timeout_s)

    def shutdown(self, *, timeout_s: float | None = None) -> None:
        self._call(P.Shutdown(id=self._new_id()), timeout_s)

    # ------------------------------------------------------------------ correlation

    def _new_id(self) -> int:
        id = self._next_id
        self._next_id += 1
        return id

    def _abort_abandoned(self) -> None:
        """Abort the generations of streams dropped unfinished: sent, not waited for (their answers are dropped)."""
        while self._abandoned:
            rid = self._abandoned.pop()
            if rid in self._inbox:
                self._forget(rid)
                self._send(P.Abort(id=self._new_id(), request_id=rid))

    def _call(self, msg, timeout_s: float | None, on_event=None):
        self._abort_abandoned()
        self._inbox[msg.id] = collections.deque()
        try:
            self._send(msg)
            while True:
                reply = self._next(msg.id, timeout_s or self.default_timeout_s)
                if P.is_final(reply):
                    return _raise_if_error(reply)
                if on_event is not None:
                    on_event(reply)
        finally:
            self._forget(msg.id)

    def _next(self, id: int, timeout_s: float):
        """The next message for request ``id``, pumping until one comes or ``timeout_s`` passes."""
        box = self._inbox[id]
        deadline = time.monotonic() + timeout_s
        while not box:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.TimeoutError_(
                    f"no answer to request {id} within {timeout_s:.1f} s: raise timeout_s or check the worker",
                    timeout_s=timeout_s, request_id=id,
                )
            self._pump(left)
        return box.popleft()

    def _dispatch(self, msg) -> None:
        box = self._inbox.get(msg.id)
        if box is not None and not isinstance(msg, (P.Heartbeat, P.Hello)):
            box.append(msg)
        # else: a heartbeat, or a late event of a request given up on: nothing waits for it.

    def _forget(self, id: int) -> None:
        self._inbox.pop(id, None)

    def _send(self, msg) -> None:
        raise NotImplementedError

    def _pump(self, timeout_s: float) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class WorkerClient(SyncClientBase):
    """Sync ZeroMQ client of one worker (a DEALER connected to the worker's ROUTER).

    It reads the socket and sends its heartbeats only while one of its calls or streams is being waited on: a
    stream left unread for longer than the worker's ``--peer-timeout-s`` is aborted by the worker."""

    def __init__(self, endpoint: str, *, heartbeat_interval_s: float = 1.0, worker_timeout_s: float = 10.0,
                 hwm: int = 100_000, default_timeout_s: float = 60.0, curve_server_key: str | None = None,
                 curve_secret_key: str | None = None):
        """``curve_server_key``: the worker's public certificate file (a worker bound with
        ``--curve-clients-dir``); ``curve_secret_key``: this client's secret certificate file, whose public half
        sits in that directory."""
        super().__init__()
        self.endpoint = endpoint
        self.heartbeat_interval_s = heartbeat_interval_s
        self.worker_timeout_s = worker_timeout_s
        self.default_timeout_s = default_timeout_s
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        _curve(self._sock, curve_server_key, curve_secret_key)
        self._sock.connect(endpoint)
        self._finalizer = weakref.finalize(self, _close_zmq, self._sock, self._ctx)
        self._last_heard = time.monotonic()
        self._last_sent = 0.0

    def send_raw(self, frames: list[bytes]) -> None:
        """Send frames as they are (tests use this to send garbage)."""
        self._sock.send_multipart(frames, zmq.NOBLOCK)
        self._last_sent = time.monotonic()

    def recv_raw(self, timeout_s: float) -> object:
        """The next decoded reply whatever its id (tests use this after ``send_raw``)."""
        if not self._sock.poll(int(timeout_s * 1000)):
            raise errors.TimeoutError_(f"nothing from {self.endpoint} in {timeout_s} s", timeout_s=timeout_s)
        self._last_heard = time.monotonic()
        return P.decode_reply(self._sock.recv())

    def _send(self, msg) -> None:
        try:
            self._sock.send(P.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            raise errors.WorkerLostError(
                f"worker at {self.endpoint} is not taking messages ({self._sock.getsockopt(zmq.SNDHWM)} queued)",
                endpoint=self.endpoint,
            ) from None
        self._last_sent = time.monotonic()

    def _pump(self, timeout_s: float) -> None:
        now = time.monotonic()
        if now - self._last_sent >= self.heartbeat_interval_s:
            self._send(P.Heartbeat(time_s=time.time()))
        wait_s = min(timeout_s, self.heartbeat_interval_s)
        if self._sock.poll(max(1, int(wait_s * 1000))):
            while True:
                try:
                    data = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._last_heard = time.monotonic()
                try:
                    msg = P.decode_reply(data)
                except errors.ProtocolError:
                    continue  # a worker of another version: nothing here can be matched to it
                self._dispatch(msg)
        elif time.monotonic() - self._last_heard > self.worker_timeout_s:
            raise errors.WorkerLostError(
                f"worker at {self.endpoint} silent for {time.monotonic() - self._last_heard:.1f} s "
                f"(limit {self.worker_timeout_s} s)",
                endpoint=self.endpoint, silent_s=time.monotonic() - self._last_heard,
            )

    def close(self) -> None:
        self._finalizer()


def _curve(sock, server_key: str | None, secret_key: str | None) -> None:
    """CURVE towards a worker bound with it, before connecting; a secret key without the server's is an error."""
    if server_key is None:
        if secret_key is not None:
            raise errors.InvalidArgumentError("curve_secret_key needs curve_server_key (the worker's public key)")
        return
    if secret_key is None:
        # A worker bound with CURVE lets in listed clients only: an ephemeral key would be refused unheard.
        raise errors.InvalidArgumentError(
            "curve_server_key needs curve_secret_key: this client's .key_secret, whose public half the worker's "
            "--curve-clients-dir lists")
    from .server import _curve_client

    _curve_client(sock, server_key, secret_key)


def _close_zmq(sock, ctx) -> None:
    sock.close(linger=0)
    ctx.term()


# ====================================================================== asyncio


class AsyncTokenStream:
    """``async for ev in stream``: the ``Tokens`` events of one generation. As ``TokenStream``: ``await close()``
    (or ``async with``) ends it early, and one dropped unfinished is aborted by its client's next call."""

    def __init__(self, client: "AsyncWorkerClient", id: int, queue: asyncio.Queue, timeout_s: float):
        self.client, self.id, self.queue, self.timeout_s = client, id, queue, timeout_s
        self.done = False
        self._abandoned = weakref.finalize(self, client._abandoned.append, id)

    def __aiter__(self) -> AsyncIterator[P.Tokens]:
        return self._iter()

    async def _iter(self):
        while not self.done:
            try:
                msg = await self.client._get(self.queue, self.id, self.timeout_s)
            except errors.WorkerLostError:
                self._end()
                raise
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
        self._tasks: list[asyncio.Task] = []
        self._lost: errors.WarmServeError | None = None
        self.last_heartbeat: P.Heartbeat | None = None

    async def _ensure(self) -> None:
        if self._sock is not None:
            return
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, self.hwm)
        self._sock.setsockopt(zmq.RCVHWM, self.hwm)
        _curve(self._sock, *self._curve_keys)
        self._sock.connect(self.endpoint)
        self._finalizer = weakref.finalize(self, _close_zmq, self._sock, self._ctx)
        self._last_heard = time.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receiver()), loop.create_task(self._heartbeats())]

    async def _receiver(self) -> None:
        while True:
            data = await self._sock.recv()
            self._last_heard = time.monotonic()
            self._lost = None  # heard again (a worker that was paused or cut off): new calls go through, as the
            # sync client's do; calls that failed with the loss stay failed (found in review: lost for good)
            try:
                msg = P.decode_reply(data)
            except errors.ProtocolError:
                continue  # a worker of another version: its replies cannot be matched anyway
            if isinstance(msg, P.Heartbeat):
                self.last_heartbeat = msg
                continue
            q = self._queues.get(msg.id)
            if q is not None:
                q.put_nowait(msg)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            silent_s = time.monotonic() - self._last_heard
            if silent_s > self.worker_timeout_s:
                self._lost = errors.WorkerLostError(
                    f"worker at {self.endpoint} silent for {silent_s:.1f} s (limit {self.worker_timeout_s} s)",
                    endpoint=self.endpoint, silent_s=silent_s,
                )
                for q in self._queues.values():
                    q.put_nowait(self._lost)
            await self._send(P.Heartbeat(time_s=time.time()))

    async def _send(self, msg) -> None:
        try:
            await self._sock.send(P.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            raise errors.WorkerLostError(
                f"worker at {self.endpoint} is not taking messages ({self.hwm} queued)", endpoint=self.endpoint
            ) from None

    async def _get(self, q: asyncio.Queue, id: int, timeout_s: float):
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
        """As SyncClientBase._abort_abandoned: streams dropped unfinished are aborted, their answers dropped."""
        while self._abandoned:
            rid = self._abandoned.pop()
            if self._queues.pop(rid, None) is not None:
                await self._send(P.Abort(id=self._new_id(), request_id=rid))

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

    async def prewarm(self, path: str, name: str = "", dtype: str = "auto", *, timeout_s: float = 600.0,
                      on_progress=None) -> P.Prewarmed:
        return await self._call(P.Prewarm(id=self._new_id(), path=str(path), name=name, dtype=dtype), timeout_s,
                                on_event=on_progress)

    async def evict(self, name: str, *, timeout_s: float | None = None) -> P.Evicted:
        return await self._call(P.Evict(id=self._new_id(), name=name), timeout_s)

    async def activate(self, name: str, kv_blocks: int | None = None, shared: bool = False, *,
                       kv_target_free_blocks: int | None = None, engine: P.EngineConfig | None = None,
                       timeout_s: float | None = None) -> P.Activated:
        return await self._call(P.Activate(id=self._new_id(), name=name, kv_blocks=kv_blocks, shared=shared,
                                           kv_target_free_blocks=kv_target_free_blocks, engine=engine), timeout_s)

    async def deactivate(self, name: str, *, timeout_s: float | None = None) -> P.Deactivated:
        return await self._call(P.Deactivate(id=self._new_id(), name=name), timeout_s)

    async def generate(self, model: str, prompt_ids: list[int], sampling: P.SamplingParams | None = None, *,
                       timeout_s: float | None = None) -> AsyncTokenStream:
        """Send a generation and return its stream at once (``async for`` it; errors raise while iterating)."""
        await self._ensure()
        await self._abort_abandoned()
        id = self._new_id()
        q = self._open(id)
        await self._send(P.Generate(id=id, model=model, prompt_ids=list(prompt_ids), sampling=sampling or P.SamplingParams()))
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
