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

- the link thread (``_Link``) owns the network socket and one end of the pipe. It forwards every message from
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
``2 * hwm`` messages, past which the link stops reading the network (ZeroMQ's own high-water mark then pushes back);
at most ``max_messages_per_drain`` messages are read between two engine steps. A peer silent for
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
(``_Link._watch``): a controller restarted with other models, or the worker's version, admits it without a restart
here, and exiting would only have a supervisor start it again into the same refusal.

A connection can also be re-made with no send failing here (a client's new connection takes its routing id over
before this side saw the old one go): what the old one carried is lost and nobody is told. Each generation's
``Tokens`` are numbered as they are sent (``protocol.TokensNumbering``), so the reader sees the gap in the stream
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
from ..endpoints import is_ipv6_endpoint
from ..security import curve_bind_server, curve_client, require_authenticated_bind
from .core import WorkerCore

log = logging.getLogger("warmserve.worker")

_CONTROLLER = b"controller"
# Pipe frames. Link -> engine: [_MSG, peer, *payload] and [_GONE, peer, why]. Engine -> link: [_SEND, peer, data]
# and [_STOP] (after which the link flushes, closes its sockets and ends).
_MSG, _GONE, _SEND, _STOP = b"m", b"g", b"s", b"q"
#: What a controller that lost this worker says to it (``protocol.Rejoin``: always these bytes).
_REJOIN = P.encode(P.Rejoin())
#: How to turn authentication on for a bound worker (the fix named by InsecureBindError).
BIND_FIX = ("pass --curve-secret-key (this worker's certificate) and --curve-clients-dir (the public certificates "
            "of the clients allowed)")
#: Seconds the link waits for its last replies (Shutdown's Ok) to leave when it stops.
_FLUSH_S = 1.0
#: What a connected worker's socket monitor reports (``_Link._watch``).
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
#: Peers whose aborted generation ids a bound worker keeps to tell them (the oldest is forgotten past this).
_MAX_DROPPED_PEERS = 1024
#: Seconds a connected worker waits for a word from its controller before saying so at WARNING, and at least between
#: two such warnings (``_Link._warn_silent``); before that a note at INFO, as a controller starting later is normal.
CONTROLLER_SILENT_WARN_S = 15.0
CONTROLLER_SILENT_REPEAT_S = 300.0


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
        exit_with_parent: bool | int = False,
        curve_server_key: str | None = None,
        curve_secret_key: str | None = None,
        curve_clients_dir: str | None = None,
        insecure: bool = False,
        host_name: str = "",
    ):
        """``host_name``: the machine it tells the controller it runs on (default: this host's name)."""
        if (bind is None) == (controller is None):
            raise errors.InvalidArgumentError("give exactly one of bind= (an endpoint) or controller= (an address)")
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
        #: Connected: the socket's monitor, which reports the handshakes the controller refuses (``_Link._watch``).
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
        self._link = _Link(sock, link_end, routed=self.routed, endpoint=self.endpoint, hello=self.hello(),
                           heartbeat_interval_s=heartbeat_interval_s, peer_timeout_s=peer_timeout_s,
                           max_messages_per_drain=max_messages_per_drain, monitor=self._monitor,
                           curve=bool(curve_server_key))
        self._thread = threading.Thread(target=self._link.run, name="worker-link", daemon=True)
        self._finalizer = weakref.finalize(self, _close, self._thread, self._pipe, sock, self._auth, self.ctx,
                                           link_end, monitor=self._monitor)
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
        #: Bound: peer -> (why it was given up on, the request ids of its generations aborted then), oldest first.
        self._dropped: collections.OrderedDict[bytes, tuple[str, list[int]]] = collections.OrderedDict()
        self._numbering = P.TokensNumbering()
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
        while not self.core.stopping:
            now = time.monotonic()
            if self.core.busy():
                timeout_ms = 0
            else:
                idle_ms = 5 if self.core.loading() else 50
                timeout_ms = max(0, min(idle_ms, int((next_beat - now) * 1000)))
            if poller.poll(timeout_ms):
                self._drain()
            if self.core.stopping:
                break
            try:
                self.core.tick()
            except Exception:  # a bug in one tick must not take the worker (and every model in it) down
                log.exception("worker tick failed")
            self._link.in_flight = len(self.core.generations)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval_s
                try:
                    self._beat()
                except Exception:  # as for tick: a failed Stats must not end the worker (found in review)
                    log.exception("worker heartbeat failed")
        # A worker on its way out is no worker to admit again.
        self._link.stopping = True
        # Abort what is left (SIGTERM) while the link can still tell the peers, then stop the link.
        self.core.close()
        self.close()

    def _drain(self) -> None:
        for _ in range(self.max_messages_per_drain):
            try:
                frames = self._pipe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            op, peer = frames[0], frames[1]
            if op == _GONE:
                self._drop_peer(peer, frames[2].decode())
                continue
            if peer in self._dropped:
                self._tell_dropped(peer)
            payload = frames[2:]
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
        self.malformed += 1
        err = why if isinstance(why, errors.ProtocolError) else errors.ProtocolError(
            f"malformed request: {why}", size_bytes=len(data))
        log.warning("malformed message from %r: %s", peer, err)
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
            self._send(_CONTROLLER, self.core.stats(0))

    def _send(self, peer, msg) -> None:
        if self._pipe.closed:  # after close(): nobody is left to read it
            return
        # Never blocks: the engine's end of the pipe has no high-water mark; the link applies the network's.
        self._pipe.send_multipart([_SEND, peer, P.encode(self._numbering.stamp(peer, msg))], zmq.NOBLOCK)

    def close(self) -> None:
        """Let the link send what is queued (Shutdown's Ok) for up to a second, then close every socket."""
        self._finalizer()


class _Link:
    """The link thread's state and loop; it holds no reference to the server or the core."""

    def __init__(self, sock, pipe, *, routed: bool, endpoint: str, hello: P.Hello, heartbeat_interval_s: float,
                 peer_timeout_s: float, max_messages_per_drain: int, monitor=None, curve: bool = False):
        self.sock, self.pipe, self.monitor, self.curve = sock, pipe, monitor, curve
        #: A refused handshake was logged and none has succeeded since (``_watch``).
        self._refused = False
        #: The reasons the controller gave for refusing this worker (``Refused``), each logged once.
        self._refusals: set[str] = set()
        self.routed, self.endpoint, self.hello = routed, endpoint, hello
        self.heartbeat_interval_s, self.peer_timeout_s = heartbeat_interval_s, peer_timeout_s
        self.max_messages_per_drain = max_messages_per_drain
        self.last_seen: dict[bytes, float] = {}
        self.start_id = os.urandom(8).hex()  # in every Heartbeat: a client tells a restart here by it (client.py)
        self.first_id: dict[bytes, int] = {}  # peer -> its Heartbeat.first_id
        #: Written by the link, read by the engine loop: the controller has said something since the last Hello.
        self.controller_heard = False
        #: Written by the engine loop: its generations in flight.
        self.in_flight = 0
        #: Connected: when a message last went out to the controller (monotonic s), whoever queued it (a Stats, a
        #: reply, a Hello, a Heartbeat); the link's own, as its socket is (``_heartbeat_due_s``).
        self.last_sent_s = time.monotonic()
        #: Written by the engine loop once it has left its loop (the worker is stopping).
        self.stopping = False
        self._controller_unreachable = False
        #: Connected: when the controller last said anything, or the link started (monotonic s), and when its
        #: silence was last logged at WARNING (``_warn_silent``).
        self._heard_s, self._silent_warned_s = time.monotonic(), -math.inf
        #: Connected: no Hello has gone out since the start, or since the controller was given up on (its
        #: generations aborted). Found in review: a second process started under a live worker's --worker-id had its
        #: first Hello refused (not connected yet), then heard the controller's heartbeats to the first (ROUTER
        #: handover gave it the id) and never said Hello: the controller routed to it as to the first, for good.
        self._owe_hello = not routed
        #: Messages for the engine that the pipe (full at hwm) has not taken yet, in order: at most one request
        #: (no more are read meanwhile) and the peers given up on meanwhile.
        self._backlog: collections.deque[list[bytes]] = collections.deque()

    def run(self) -> None:
        poller = zmq.Poller()
        next_beat = 0.0
        try:
            while True:
                # While the pipe is full, read no more from the network (ZeroMQ's high-water mark pushes back
                # on peers then) and wait for room in the pipe instead.
                poller.register(self.pipe, zmq.POLLIN | (zmq.POLLOUT if self._backlog else 0))
                poller.register(self.sock, 0 if self._backlog else zmq.POLLIN)
                if self.monitor is not None:
                    poller.register(self.monitor, zmq.POLLIN)
                # Rounded up: woken at the deadline, not spinning through the last millisecond before it.
                wake_s = min(next_beat, self._heartbeat_due_s())
                timeout_ms = max(0, math.ceil((wake_s - time.monotonic()) * 1000))
                events = dict(poller.poll(timeout_ms))
                if events.get(self.pipe, 0) & zmq.POLLIN and not self._from_engine():
                    return
                if self._backlog:
                    self._flush()
                elif events.get(self.sock, 0) & zmq.POLLIN:
                    self._from_network()
                if events.get(self.monitor, 0) & zmq.POLLIN:
                    self._watch()
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.heartbeat_interval_s
                    self._beat(now)
                if now >= self._heartbeat_due_s():
                    self._send_out(_CONTROLLER, self._heartbeat())
        except zmq.ContextTerminated:
            return
        finally:
            self.sock.close(linger=int(_FLUSH_S * 1000))
            self.pipe.close()
            if self.monitor is not None:
                self.monitor.close(linger=0)

    def _watch(self) -> None:
        """Log a handshake the controller refused, once until one succeeds; ZeroMQ tries again by itself, and so
        does the worker: a controller restarted with this worker's key listed admits it. Found in review: a worker
        with a key not listed, or none, was refused without a word and retried for ever."""
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._refused = False
                continue
            if self._refused:
                continue
            self._refused = True
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                why = (f"status {int(event['value'])}: the public half of --curve-secret-key is not in the "
                       "controller's --curve-dir DIR/workers/, or was put there after the controller started (it "
                       "reads them at start)")
            elif self.curve:
                why = ("the handshake failed: --curve-server-key may not be the public key of the controller's "
                       "DIR/server.key_secret, or the controller runs without CURVE")
            else:
                why = ("the handshake failed: the controller may use CURVE (--curve-dir): pass --curve-server-key "
                       "and --curve-secret-key")
            log.error("the controller at %s refused this worker's key (%s); trying again", self.endpoint, why)

    def _from_engine(self) -> bool:
        """Send what the engine queued; False once it asked the link to stop."""
        for _ in range(self.max_messages_per_drain):
            try:
                frames = self.pipe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            if frames[0] == _STOP:
                return False
            self._send_out(frames[1], frames[2])
        return True

    def _from_network(self) -> None:
        for _ in range(self.max_messages_per_drain):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.routed:
                peer, payload = frames[0], frames[1:]
            else:
                peer, payload = _CONTROLLER, frames
                self._heard_s = time.monotonic()
                if payload == [_REJOIN]:
                    self._rejoin()
                    if not self._flush():
                        return
                    continue
                reason = P.refused_reason(payload[0]) if len(payload) == 1 else None
                if reason is not None:  # not an answer: Hello goes on each beat (see the module's docstring)
                    if reason not in self._refusals:
                        self._refusals.add(reason)
                        log.warning("the controller at %s refused this worker: %s (saying Hello each heartbeat: a "
                                    "controller that can admit it will)", self.endpoint, reason)
                    continue
                self.controller_heard = True
                if self._owe_hello:  # now, not at the next beat: see the module's docstring
                    self._say_hello()
            if self.routed and peer not in self.first_id:  # start_id and first_id before any reply (client.py)
                self.first_id[peer] = max(0, P.request_id_of(payload[-1])) if payload else 0
                self._send_out(peer, self._heartbeat(peer))
            self.last_seen[peer] = time.monotonic()
            self._backlog.append([_MSG, peer, *payload])
            if not self._flush():
                return

    def _flush(self) -> bool:
        """Move the backlog into the pipe, in order; False while the pipe is full."""
        while self._backlog:
            try:
                self.pipe.send_multipart(self._backlog[0], zmq.NOBLOCK)
            except zmq.Again:  # the engine is hwm requests behind
                return False
            self._backlog.popleft()
        return True

    def _heartbeat_due_s(self) -> float:
        """Connected and answered: one interval after the last message to the controller (else inf: ``_beat``)."""
        if self.routed or not self.controller_heard:
            return math.inf
        return self.last_sent_s + self.heartbeat_interval_s

    def _beat(self, now: float) -> None:
        if not self.routed and not self.controller_heard:
            self._say_hello()
            self._warn_silent(now)
        for peer, seen in list(self.last_seen.items()):
            if now - seen > self.peer_timeout_s:
                self._gone(peer, f"silent for {now - seen:.0f} s")
                continue
            if self.routed:  # connected: by the last message sent instead (``_heartbeat_due_s``)
                self._send_out(peer, self._heartbeat(peer))

    def _heartbeat(self, peer: bytes = b"") -> bytes:
        return P.encode(P.Heartbeat(time_s=time.time(), in_flight=self.in_flight, start_id=self.start_id,
                                    first_id=self.first_id.get(peer, 0)))

    def _warn_silent(self, now: float) -> None:
        """Found in review: a wrong --controller waited for ever without a word at the default log level. Not while
        a handshake is refused: that was logged at ERROR, with its own fix."""
        silent_s, quiet_s = now - self._heard_s, now - self._silent_warned_s
        if self._refused or silent_s < CONTROLLER_SILENT_WARN_S or quiet_s < CONTROLLER_SILENT_REPEAT_S:
            return
        self._silent_warned_s = now
        log.warning("no word from the controller at %s for %.0f s: check --controller (host and port), and that "
                    "`warmserve serve` is running there and reachable from this host; saying Hello each heartbeat",
                    self.endpoint, silent_s)

    def _rejoin(self) -> None:
        """The controller lost this worker: give it up as after a failed send (its generations aborted, Hello owed)
        and say Hello now. Only the first ``Rejoin`` counts: those after it were sent before the Hello reached the
        controller, and until it answers the link says Hello each beat anyway."""
        if not self.controller_heard or self.stopping:
            return
        log.warning("the controller at %s declared this worker lost (it was silent too long): saying Hello again",
                    self.endpoint)
        self._gone(_CONTROLLER, "was told this worker was lost")
        self._say_hello()

    def _say_hello(self) -> None:
        if self._send_out(_CONTROLLER, P.encode(self.hello)):
            self._owe_hello = False

    def _send_out(self, peer: bytes, data: bytes) -> bool:
        """Send without blocking; False when it failed (the peer is given up on if it was known)."""
        try:
            if self.routed:
                self.sock.send_multipart([peer, data], zmq.NOBLOCK)
            else:
                self.sock.send(data, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            # Gone (EHOSTUNREACH), not reading (EAGAIN at the high-water mark), or, for a controller, not connected
            # (yet, or refused by CURVE): nobody will read the rest.
            if self.routed or self.controller_heard or peer in self.last_seen:
                who = f"the controller at {self.endpoint}" if not self.routed else f"peer {peer!r}"
                log.warning("cannot send to %s (%s)", who, e.strerror)
            elif not self._controller_unreachable:  # a controller not connected yet is normal at start: say it once
                log.info("the controller at %s is not reachable yet (%s); saying Hello each heartbeat",
                         self.endpoint, e.strerror)
            # A controller never heard from (or given up on already) has no generations here to abort.
            if self.routed or self.controller_heard or peer in self.last_seen:
                self._gone(peer, f"unreachable ({e.strerror})")
            self._controller_unreachable = not self.routed
            return False
        self._controller_unreachable = False
        if not self.routed:
            self.last_sent_s = time.monotonic()
        return True

    def _gone(self, peer: bytes, why: str) -> None:
        """Tell the engine loop to abort the peer's generations (it owns them). A connected worker whose
        controller is gone says Hello again each heartbeat until one answers: the controller takes nothing else
        from a worker it does not know (found in review: after a failed send it only pushed Stats, forever)."""
        self.last_seen.pop(peer, None)
        self.first_id.pop(peer, None)
        if not self.routed:
            self.controller_heard = False
            self._owe_hello = True
        self._backlog.append([_GONE, peer, why.encode()])
        self._flush()


def _close(thread, pipe, sock, auth, ctx, link_end=None, monitor=None) -> None:
    if thread is not None and thread.is_alive():
        pipe.send_multipart([_STOP])
        thread.join(_FLUSH_S + 5.0)
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
        log.warning("the worker's link thread did not stop within %.0f s; leaving its sockets open", _FLUSH_S + 5)
        return
    ctx.term()
