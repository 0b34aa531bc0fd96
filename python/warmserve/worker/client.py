"""Clients of a worker: ``WorkerClient`` (sync, ZeroMQ DEALER), ``AsyncWorkerClient`` (asyncio, same methods,
awaited; in ``async_client.py``) and, in ``inprocess.py``, ``InProcessWorker`` (sync, no sockets, same methods as
``WorkerClient``).

Every request gets a fresh id; replies are routed by id into per-request inboxes, so many generations can stream
at once on one socket. A request that fails comes back as its typed error (``errors.from_wire``), raised here.
Silence from the worker for ``worker_timeout_s`` (it sends heartbeats every second) raises ``WorkerLostError``,
and so does a stream that skipped ``Tokens`` (``Tokens.seq``: a connection re-made lost them); its generation is
aborted.
"""

from __future__ import annotations

import collections
import os
import time
import weakref
from typing import Callable, Iterator

import zmq

from .. import errors
from .. import protocol as P
from ..endpoints import check_endpoint, is_ipv6_endpoint


def _raise_if_error(msg):
    if isinstance(msg, P.Error):
        raise msg.exception()
    return msg


def ended_stream_words(rid: int) -> str:
    """Why ``collect()`` of a stream that has ended gives nothing (its final event went to whoever read it)."""
    return (f"generation {rid}'s stream has ended already (read to its end, or closed): collect() reads a stream "
            "that still runs; keep what the first read returned")


def stream_gap_error(where: str, id: int, expected_seq: int, got_seq: int) -> errors.WorkerLostError:
    """The error of a generation whose stream skipped ``Tokens`` (``Tokens.seq`` is not the next one): its
    connection broke and was re-made, and what it carried was lost (worker/server.py)."""
    return errors.WorkerLostError(
        f"the stream of request {id} from the worker at {where} lost {got_seq - expected_seq} Tokens message(s) "
        f"(expected #{expected_seq}, got #{got_seq}): the connection broke and was re-made, losing what it carried; "
        f"its generation is aborted on the worker: send the request again", endpoint=where, request_id=id,
        expected_seq=expected_seq, got_seq=got_seq)


def worker_restarted(endpoint: str, id: int, before: str, now: str) -> errors.WorkerLostError:
    """The error of request ``id`` once the heartbeats at ``endpoint`` come from another worker process (their
    ``start_id`` went from ``before`` to ``now``): a restart there lost it, and the new worker's heartbeats would
    otherwise keep the request waiting out its whole timeout (found in review)."""
    return errors.WorkerLostError(
        f"the worker at {endpoint} restarted (its heartbeats now come from start id {now}, not {before}): request "
        f"{id} was lost with the old process; send it again (after prewarming and activating its model there "
        f"again: the new worker holds none of the old one's)", endpoint=endpoint, request_id=id, start_id=now)


class TokenStream:
    """The ``Tokens`` events of one generation, as an iterator; ``abort()`` ends it early (its last event, "abort",
    still comes), ``close()`` (or leaving a ``with`` block) ends it and drops what is left. A stream dropped
    unfinished is aborted by its client's next call (found in review: its generation ran on to max_tokens, its
    events piling up in the client)."""

    def __init__(self, client: "SyncClientBase", id: int, timeout_s: float):
        self.client, self.id, self.timeout_s = client, id, timeout_s
        self.done = False
        #: ``Tokens.seq`` of the next event.
        self._seq = 0
        # Not a send from here: a finalizer may run on another thread, and a client is not thread-safe.
        self._abandoned = weakref.finalize(self, client._abandoned.append, id)

    def __iter__(self) -> Iterator[P.Tokens]:
        # Several iterators may take turns over one stream (next(iter(s)) and later list(s)): nothing is dropped
        # when one of them is abandoned, only when the request has ended.
        while not self.done:
            try:
                msg = self.client._next(self.id, self.timeout_s)
            except errors.WorkerLostError:
                # The worker may only have stalled: told nothing, it runs the generation on to max_tokens holding
                # KV blocks (found in review; the async stream's fix). Aborted by the next call, as a stream dropped
                # unfinished is (its inbox entry kept until then: the abort goes to the requests still listed).
                self._abandon()
                raise
            if isinstance(msg, P.Tokens) and msg.seq != self._seq:
                self._gap(msg.seq)
            self._seq += 1
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

    def _abandon(self) -> None:
        """End the stream and leave its generation to the client's next call to abort."""
        self.done = True
        self._abandoned.detach()
        self.client._abandoned.append(self.id)

    def _gap(self, got_seq: int) -> None:
        """End the stream with the typed loss: the worker runs the generation on, so it is aborted now (sent, not
        waited for, as an abandoned stream's is)."""
        err = stream_gap_error(getattr(self.client, "endpoint", "in this process"), self.id, self._seq, got_seq)
        self._abandon()
        try:
            self.client._abort_abandoned()
        except errors.WorkerLostError as e:  # the Abort could not go out either: the gap is still what to report
            raise err from e
        raise err

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
        """The token ids not read yet, and the final event; ClosedError if the stream has ended already."""
        if self.done:
            raise errors.ClosedError(ended_stream_words(self.id))
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
        #: When the current wait for a reply began (monotonic s): the worker's silence counts from no earlier.
        self._waiting_since_s = 0.0

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
                 group_id: str = "", turn_s: float = 0.0, timeout_s: float | None = None) -> P.Activated:
        """Turn a prewarmed model into an instance; a tensor-parallel shard runs in ``group_id`` (every rank's
        activation must be sent at about the same time: they meet in the group)."""
        return self._call(P.Activate(id=self._new_id(), name=name, kv_blocks=kv_blocks, shared=shared,
                                     kv_target_free_blocks=kv_target_free_blocks, engine=engine,
                                     group_id=group_id, turn_s=turn_s), timeout_s)

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
        try:
            self._send(P.Generate(id=id, model=model, prompt_ids=list(prompt_ids),
                                  sampling=sampling or P.SamplingParams()))
        except BaseException:
            self._forget(id)  # not sent: nothing comes for it (found in review: each failed send left its entry)
            raise
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
        self._waiting_since_s = time.monotonic()
        while not box:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.TimeoutError_(
                    f"no answer to request {id} within {timeout_s:.1f} s: raise timeout_s or check the worker",
                    timeout_s=timeout_s, request_id=id,
                )
            self._pump(left)
        msg = box.popleft()
        if isinstance(msg, errors.WarmServeError):  # the loss of the worker (a restart: WorkerClient._pump)
            raise msg
        return msg

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
        check_endpoint(endpoint, "worker endpoint", listen=False)
        super().__init__()
        self.endpoint = endpoint
        self.heartbeat_interval_s = heartbeat_interval_s
        self.worker_timeout_s = worker_timeout_s
        self.default_timeout_s = default_timeout_s
        self._ctx, self._sock = _dealer(zmq.Context(), endpoint, hwm, curve_server_key, curve_secret_key)
        self._finalizer = weakref.finalize(self, _close_zmq, self._sock, self._ctx)
        self._last_heard = time.monotonic()
        self._last_sent = 0.0
        #: The worker's ``Heartbeat.start_id`` as first heard ("": none yet): another one is a restart (``_pump``).
        self._start_id = ""

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
            self._send(P.Heartbeat(id=self._next_id, time_s=time.time()))  # id: Heartbeat.first_id's
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
                if isinstance(msg, P.Heartbeat) and msg.start_id and msg.start_id != self._start_id:
                    self._restarted(msg.start_id, msg.first_id)
                self._dispatch(msg)
        else:
            # Only the time spent listening counts: this client reads (and hears heartbeats) only inside a call, so
            # after it sat idle its last message heard is old although the worker is alive (found in review: a call
            # answered after a second failed once the client had been idle for worker_timeout_s).
            silent_s = time.monotonic() - max(self._last_heard, self._waiting_since_s)
            if silent_s > self.worker_timeout_s:
                raise errors.WorkerLostError(
                    f"worker at {self.endpoint} silent for {silent_s:.1f} s (limit {self.worker_timeout_s} s)",
                    endpoint=self.endpoint, silent_s=silent_s,
                )

    def _restarted(self, start_id: str, first_id: int) -> None:
        """Heartbeats from a worker process other than the first one heard (an older worker says none): the calls
        and streams waiting here with ids below ``first_id`` (the first message the new process had from this
        client) went to the old one and fail with ``WorkerLostError`` at once; those from ``first_id`` on reach
        the new one. Not "sent before the last message heard": heartbeats of the old worker queued unread while
        this client sat idle would then count a call made after the restart (found in review of the fix)."""
        before, self._start_id = self._start_id, start_id
        if before:
            for id, box in self._inbox.items():
                if id < first_id:
                    box.append(worker_restarted(self.endpoint, id, before, start_id))

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
    from ..security import curve_client

    curve_client(sock, server_key, secret_key)


def _stable_routing_id(sock) -> None:
    """A routing id of our own, kept across reconnections: a worker that dropped this client's generations when its
    connection broke (a reset, a message over its size limit) knows it when it hears from it again, and answers
    each with WorkerLostError (worker/server.py). Under the id the worker's ROUTER makes up, the reconnected client
    was a stranger and waited out its timeouts (found in review). Random, so no other client takes it over; never
    a leading zero byte (ZeroMQ keeps those for its own)."""
    sock.setsockopt(zmq.ROUTING_ID, b"c" + os.urandom(15))


def _dealer(ctx, endpoint: str, hwm: int, server_key: str | None, secret_key: str | None):
    """``(ctx, socket)``: a client's DEALER on ``ctx``, connected to ``endpoint``. Closed, and ``ctx`` ended, where
    any step fails (bad CURVE arguments, an endpoint ZeroMQ refuses), which left an unclosed socket to the garbage
    collector (a ResourceWarning in a later test)."""
    sock = None
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        _curve(sock, server_key, secret_key)
        _stable_routing_id(sock)
        if is_ipv6_endpoint(endpoint):
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(endpoint)
    except BaseException:  # the context too, where the socket itself could not be made (no descriptor left)
        if sock is not None:
            sock.close(linger=0)
        ctx.term()
        raise
    return ctx, sock


def _close_zmq(sock, ctx) -> None:
    sock.close(linger=0)
    ctx.term()


def __getattr__(name: str):
    # The asyncio client moved to async_client.py (this module grew past its size); its old import path still
    # works, loaded on first use so that neither module imports the other while it loads.
    if name in ("AsyncTokenStream", "AsyncWorkerClient"):
        from . import async_client

        return getattr(async_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
