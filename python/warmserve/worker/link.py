"""The worker's link thread (``Link``): it owns the network socket and one end of an inproc pipe to the engine loop.

It forwards every message from the network into the pipe and every message from the pipe to the network, tracks
when each peer was last heard, keeps the heartbeat clock, and says Hello, Rejoin's Hello and the start id
(``Heartbeat.start_id``, ``first_id``). Why a thread of its own, the pipe's bounds, and what a peer given up on is
told: the docstring of ``server.py``, which starts it. It holds no reference to the server or the core.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import time

import msgspec
import zmq

from .. import protocol as P
from ..controller.errors import OverloadedError
from ..errors import fmt_bytes
from ..protocol_peek import leading_request_id
from ..security import KEY_CLASH_MARK, uses_throwaway_key

log = logging.getLogger("warmserve.worker")

CONTROLLER = b"controller"
# Pipe frames. Link -> engine: [MSG, peer, *payload] and [GONE, peer, why]. Engine -> link: [SEND, peer, data]
# and [STOP] (after which the link flushes, closes its sockets and ends).
MSG, GONE, SEND, STOP = b"m", b"g", b"s", b"q"
#: Seconds between two log lines of failed sends (a peer gone or not reading fails every send until it is dropped).
SEND_FAILED_LOG_EVERY_S = 10.0
#: What a controller that lost this worker says to it (``protocol.Rejoin``: always these bytes).
_REJOIN = P.encode(P.Rejoin())
#: Seconds the link waits for its last replies (Shutdown's Ok) to leave when it stops.
FLUSH_S = 1.0
#: Seconds a connected worker waits for a word from its controller before saying so at WARNING, and at least between
#: two such warnings (``Link._warn_silent``); before that a note at INFO, as a controller starting later is normal.
CONTROLLER_SILENT_WARN_S = 15.0
CONTROLLER_SILENT_REPEAT_S = 300.0
#: A handshake that failed with one of these broke on the network, or (CURVE on) was cut by a controller that could
#: not read it: one whose public key is not --curve-server-key, or a --curve-secret-key not the pair of its public key.
_BROKEN = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)
#: CURVE on: handshakes broken in a row, none succeeding, after which the keys are logged at ERROR as their likely
#: cause. A network fault breaks some; a controller that cannot decrypt this worker's handshake breaks every one
#: (ZeroMQ retries every 0.1-1 s).
BROKEN_IS_KEYS_AFTER = 3
#: Bytes of requests a worker holds unread by default (``--max-queued-mib``): four messages of the largest size
#: (WorkerServer's ``max_message_bytes``), or hundreds of prompts of a 128k-token context.
DEFAULT_MAX_QUEUED_BYTES = 256 << 20
#: Messages up to this size are refused only past twice the byte budget (``Link.max_queued_bytes``): Abort,
#: Heartbeat, Shutdown, GetStats and the like, which free memory or keep a peer alive, pass a queue full of prompts.
ALWAYS_PASS_BYTES = 1024
#: What a message queued unread counts for at least, bytes: its frames' bytes and ZeroMQ's and Python's records of
#: it, so that a flood of empty messages is bounded by the budget too.
MESSAGE_COST_BYTES = 256
#: How every encoded Heartbeat begins after its map header (msgspec writes the tag first).
_HEARTBEAT_TAG = b"\xa3msg\xa9Heartbeat"


def queued_cost(payload: list[bytes]) -> int:
    """What a message queued for the engine counts towards the budget: added by the link as it queues it, taken
    off by the engine loop as it reads it (``WorkerServer._read_pipe``)."""
    return max(sum(len(f) for f in payload), MESSAGE_COST_BYTES)


class Link:
    """The link thread's state and loop; it holds no reference to the server or the core."""

    def __init__(self, sock, pipe, *, routed: bool, endpoint: str, hello: P.Hello, heartbeat_interval_s: float,
                 peer_timeout_s: float, max_messages_per_drain: int, max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
                 monitor=None, curve: bool = False):
        self.sock, self.pipe, self.monitor, self.curve = sock, pipe, monitor, curve
        #: A refused handshake was logged and none has succeeded since (``_watch``).
        self._refused = False
        self._broke_told = False  # a handshake broken by the network was logged (until one succeeds)
        self._broken = 0  # handshakes broken (``_BROKEN``) since the last one that succeeded
        self._id_refused = False  # its worker id belongs to another CURVE key (``_id_taken``)
        #: The reasons the controller gave for refusing this worker (``Refused``), each logged once.
        self._refusals: set[str] = set()
        self.routed, self.endpoint, self.hello = routed, endpoint, hello
        self.heartbeat_interval_s, self.peer_timeout_s = heartbeat_interval_s, peer_timeout_s
        self.max_messages_per_drain = max_messages_per_drain
        #: Bytes of requests in the pipe (and the backlog) not read by the engine loop yet, past which a message
        #: over ALWAYS_PASS_BYTES is refused unread: the pipe's count bound alone let 100 prompts of 32 MB hold
        #: ~2.1 GB of the worker while an engine step ran (found in review). Queued: forwarded_bytes, written by
        #: the link only, less engine_read_bytes, written by the engine loop only (ints, stored whole).
        self.max_queued_bytes = max_queued_bytes
        self.forwarded_bytes = 0
        self.engine_read_bytes = 0
        #: Messages refused for the byte budget.
        self.refused = 0
        self.last_seen: dict[bytes, float] = {}
        self.start_id = os.urandom(8).hex()  # in every Heartbeat: a client tells a restart here by it (client.py)
        self.hello = msgspec.structs.replace(hello, start_id=self.start_id)  # and in the Hello (worker_claims.py)
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
        #: Written by the engine loop when a drain begins (SIGTERM): no Hello from then on, since a controller that
        #: lost this worker would admit it again, and send it work, as it leaves.
        self.draining = False
        self._controller_unreachable = False
        self._send_failed_said_s = -math.inf  # when a failed send was last logged (SEND_FAILED_LOG_EVERY_S)
        #: Connected: when the controller last said anything, or the link started (monotonic s), and when its
        #: silence was last logged at WARNING (``_warn_silent``).
        self._heard_s, self._silent_warned_s = time.monotonic(), -math.inf
        #: Connected: when the connection to the controller was last made anew (``_connect_again``; monotonic s).
        self._connected_s = time.monotonic()
        #: Connected: no Hello has gone out since the start, or since the controller was given up on (its
        #: generations aborted). Found in review: a second process started under a live worker's --worker-id had its
        #: first Hello refused (not connected yet), then heard the controller's heartbeats to the first (ROUTER
        #: handover gave it the id) and never said Hello: the controller routed to it as to the first, for good.
        self._owe_hello = not routed
        #: Messages for the engine that the pipe (full at 2 * hwm) has not taken yet, in order: requests (their bytes
        #: under the budget, ``_over_budget``) and the peers given up on meanwhile.
        self._backlog: collections.deque[list[bytes]] = collections.deque()

    def run(self) -> None:
        poller = zmq.Poller()
        next_beat = 0.0
        try:
            while True:
                # While the pipe is full, wait for room in it too, and read the network on: what it brings waits in
                # the backlog, under the byte budget (``_over_budget``). Found in review: reading no more left
                # ZeroMQ's own queue to fill, with up to hwm messages of 64 MiB per peer that no budget saw.
                poller.register(self.pipe, zmq.POLLIN | (zmq.POLLOUT if self._backlog else 0))
                poller.register(self.sock, zmq.POLLIN)
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
                if events.get(self.sock, 0) & zmq.POLLIN:
                    self._from_network()
                if events.get(self.monitor, 0) & zmq.POLLIN:
                    self._watch()
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.heartbeat_interval_s
                    self._beat(now)
                if now >= self._heartbeat_due_s():
                    self._send_out(CONTROLLER, self._heartbeat())
        except zmq.ContextTerminated:
            return
        finally:
            self.sock.close(linger=int(FLUSH_S * 1000))
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
                self._refused = self._broke_told = False
                self._broken = 0
                continue
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and event["value"] in _BROKEN:
                self._handshake_broke(event["value"])
                continue
            if self._refused:
                continue
            self._refused = True
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                why = f"status {int(event['value'])}: {self._unlisted()}"
            elif self.curve:
                why = ("the handshake failed: --curve-server-key may not be the public key of the controller's "
                       "DIR/server.key_secret, or the controller runs without CURVE")
            else:
                why = ("the handshake failed: the controller may use CURVE (--curve-dir): pass --curve-server-key "
                       "and --curve-secret-key; or --controller is not its worker endpoint (the workers_endpoint "
                       "`warmserve serve` prints), e.g. its HTTP port")
            log.error("the controller at %s refused this worker's key (%s); trying again", self.endpoint, why)

    def _handshake_broke(self, err: int) -> None:
        """The connection broke part way through its handshake: a network fault or a proxy (found in review: logged
        as a refusal, at ERROR, sending operators after a CURVE problem there was not); or, CURVE on, a controller
        that cut it since it could not decrypt it (found in review: a wrong --curve-server-key, or a forged key
        pair, was only this WARNING and then `check --controller`, never the ERROR README promises)."""
        self._broken += 1
        name = errno.errorcode.get(err, err)
        if self.curve and self._broken >= BROKEN_IS_KEYS_AFTER and not self._refused:
            self._refused = True
            log.error("the controller at %s refused this worker's key (its handshake broke %d times in a row, %s, "
                      "none succeeding: --curve-server-key is likely not the controller's public key (the public "
                      "half of its DIR/server.key_secret), or --curve-secret-key not the pair of the public key "
                      "listed in its DIR/workers/; else the network); trying again", self.endpoint, self._broken,
                      name)
            return
        if self._broke_told:
            return
        self._broke_told = True
        keys = (", or the CURVE keys do not fit the controller's: --curve-server-key, --curve-secret-key"
                if self.curve else "")
        log.warning("the connection to the controller at %s broke during its handshake (%s: the network, or "
                    "--controller is not the workers_endpoint `warmserve serve` prints%s); trying again",
                    self.endpoint, name, keys)

    def _unlisted(self) -> str:
        """Why a controller's authenticator refuses this worker's key, naming only the flags given (found in
        review: a worker given no --curve-secret-key was told the public half of that flag was not listed)."""
        if uses_throwaway_key(self.sock):
            return ("this worker has no --curve-secret-key, so it uses a throwaway key pair made at its start, which "
                    "no controller lists: make it a key pair (zmq.auth.create_certificates), put the public .key in "
                    "the controller's --curve-dir DIR/workers/, restart the controller, and pass the .key_secret as "
                    "--curve-secret-key")
        return ("the public half of --curve-secret-key is not in the controller's --curve-dir DIR/workers/, or was put "
                "there after the controller started (it reads them at start)")

    def _id_taken(self, reason: str) -> None:
        """The controller refused this worker's CURVE key under its --worker-id, which another key joined with
        (``controller/hub_sockets.py`` ``KeyClashes``). Found in review: this process, connecting anew each
        --peer-timeout-s, took the id back from the worker that owns it (ZeroMQ gives an id to its newest
        connection) a second after that worker did, so it was never admitted again while this one ran; and this one
        only logged a WARNING. Now an ERROR, and no new connection: the owner's next one keeps the id."""
        self._refused = self._id_refused = True  # refused: no `check --controller` warnings (``_warn_silent``)
        if reason not in self._refusals:
            self._refusals.add(reason)
            log.error("the controller at %s refused this worker: %s. It no longer connects anew (that would cut the "
                      "worker that owns the id off again): stop it and start it with its own --worker-id",
                      self.endpoint, reason)

    def _from_engine(self) -> bool:
        """Send what the engine queued; False once it asked the link to stop."""
        for _ in range(self.max_messages_per_drain):
            try:
                frames = self.pipe.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            if frames[0] == STOP:
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
                peer, payload = CONTROLLER, frames
                self._heard_s = time.monotonic()
                if payload == [_REJOIN]:
                    self._rejoin()
                    self._flush()
                    continue
                reason = P.refused_reason(payload[0]) if len(payload) == 1 else None
                if reason is not None:  # not an answer: Hello goes on each beat (see the module's docstring)
                    if KEY_CLASH_MARK in reason:
                        self._id_taken(reason)
                    elif reason not in self._refusals:
                        self._refusals.add(reason)
                        log.warning("the controller at %s refused this worker: %s (saying Hello each heartbeat: a "
                                    "controller that can admit it will)", self.endpoint, reason)
                    continue
                self.controller_heard = True
                self._id_refused = False  # admitted (a controller started again): connect anew when it goes silent
                if self._owe_hello:  # now, not at the next beat: see the module's docstring
                    self._say_hello()
            if self.routed and peer not in self.first_id:  # start_id and first_id before any reply (client.py)
                # From its first bytes: request_id_of walked the whole message here, 0.26 s for a first message of
                # a 60 MiB prompt, with no heartbeat sent meanwhile (found in review). The clients give the id first.
                self.first_id[peer] = max(0, leading_request_id(payload[-1])) if payload else 0
                self._send_out(peer, self._heartbeat(peer))
            self.last_seen[peer] = time.monotonic()
            size = sum(len(f) for f in payload)
            if self._over_budget(size):
                self._refuse(peer, payload, size)
                continue  # its bytes are freed here, unread
            self.forwarded_bytes += queued_cost(payload)
            self._backlog.append([MSG, peer, *payload])
            self._flush()

    def _over_budget(self, size: int) -> bool:
        """A message of ``size`` bytes would take the queue past its budget (a small one: past twice it). One
        always passes an empty queue, so that a budget below the largest message (MAXMSGSIZE) refuses none for
        good."""
        queued = self.forwarded_bytes - self.engine_read_bytes
        limit = self.max_queued_bytes * (1 if size > ALWAYS_PASS_BYTES else 2)
        return queued > 0 and queued + max(size, MESSAGE_COST_BYTES) > limit

    def _refuse(self, peer: bytes, payload: list[bytes], size: int) -> None:
        """Answer a message refused for the byte budget, under its id when its first bytes give it."""
        self.refused += 1
        queued = self.forwarded_bytes - self.engine_read_bytes
        if payload[0][1:1 + len(_HEARTBEAT_TAG)] == _HEARTBEAT_TAG:
            return  # never answered (a client's carries its next request's id): its peer was heard all the same
        rid = leading_request_id(payload[0]) if len(payload) == 1 else -1
        err = OverloadedError(
            f"the worker at {self.endpoint} has {fmt_bytes(queued)} of requests queued that it has not read yet; "
            f"this message of {fmt_bytes(size)} would take them past its budget of "
            f"{fmt_bytes(self.max_queued_bytes)}, so it was refused unread: send it again once earlier requests "
            f"are answered, send fewer or smaller ones at a time, or raise the worker's --max-queued-mib",
            request_id=rid, size_bytes=size, queued_bytes=queued, max_queued_bytes=self.max_queued_bytes)
        if self.refused == 1 or self.refused % 1000 == 0:  # a flood is refused message by message: not each logged
            log.warning("refused %d message(s) over the queue's byte budget; the last from %r: %s", self.refused,
                        peer, err.message)
        self._send_out(peer, P.encode(P.Error.of(rid, err)))

    def _flush(self) -> None:
        """Move the backlog into the pipe, in order, as far as the pipe takes it (the rest waits for room)."""
        while self._backlog:
            try:
                self.pipe.send_multipart(self._backlog[0], zmq.NOBLOCK)
            except zmq.Again:  # the engine is hwm requests behind
                return
            self._backlog.popleft()

    def _heartbeat_due_s(self) -> float:
        """Connected and answered: one interval after the last message to the controller (else inf: ``_beat``)."""
        if self.routed or not self.controller_heard:
            return math.inf
        return self.last_sent_s + self.heartbeat_interval_s

    def _beat(self, now: float) -> None:
        if (not self.routed and not self._id_refused
                and now - max(self._heard_s, self._connected_s) > self.peer_timeout_s):
            self._connect_again(now)
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

    def _connect_again(self, now: float) -> None:
        """Connect to the controller anew after ``peer_timeout_s`` without a word from it. Its ROUTER gives this
        worker's id to the newest connection and drops what comes over an older one unread, without closing it: a
        second process started under this --worker-id cut this one off for good, saying Hello into nothing (found
        in review). A new connection takes the id back, and the controller, which knows this process by its start
        id, refuses both with the reason (``controller/worker_claims.py``). Harmless when the controller is down."""
        self._connected_s = now
        log.info("no word from the controller at %s for %.0f s: connecting to it again", self.endpoint,
                 now - self._heard_s)
        try:
            self.sock.disconnect(self.endpoint)
        except zmq.ZMQError:  # not connected now (ENOENT): connect as at the start
            pass
        self.sock.connect(self.endpoint)

    def _warn_silent(self, now: float) -> None:
        """Found in review: a wrong --controller waited for ever without a word at the default log level. Not while
        a handshake is refused: that was logged at ERROR, with its own fix."""
        silent_s, quiet_s = now - self._heard_s, now - self._silent_warned_s
        if self._refused or silent_s < CONTROLLER_SILENT_WARN_S or quiet_s < CONTROLLER_SILENT_REPEAT_S:
            return
        self._silent_warned_s = now
        # Found in review: a controller that cut a CURVE handshake it could not read is silent too, keys and all.
        keys = (", and that --curve-server-key is the controller's public key and --curve-secret-key the pair of a "
                "key in its DIR/workers/" if self.curve else "")
        log.warning("no word from the controller at %s for %.0f s: check --controller (host and port), and that "
                    "`warmserve serve` is running there and reachable from this host%s; saying Hello each heartbeat",
                    self.endpoint, silent_s, keys)

    def _rejoin(self) -> None:
        """The controller lost this worker: give it up as after a failed send (its generations aborted, Hello owed)
        and say Hello now. Only the first ``Rejoin`` counts: those after it were sent before the Hello reached the
        controller, and until it answers the link says Hello each beat anyway."""
        if not self.controller_heard or self.stopping:
            return
        log.warning("the controller at %s declared this worker lost (it was silent too long): %s", self.endpoint,
                    "it drains, so it aborts what it ran and says no Hello" if self.draining else "saying Hello again")
        self._gone(CONTROLLER, "was told this worker was lost")
        self._say_hello()

    def _say_hello(self) -> None:
        if self.draining:
            return
        if self._send_out(CONTROLLER, P.encode(self.hello)):
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
                now = time.monotonic()
                if now - self._send_failed_said_s >= SEND_FAILED_LOG_EVERY_S:  # found in review: hundreds a minute
                    self._send_failed_said_s = now
                    # Found in review: a controller that stopped read as "(Resource temporarily unavailable)" only.
                    why = ("it stopped, the connection broke, or it reads nothing and its queue is full"
                           + ("" if self.draining else "; saying Hello each heartbeat until it answers")
                           if not self.routed and e.errno == zmq.EAGAIN else "")
                    log.warning("cannot send to %s (%s)%s", who, e.strerror, f": {why}" if why else "")
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
        self._backlog.append([GONE, peer, why.encode()])
        self._flush()
