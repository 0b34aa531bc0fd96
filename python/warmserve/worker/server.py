"""The worker's ZeroMQ loop: one socket, one thread, engine steps interleaved with socket polling.

Two ways to be reached:
- bind (tests, local workers spawned by a controller): a ROUTER on ``endpoint``; each connected DEALER is a peer,
  known by its routing id.
- connect (workers on other hosts): a DEALER connected to the controller's ROUTER; the one peer is the controller.
  The worker says ``Hello`` every heartbeat until the controller has said anything, so a controller that starts
  later, or restarts, learns about it.

Bounds: a message over ``max_message_bytes`` drops its connection; sends never block (a peer whose queue is full
past ``hwm`` messages, or that is gone, has its generations aborted); every poll has a timeout (0 while engines
have work, so stepping never waits on the socket); at most ``max_batch`` messages are read between two engine
steps. Heartbeats go both ways: a peer silent for ``peer_timeout_s`` has its generations aborted, so a dead
client does not hold KV blocks. A malformed message gets a ``ProtocolError`` reply and the loop goes on.
"""

from __future__ import annotations

import logging
import os
import time
import weakref

import zmq

from .. import errors
from .. import protocol as P
from .core import WorkerCore

log = logging.getLogger("warmserve.worker")

_CONTROLLER = b"controller"


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
        max_batch: int = 256,
        max_message_bytes: int = 64 << 20,
        exit_with_parent: bool = False,
        curve_server_key: str | None = None,
        curve_secret_key: str | None = None,
    ):
        if (bind is None) == (controller is None):
            raise errors.InvalidArgumentError("give exactly one of bind= (an endpoint) or controller= (an address)")
        self.core = core
        core.emit = self._send
        self.heartbeat_interval_s = heartbeat_interval_s
        self.peer_timeout_s = peer_timeout_s
        self.max_batch = max_batch
        self.ctx = zmq.Context()
        self.routed = bind is not None
        self.sock = self.ctx.socket(zmq.ROUTER if self.routed else zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        # A peer sending more than this in one message is disconnected before it can exhaust our memory.
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if self.routed:
            # Fail loudly (EHOSTUNREACH) instead of silently dropping replies to a peer that is gone.
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.sock.bind(bind)
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.sock.setsockopt(zmq.ROUTING_ID, core.worker_id.encode())
            # Queue nothing while the controller is away: stale Hellos would arrive in a burst, and replies the
            # controller can no longer match are better dropped here, their generations aborted, at once.
            self.sock.setsockopt(zmq.IMMEDIATE, 1)
            if curve_server_key:
                _curve_client(self.sock, curve_server_key, curve_secret_key)
            self.sock.connect(controller)
            self.endpoint = controller
        self._finalizer = weakref.finalize(self, _close, self.sock, self.ctx)
        self.last_seen: dict[object, float] = {}
        self.controller_heard = False
        self.parent_pid = os.getppid() if exit_with_parent else None
        self.malformed = 0
        self._controller_unreachable = False

    def hello(self) -> P.Hello:
        pool = self.core.pool
        return P.Hello(
            worker_id=self.core.worker_id, device=self.core.device, pid=os.getpid(), endpoint=self.endpoint,
            capacity_bytes=int(pool.total_bytes), page_bytes=int(pool.page_bytes),
        )

    # ------------------------------------------------------------------ loop

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
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
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval_s
                self._beat(now)
        self.close()

    def _drain(self) -> None:
        for _ in range(self.max_batch):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.routed:
                peer, payload = frames[0], frames[1:]
            else:
                peer, payload = _CONTROLLER, frames
                self.controller_heard = True
            self.last_seen[peer] = time.monotonic()
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

    def _malformed(self, peer, data: bytes, why) -> None:
        self.malformed += 1
        err = why if isinstance(why, errors.ProtocolError) else errors.ProtocolError(
            f"malformed request: {why}", size_bytes=len(data))
        log.warning("malformed message from %r: %s", peer, err)
        self._send(peer, P.Error.of(P.request_id_of(data), err))

    def _beat(self, now: float) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("parent process %d is gone: shutting down", self.parent_pid)
            self.core.close()
            self.core.stopping = True
            return
        if not self.routed and not self.controller_heard:
            self._send(_CONTROLLER, self.hello())
        for peer, seen in list(self.last_seen.items()):
            if now - seen > self.peer_timeout_s:
                del self.last_seen[peer]
                n = self.core.drop_peer(peer)
                if n:
                    log.warning("peer %r silent for %.0f s: aborted %d generations", peer, now - seen, n)
                if not self.routed:
                    self.controller_heard = False
                continue
            if self.routed:
                self._send(peer, P.Heartbeat(time_s=time.time(), in_flight=len(self.core.generations)))
            else:
                # The controller keeps its view of pages and KV current from these (they count as heartbeats).
                self._send(peer, self.core.stats(0))

    def _send(self, peer, msg) -> None:
        data = P.encode(msg)
        try:
            if self.routed:
                self.sock.send_multipart([peer, data], zmq.NOBLOCK)
            else:
                self.sock.send(data, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            # Gone (EHOSTUNREACH), not reading (EAGAIN at the high-water mark), or, for a controller, not connected
            # (yet, or refused by CURVE): nobody will read the rest.
            self.last_seen.pop(peer, None)
            n = self.core.drop_peer(peer)
            if n or self.routed or self.controller_heard:
                who = f"the controller at {self.endpoint}" if not self.routed else f"peer {peer!r}"
                log.warning("cannot send to %s (%s); aborted %d generations", who, e.strerror, n)
            elif not self._controller_unreachable:  # a controller not connected yet is normal at start: say it once
                log.info("the controller at %s is not reachable yet (%s); saying Hello each heartbeat",
                         self.endpoint, e.strerror)
            self._controller_unreachable = not self.routed
        else:
            self._controller_unreachable = False

    def close(self) -> None:
        if self._finalizer.alive:
            # Give the last replies (Shutdown's Ok) a moment to leave; a dead peer cannot hold us longer.
            self.sock.setsockopt(zmq.LINGER, 1000)
        self._finalizer()


def _curve_client(sock, server_key: str, secret_key: str | None) -> None:
    """CURVE towards a controller: its public certificate, and this worker's own secret one (whose public half
    the controller must list); without one, an ephemeral key pair (for controllers that accept any client)."""
    import zmq.auth

    server_public, _ = zmq.auth.load_certificate(server_key)
    if secret_key:
        public, secret = zmq.auth.load_certificate(secret_key)
        if secret is None:
            raise errors.InvalidArgumentError(f"{secret_key} holds no secret key: pass the .key_secret file")
    else:
        public, secret = zmq.curve_keypair()
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def _close(sock, ctx) -> None:
    sock.close()
    ctx.term()
