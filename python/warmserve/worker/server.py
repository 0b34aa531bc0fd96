"""The worker's ZeroMQ side: a link thread that owns the network socket, and the engine loop that owns the core.

Two ways to be reached:
- bind (tests, workers started with ``--bind``): a ROUTER on ``endpoint``; each connected DEALER is a peer,
  known by its routing id. Optionally CURVE, with the client keys allowed listed in a directory (ZAP).
- connect (workers a controller spawns, workers on other hosts): a DEALER connected to the controller's ROUTER;
  the one peer is the controller. The worker says ``Hello`` every heartbeat until the controller has said
  anything, so a controller that starts later, or restarts, learns about it.

Threads. An engine step can last seconds (a 2,048-token prefill chunk of llama-90m takes about 4 s on one CPU
thread), so liveness must not wait for the loop that steps engines, or a busy worker is declared lost. ZeroMQ
sockets are used by one thread each, so there are two threads with their own sockets, joined by an inproc PAIR
pipe in one context:

- the link thread (``link.Link``) owns the network socket and one end of the pipe. It forwards every message from
  the network into the pipe and every message from the pipe to the network, tracks when each peer was last
  heard, and keeps the heartbeat clock: a ``Heartbeat`` to every peer each interval when bound; when connected,
  ``Hello`` until the controller has answered, then a ``Heartbeat`` once nothing at all has gone to it for an
  interval (the engine loop's ``Stats`` pushes count): silence lasts about one interval (and the poll's ms). Found
  in review: sent at the link's own beats once an engine turn had lasted an interval, a long step begun just before
  a Stats was due left ~3 intervals of silence, and a busy worker was declared lost.
- the engine loop (the caller of ``serve_forever``, the main thread) owns the ``WorkerCore`` and the other end of
  the pipe: it reads requests from the pipe, ticks the core and writes replies into the pipe. Only it touches
  the core; the link reports a peer it gave up on (a send failed, or silent past ``peer_timeout_s``) as a
  message in the pipe, and reads ``in_flight``, an int the engine loop writes (stored whole under the GIL).

GIL. The link thread is Python, so it needs the GIL to send a heartbeat. It waits in zmq_poll, which releases
the GIL; an engine step spends its time inside torch operators, whose bindings release the GIL while they run,
and between operators CPython hands the GIL to a waiting thread every ``sys.getswitchinterval()`` (5 ms). So the
link runs within milliseconds of its deadline however long a step lasts; only one native call holding the GIL
for longer than a heartbeat interval could delay it, and the step path makes none.

The network socket is made and bound in the constructor (a bad endpoint fails there, and ``endpoint`` is known at
once) and handed to the link thread by ``Thread.start()``: a full memory barrier, which is how the ZeroMQ
documentation lets a socket move to another thread. The thread that uses a socket afterwards closes it.

Bounds: a message over ``max_message_bytes`` drops its connection; sends never block (a peer whose queue is full
past ``hwm`` messages, or that is gone, has its generations aborted); the pipe towards the engine holds at most
``2 * hwm`` messages, past which the link keeps the rest in its backlog; at most ``max_messages_per_drain`` messages
are read between two engine steps. The requests queued unread (pipe and backlog) hold at most ``max_queued_bytes``
(``Link.max_queued_bytes``): past it, a message is answered ``OverloadedError`` unread and its bytes freed at once,
so that a worker in a long step is not filled with prompts (found in review: 100 of 32 MB took ~2.1 GB). The link
reads the network on while the pipe is full: ZeroMQ's own queue, which no budget sees, stays empty. A peer silent for
``peer_timeout_s`` has its generations aborted, so a dead client does not hold KV blocks. A malformed message
gets a ``ProtocolError`` reply and the loop goes on.

A peer given up on is told once it is heard again. A connection that breaks for a moment (a reset, a message over
the size limit, which ZeroMQ answers by closing it) is re-made at once by the peer's socket, so the peer never
learns that its generations were aborted here: it waited out its timeouts (found in review). Nothing can reach a
peer that is gone, and the first message from it after is the first moment it can be told, so:

- bound: the worker keeps the ids it aborted for each peer it gave up on (``_MAX_DROPPED_PEERS`` peers at most),
  and answers each with ``WorkerLostError`` when that peer speaks again. A client keeps its routing id across
  reconnections for this (``client._stable_routing_id``);
- connected: the link says ``Hello`` as soon as it hears the controller again, before the message it heard goes
  on to the engine (so the Hello comes before any reply to it), and the controller takes a Hello from a worker it
  has admitted as the loss of everything it had there (controller/workers.py). A Hello rather than an error per
  request: messages in flight both ways were lost with the connection too, which only starting over settles.

A controller that declared this worker lost (silent past its timeout: the worker or its host stalled for a moment)
answers what the worker says next with ``Rejoin``: the link aborts the generations it ran for the controller (it
started them over elsewhere), unanswered, and says Hello at once, as above; otherwise the worker would be shut out
until ``peer_timeout_s`` of silence from the controller (found in review: 30 s of 503s for a worker paused for 3 s).

A controller that refuses this worker (another protocol version, a pool that holds none of its models) answers its
Hello with ``Refused``: the link logs the reason at WARNING, once per reason, and says Hello on, as for a refused key
(``Link._watch``): a controller restarted with other models, or the worker's version, admits it without a restart
here, and exiting would only have a supervisor start it again into the same refusal.

A connection can also be re-made with no send failing here (a client's new connection takes its routing id over
before this side saw the old one go): what the old one carried is lost and nobody is told. Each generation's
``Tokens`` are numbered as they are sent (``numbering.TokensNumbering``), so the reader sees the gap in the stream
(the clients fail the request with ``WorkerLostError``) instead of text with tokens missing.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import threading
import time
import weakref

import zmq

from .. import errors
from .. import protocol as P
from ..endpoints import check_ipc_free, is_ipv6_endpoint, remove_ipc_file
from ..log_repeats import RepeatedFailure
from ..security import curve_bind_server, curve_client, require_authenticated_bind
from .core import WorkerCore
from .link import CONTROLLER, DEFAULT_MAX_QUEUED_BYTES, FLUSH_S, GONE, SEND, STOP, Link, queued_cost
from .numbering import TokensNumbering

log = logging.getLogger("warmserve.worker")

#: How to turn authentication on for a bound worker (the fix named by InsecureBindError).
BIND_FIX = ("pass --curve-secret-key (this worker's certificate) and --curve-clients-dir (the public certificates "
            "of the clients allowed)")
#: What a connected worker's socket monitor reports (``Link._watch``).
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
#: Seconds between two log lines of malformed messages (each one is still answered with an Error).
MALFORMED_LOG_EVERY_S = 60.0
#: Peers whose aborted generation ids a bound worker keeps to tell them (the oldest is forgotten past this).
_MAX_DROPPED_PEERS = 1024


class WorkerServer:
    def __init__(
        self,
        core: WorkerCore,
        *,
        bind: str | None = None,
        controller: str | None = None,
        heartbeat_interval_s: float = 1.0,
        peer_timeout_s: float = 30.0,
        hwm: int = 100_000,
        max_messages_per_drain: int = 256,
        max_message_bytes: int = 64 << 20,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        exit_with_parent: bool | int = False,
        curve_server_key: str | None = None,
        curve_secret_key: str | None = None,
        curve_clients_dir: str | None = None,
        insecure: bool = False,
        host_name: str = "",
    ):
        """``host_name``: the machine it tells the controller it runs on (default: this host's name).
        ``max_queued_bytes``: bytes of requests held unread before more are refused (``OverloadedError``)."""
        if (bind is None) == (controller is None):
            raise errors.InvalidArgumentError("give exactly one of bind= (an endpoint) or controller= (an address)")
        if isinstance(max_queued_bytes, bool) or not isinstance(max_queued_bytes, int) or max_queued_bytes < 1:
            raise errors.InvalidArgumentError(f"max_queued_bytes must be a whole number of bytes >= 1 (default "
                                              f"{DEFAULT_MAX_QUEUED_BYTES}), got {max_queued_bytes!r}",
                                              max_queued_bytes=repr(max_queued_bytes))
        if bind is not None:
            require_authenticated_bind(bind, authenticated=bool(curve_clients_dir), insecure=insecure,
                                       who="the worker", fix=BIND_FIX)
        self.core = core
        self.host_name = host_name or socket.gethostname()
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_messages_per_drain = max_messages_per_drain
        self.ctx = zmq.Context()
        self.routed = bind is not None
        self._auth = None
        #: Connected: the socket's monitor, which reports the handshakes the controller refuses (``Link._watch``).
        self._monitor = None
        sock = self.ctx.socket(zmq.ROUTER if self.routed else zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        # A peer sending more than this in one message is disconnected before it can exhaust our memory.
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if is_ipv6_endpoint(bind if self.routed else controller):
            sock.setsockopt(zmq.IPV6, 1)
        try:
            if self.routed:
                # Fail loudly (EHOSTUNREACH) instead of silently dropping replies to a peer that is gone.
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
                # A client keeps its routing id when it reconnects: if it does so before this side has seen its
                # old connection end, the new one takes the id over. Without this, ZeroMQ leaves the new connection
                # unattached for good, even once the old one is gone: the client hung (tried here).
                sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
                if curve_clients_dir:
                    self._auth = curve_bind_server(self.ctx, sock, curve_secret_key, curve_clients_dir)
                check_ipc_free(bind, "the worker's --bind")  # not another process's ipc:// address
                try:
                    sock.bind(bind)
                except zmq.ZMQError as e:
                    raise errors.bind_error("the worker", bind, e.errno, zmq.strerror(e.errno)) from None
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.setsockopt(zmq.ROUTING_ID, core.worker_id.encode())
                # Queue nothing while the controller is away: stale Hellos would arrive in a burst, and replies
                # the controller can no longer match are better dropped here, their generations aborted, at once.
                sock.setsockopt(zmq.IMMEDIATE, 1)
                if curve_server_key:
                    curve_client(sock, curve_server_key, curve_secret_key)
                self._monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
                self._monitor.setsockopt(zmq.LINGER, 0)
                sock.connect(controller)
                self.endpoint = controller
        except BaseException:
            _close(None, None, sock, self._auth, self.ctx, monitor=self._monitor)
            raise
        # The pipe: the engine's end never refuses a reply (the network socket's high-water mark is the bound that
        # counts: an inproc pipe is unbounded when either end's limit is 0); towards the engine it holds at most
        # 2 * hwm requests not read yet (ZeroMQ adds the sender's and the receiver's limits).
        self._pipe = self.ctx.socket(zmq.PAIR)
        link_end = self.ctx.socket(zmq.PAIR)
        for s, snd, rcv in ((self._pipe, 0, hwm), (link_end, hwm, 0)):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, snd)
            s.setsockopt(zmq.RCVHWM, rcv)
        name = f"inproc://worker-link-{id(self)}"
        link_end.bind(name)
        self._pipe.connect(name)
        self._link = Link(sock, link_end, routed=self.routed, endpoint=self.endpoint, hello=self.hello(),
                          heartbeat_interval_s=heartbeat_interval_s, peer_timeout_s=peer_timeout_s,
                          max_messages_per_drain=max_messages_per_drain, max_queued_bytes=max_queued_bytes,
                          monitor=self._monitor,
                          curve=bool(curve_server_key))
        self._thread = threading.Thread(target=self._link.run, name="worker-link", daemon=True)
        self._finalizer = weakref.finalize(self, _close, self._thread, self._pipe, sock, self._auth, self.ctx,
                                           link_end, monitor=self._monitor, bound=self.routed and self.endpoint)
        # exit_with_parent: True (the parent at this moment) or the pid the parent must have: a spawner passes its
        # own, since this runs seconds after the process began (imports, the pool), and a parent that died
        # meanwhile has left pid 1 or a subreaper here, which would look like a live parent for ever (found in
        # review: workers outlived a `warmserve serve` stopped during start-up).
        if exit_with_parent is None or exit_with_parent is False:
            self.parent_pid = None
        elif exit_with_parent is True or exit_with_parent == 0:
            self.parent_pid = os.getppid()
        else:
            self.parent_pid = int(exit_with_parent)
        self.malformed = 0
        self._malformed_said_s, self._malformed_said = -math.inf, 0  # when malformed messages were last logged
        #: Bound: peer -> (why it was given up on, the request ids of its generations aborted then), oldest first.
        self._dropped: collections.OrderedDict[bytes, tuple[str, list[int]]] = collections.OrderedDict()
        self._numbering = TokensNumbering()
        #: Draining (SIGTERM, ``drain``; when it ends: ``core.drain_until_s``): whether the controller was told yet.
        self._drain_told = False
        core.emit = self._send

    def hello(self) -> P.Hello:
        pool = self.core.pool
        return P.Hello(
            worker_id=self.core.worker_id, device=self.core.device, pid=os.getpid(), endpoint=self.endpoint,
            capacity_bytes=int(pool.total_bytes), page_bytes=int(pool.page_bytes), host=self.host_name,
            protocol_version=P.PROTOCOL_VERSION, heartbeat_interval_s=self.heartbeat_interval_s,
        )

    # ------------------------------------------------------------------ the engine loop

    def serve_forever(self) -> None:
        self._thread.start()
        poller = zmq.Poller()
        poller.register(self._pipe, zmq.POLLIN)
        next_beat = 0.0
        # a failure that holds would log a trace at every round (thousands a second while busy): once, then counted
        failures = {k: RepeatedFailure(log, k) for k in ("worker tick", "worker heartbeat")}
        while not self.core.stopping:
            now = time.monotonic()
            if self.core.busy():
                timeout_ms = 0
            else:
                idle_ms = 5 if self.core.loading() else 50
                timeout_ms = max(0, min(idle_ms, int((next_beat - now) * 1000)))
            if poller.poll(timeout_ms):
                self._read_pipe()
            if self.core.stopping:
                break
            try:
                self.core.tick()
            except Exception as e:  # a bug in one tick must not take the worker (and every model in it) down
                failures["worker tick"].failed(e)
            self._link.in_flight = len(self.core.generations)
            if self.core.drain_until_s is not None and self._drained():
                break
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval_s
                try:
                    self._beat()
                except Exception as e:  # as for tick: a failed Stats must not end the worker (found in review)
                    failures["worker heartbeat"].failed(e)
        if self.core.drain_until_s is not None or self.core.stop_signalled:  # its drain ends here (done, time up, a
            # second SIGTERM), or a SIGTERM stops it: said, so that the controller takes its leaving, and what it
            # aborts now, as planned, not as a crash (WorkerRecord.left_by_plan)
            if self.core.drain_until_s is not None:
                self.core.drain_until_s = time.monotonic()
            try:
                self._beat()
            except Exception:
                log.exception("worker heartbeat failed")
        # A worker on its way out is no worker to admit again.
        self._link.stopping = True
        # Abort what is left (SIGTERM) while the link can still tell the peers, then stop the link.
        self.core.close()
        self.close()

    def drain(self, timeout_s: float) -> bool:
        """Begin a drain (SIGTERM: a container stop, a pod eviction): the controller hears of it in the next Stats
        and sends no new work; the generations in flight finish for up to ``timeout_s``, then the loop ends, and
        closing aborts what is left, which the controller starts over elsewhere (as after a loss). False, nothing
        begun: the caller stops at once. So it is for a second SIGTERM, a ``timeout_s`` of 0, a bound worker (no
        controller routes its clients away), and a rank of a tensor-parallel instance: its instance serves on the
        other ranks' GPUs too, which the controller would take for free while this one drains. Called from the
        signal handler, on the loop's own thread between two of its bytecodes: it sets flags and reads only."""
        if self.routed or timeout_s <= 0 or self.core.drain_until_s is not None:
            return False
        if any(inst.tp is not None for inst in list(self.core.instances.values())):
            return False
        self.core.drain_until_s = time.monotonic() + timeout_s
        self.core.draining = True
        return True

    def _drained(self) -> bool:
        """Draining: whether the loop may end now (every generation over, or the drain's time up)."""
        if not self._drain_told:  # now, not at the next beat: until the controller hears, it routes here
            self._drain_told = True
            self._link.draining = True
            log.warning("SIGTERM: draining %d request(s) in flight for up to %.3g s (a second SIGTERM stops at "
                        "once); the controller sends no new work", len(self.core.generations),
                        self.core.drain_until_s - time.monotonic())
            self._beat()
        if not self.core.generations:
            log.info("drained: every request in flight has finished; stopping")
            return True
        if time.monotonic() >= self.core.drain_until_s:
            log.warning("drain time is up with %d request(s) still in flight: aborting them (the controller starts "
                        "them over elsewhere); stopping", len(self.core.generations))
            return True
        return False

    def _read_pipe(self) -> None:
        for _ in range(self.max_messages_per_drain):
            try:
                frames = self._pipe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            op, peer = frames[0], frames[1]
            if op == GONE:
                self._drop_peer(peer, frames[2].decode())
                continue
            payload = frames[2:]
            # Read: its bytes leave the link's budget (``Link.max_queued_bytes``; only this thread writes it).
            self._link.engine_read_bytes += queued_cost(payload)
            if peer in self._dropped:
                self._tell_dropped(peer)
            if len(payload) != 1:
                self._malformed(peer, b"".join(payload), f"{len(payload)} frames, expected 1")
                continue
            try:
                msg = P.decode_request(payload[0])
            except errors.ProtocolError as e:
                self._malformed(peer, payload[0], e)
                continue
            self.core.handle(peer, msg)
            if self.core.stopping:
                return

    def _drop_peer(self, peer: bytes, why: str) -> None:
        ids = self.core.drop_peer(peer)
        self._numbering.forget(peer, ids)
        if not ids:
            return
        log.warning("peer %r %s: aborted %d generations", peer, why, len(ids))
        if self.routed:
            _, before = self._dropped.pop(peer, ("", []))
            self._dropped[peer] = (why, before + ids)
            while len(self._dropped) > _MAX_DROPPED_PEERS:
                self._dropped.popitem(last=False)

    def _tell_dropped(self, peer: bytes) -> None:
        why, ids = self._dropped.pop(peer)
        wid = self.core.worker_id
        for id in ids:
            self._send(peer, P.Error.of(id, errors.WorkerLostError(
                f"worker {wid} aborted request {id}: it gave up on this client ({why}); the connection was re-made "
                f"since, so send the request again", request_id=id, worker_id=wid)))

    def _malformed(self, peer, data: bytes, why) -> None:
        """Answer a message that is no request with an Error; logged once a minute at most, with a count (found
        in review: a worker whose --controller named the HTTP port logged ~6 a second, for ever)."""
        self.malformed += 1
        err = why if isinstance(why, errors.ProtocolError) else errors.ProtocolError(
            f"malformed request: {why}", size_bytes=len(data))
        now = time.monotonic()
        if now - self._malformed_said_s >= MALFORMED_LOG_EVERY_S:
            hint = "" if self.routed else (": is --controller the controller's worker endpoint (the workers_endpoint "
                                           "`warmserve serve` prints), not its HTTP port?")
            log.warning("malformed message from %r (%d since the last said): %s%s", peer,
                        self.malformed - self._malformed_said, err, hint)
            self._malformed_said_s, self._malformed_said = now, self.malformed
        self._send(peer, P.Error.of(P.request_id_of(data), err))

    def _beat(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("parent process %d is gone: shutting down", self.parent_pid)
            self.core.close()
            self.core.stopping = True
            return
        if not self.routed and self._link.controller_heard:
            # The controller keeps its view of pages and KV current from these (they count as heartbeats). Liveness
            # does not hang on them: a Stats that fails (found in review: at every beat) leaves the link to send a
            # Heartbeat once an interval has passed with nothing sent.
            self._send(CONTROLLER, self.core.stats(0))

    def _send(self, peer, msg) -> None:
        if self._pipe.closed:  # after close(): nobody is left to read it
            return
        # Never blocks: the engine's end of the pipe has no high-water mark; the link applies the network's.
        self._pipe.send_multipart([SEND, peer, P.encode(self._numbering.stamp(peer, msg))], zmq.NOBLOCK)

    def close(self) -> None:
        """Let the link send what is queued (Shutdown's Ok) for up to a second, then close every socket."""
        self._finalizer()


def _close(thread, pipe, sock, auth, ctx, link_end=None, monitor=None, bound=None) -> None:
    if thread is not None and thread.is_alive():
        pipe.send_multipart([STOP])
        thread.join(FLUSH_S + 5.0)
    elif sock is not None and not sock.closed:  # the link never ran: its sockets are still ours
        sock.close(linger=0)
        if monitor is not None:
            monitor.close(linger=0)
    if link_end is not None and not link_end.closed and (thread is None or not thread.is_alive()):
        link_end.close()
    if pipe is not None:
        pipe.close(linger=0)
    if auth is not None:
        auth.stop()
    if thread is not None and thread.is_alive():
        log.warning("the worker's link thread did not stop within %.0f s; leaving its sockets open", FLUSH_S + 5)
        return
    ctx.term()
    remove_ipc_file(bound)  # ZeroMQ leaves an ipc:// socket's file behind (found in review; the hub's too)
