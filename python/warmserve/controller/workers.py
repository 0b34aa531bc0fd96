"""The controller's ZeroMQ side: one ROUTER that every worker connects to (local and remote alike), calls with
replies matched by id, and heartbeats both ways (local worker processes are started by launch.py's spawn_worker).

A worker connects a DEALER with its worker id as routing id and says ``Hello`` until the controller answers; the
controller answers with a ``Heartbeat`` (or ``Refused``: ``_admissible``), and from then on any message counts as
alive. ROUTER_MANDATORY makes a send to a worker that is gone fail at once instead of vanishing. A worker declared
lost that speaks again without a Hello (it or its host stalled) is answered ``Rejoin``: it says Hello, admitted again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import re
import subprocess
import time
import weakref
from dataclasses import dataclass, field

import zmq

from warmserve import config, protocol as P
from warmserve.controller.draining import send_failed
from warmserve.endpoints import check_ipc_free, is_ipv6_endpoint
from warmserve.errors import InvalidArgumentError, TimeoutError_, WarmServeError, WorkerLostError, bind_error
from warmserve.security import require_authenticated_bind

from .pids import exit_status
from .hub_sockets import HandshakeWatch, KeyClashes, curve_server_of, finalize_hub, private_bind, release_curve
from .worker_claims import IdClaims

log = logging.getLogger("warmserve.controller")


def worker_silence_limit_s(worker_timeout_s: float, interval_s: float, worker=None, since_s=None) -> float:
    """The silence after which the controller declares a worker lost: worker_timeout_s, or config.SILENCE_INTERVALS
    of the worker's own --heartbeat-interval-s (``Hello.heartbeat_interval_s``; 0: not said) when longer (found in
    review: a remote worker at its default 1 s under a 0.25/0.5 s controller was lost while healthy). ``worker`` (a
    ``WorkerRecord``) that joined after ``since_s`` (the last heartbeat round; None: none yet): the longer bound is
    logged, a WARNING once per admission."""
    interval_s = interval_s if math.isfinite(interval_s) and interval_s > 0 else 0.0
    limit_s = max(worker_timeout_s, config.SILENCE_INTERVALS * interval_s)
    if worker is not None and limit_s > worker_timeout_s and (since_s is None or worker.joined_s > since_s):
        log.warning("%r sends heartbeats every %g s (its --heartbeat-interval-s), too seldom for worker_timeout_s %g "
                    "s: it is declared lost after %g s of silence instead; start it with --heartbeat-interval-s %g or "
                    "less, or raise worker_timeout_s to %g", worker, interval_s, worker_timeout_s, limit_s,
                    worker_timeout_s / config.SILENCE_INTERVALS, limit_s)
    return limit_s


@dataclass(eq=False)
class WorkerRecord:
    """One worker, as the controller sees it."""

    worker_id: str
    ident: bytes
    device: str
    pid: int
    capacity_bytes: int
    page_bytes: int
    #: Key of the server (host) it runs on: tensor-parallel groups never span two.
    host: str
    last_seen_s: float = field(default_factory=time.monotonic)
    #: When its Hello arrived (time.monotonic()), seconds.
    joined_s: float = field(default_factory=time.monotonic)
    alive: bool = True
    #: Registered and cleaned: the policy may place things on it.
    ready: bool = False
    #: Its GPU's id in the policy's state, given when it is admitted and never changed (None before).
    gpu_id: int | None = None
    #: The latest Stats it sent.
    stats: P.Stats | None = None
    #: Generations running on it, by the id of their Generate.
    gens: dict = field(default_factory=dict)
    #: Calls awaiting a reply, by id.
    calls: dict = field(default_factory=dict)
    #: The local process, when the controller spawned it.
    proc: subprocess.Popen | None = None
    #: The ``Tokens.seq`` each of its generations sends next, by the id of its Generate (``Controller._on_event``):
    #: one skipped is a stream that lost messages with its connection. A request sent or resumed gets a Generate of
    #: a new id, so its numbering starts at 0 there.
    seqs: dict = field(default_factory=dict)
    #: Lost while its process lives on, its connection re-made (``WorkerHub.rejoin``): admitted again at once, never
    #: restarted.
    rejoins: bool = False
    #: It drains (SIGTERM; ``controller/draining.py``): its GPU is gone from the policy, its requests finish there.
    draining: bool = False
    #: When its drain's time is up (time.monotonic(), from its first draining Stats' ``drain_left_s``), seconds.
    drain_until_s: float = 0.0
    #: It left as its drain planned (``WorkerHub.lose``): nothing in flight, or its drain's time up. False for a
    #: draining worker that crashed or hung first: found in review, such a leave was logged at INFO, counted in no
    #: loss, and its requests escaped max_worker_losses_per_request, its restarts the back-off.
    left_by_plan: bool = False

    def __repr__(self) -> str:
        return f"worker {self.worker_id} ({self.device})"


#: Seconds before its drain's time is up from which a draining worker that leaves with requests in flight is taken
#: to have ended its drain (it aborts them then, and its connection's close takes a moment to be seen).
DRAIN_END_SLACK_S = 2.0
#: Seconds between two ``Rejoin`` to one routing id: a worker that streamed many messages before it heard the
#: first sends on until then, and each would be answered.
REJOIN_EVERY_S = 1.0
_REJOIN = P.encode(P.Rejoin())

#: The largest message the controller takes from a worker; ZeroMQ drops the connection of a peer that sends more,
#: before buffering it. Found in review: with no limit, one 768 MiB frame from any process that could connect took
#: the controller from 28 MiB to 1.5 GiB. The largest a worker sends: the first Tokens of a request that asked for
#: prompt_logprobs with 20 alternatives, about 300 bytes per prompt token (39 MB at a 128k context), and Stats with
#: page lists (5 bytes a page: 5 MB for 1M pages); 256 MiB leaves room for ~900k-token prompts.
MAX_WORKER_MESSAGE_BYTES = 256 << 20
#: Bytes of a Tokens message beside its prompt logprobs (ids, the generated tokens' logprobs), with room to spare.
_TOKENS_OVERHEAD_BYTES = 1 << 20


@functools.lru_cache(maxsize=None)
def _prompt_logprob_bytes(k: int) -> int:
    """The most one prompt token's logprobs with ``k`` alternatives take in a Tokens message: msgpack writes a float
    as 9 bytes and a token id below 2**32 as at most 5; k + 1 entries (the chosen token may not be among them)."""
    return len(P.encode(P.TokenLogprobs(logprob=-1.5, top_ids=[2 ** 32 - 1] * (k + 1), top_logprobs=[-1.5] * (k + 1))))


def check_answer_fits(prompt_tokens: int, sampling) -> None:
    """Refuse a request whose prompt logprobs (all sent with its first token, in one Tokens message) could pass
    MAX_WORKER_MESSAGE_BYTES: the socket would drop that message and its connection, the worker reconnect, and the
    request wait for ever, unsaid (found in review: from about 900k prompt tokens with 20 alternatives)."""
    k = sampling.prompt_logprobs
    if k is None:
        return
    need = prompt_tokens * _prompt_logprob_bytes(k) + _TOKENS_OVERHEAD_BYTES
    if need > MAX_WORKER_MESSAGE_BYTES:
        raise InvalidArgumentError(
            f"the logprobs of a prompt of {prompt_tokens} tokens with {k} alternatives each come to up to "
            f"{need / (1 << 20):.0f} MiB in one message, over the {MAX_WORKER_MESSAGE_BYTES >> 20} MiB a worker may "
            f"send: shorten the prompt, ask for fewer alternatives, or leave out the prompt's logprobs",
            param="logprobs", prompt_tokens=prompt_tokens, prompt_logprobs=k)

#: The worker ids warmserve makes: HOST-PID-DEVICE (`warmserve worker` with no --worker-id), HOST-PIDwN-DEVICE
#: (`warmserve serve`'s local workers) and HOST-rPID-DEVICE (Ray's). The device part is one of ours (cpu, cuda0,
#: gpu1), and the middle part digits, so an operator's own id such as gpu-node-1 or rack-a-w0 is not read as one.
_DEFAULT_ID = re.compile(r"(?P<host>.+)-r?\d+(?:w\d+)?-(?:cpu|cuda|gpu)\d*")


def host_of(worker_id: str) -> str:
    """The server of a worker that did not say which (a Hello from before ``Hello.host``), read from the id forms
    warmserve makes; any other id is a server of its own, since two workers put on one server wrongly may get a
    tensor-parallel group across two machines (whose group store listens on loopback only)."""
    m = _DEFAULT_ID.fullmatch(worker_id)
    return m.group("host") if m else worker_id


def server_of(hello: P.Hello) -> str:
    """The key of the server (machine) a worker runs on: the host it says it is on, else what its id tells."""
    return hello.host or host_of(hello.worker_id)


def hello_of(w: WorkerRecord) -> P.Hello:
    """The Hello ``w`` joined with, as far as the controller keeps it (its server in ``host``; its version ours)."""
    return P.Hello(worker_id=w.worker_id, device=w.device, pid=w.pid, capacity_bytes=w.capacity_bytes,
                   page_bytes=w.page_bytes, host=w.host, protocol_version=P.PROTOCOL_VERSION)


class WorkerHub:
    """The ROUTER socket and everything that travels over it. Callbacks into the controller:
    ``on_hello(ident, hello)``, ``on_event(worker, msg)`` for stream events, ``on_lost(worker, why)``,
    ``on_drain(worker)`` once a worker says it drains (``controller/draining.py``), and
    ``may_rejoin(ident)``: whether a process speaking under that routing id, which has no live worker, may be told
    to say Hello (not one whose process is being stopped for a restart or a replacement)."""

    def __init__(self, bind: str, *, on_hello, on_event, on_lost, may_rejoin=lambda ident: True, curve_dir: str = "",
                 insecure: bool = False, models=(), on_drain=lambda w: None):
        """``insecure``: bind a non-loopback ``bind`` with no ``curve_dir`` (any host may join as a worker).
        ``models``: the models served; a worker of another version, or whose pool holds none, is refused (launch.py)."""
        bind, self._private = private_bind() if not bind else (bind, None)  # "": private_bind's, removed with the hub
        # Before any socket exists: a refused bind leaves nothing to close. The address as the config checks it
        # (found in review: tcp://::1:0 failed in the bind with "No such device" and a fix that did not fit).
        config.check_endpoint(bind, "the controller's worker socket (--bind)", listen=True)
        check_ipc_free(bind, "the controller's worker socket (--bind)")  # not another deployment's address
        require_authenticated_bind(
            bind, authenticated=bool(curve_dir), insecure=insecure, who="the controller's worker socket (--bind)",
            fix="pass --curve-dir DIR holding server.key_secret and the workers' public keys in DIR/workers")
        # A plain socket driven by the event loop's reader callback: zmq.asyncio wraps every send in a future,
        # which costs more than the send itself on the per-request path.
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.auth = None
        #: For local workers when CURVE is on: (--curve-server-key, --curve-secret-key) files as first written, and
        #: the keys themselves (``curve_keys.paths()``: the files now, written again if gone: hub_sockets.py).
        self.local_curve: tuple[str, str] | None = None
        self.curve_keys = None
        # Whatever fails from here on (the bind, above all: a port in use) leaves nothing behind. Found in review:
        # a raw ZMQError, with the authenticator's thread, the context and a temp dir holding a fresh secret key
        # left over.
        try:
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.sock.setsockopt(zmq.SNDHWM, 100_000)
            self.sock.setsockopt(zmq.RCVHWM, 100_000)
            self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_WORKER_MESSAGE_BYTES)
            # A worker that restarts with the same id takes over its routing id instead of being refused (two live
            # processes under one id: worker_claims.py).
            self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if is_ipv6_endpoint(bind):
                self.sock.setsockopt(zmq.IPV6, 1)
            if curve_dir:
                self.auth, self.curve_keys = curve_server_of(self.ctx, self.sock, curve_dir)
                self.local_curve = self.curve_keys.paths()
            try:
                self.sock.bind(bind)
            except zmq.ZMQError as e:
                raise bind_error("the controller's worker socket", bind, e.errno, zmq.strerror(e.errno),
                                 option="--bind tcp://HOST:PORT, or warmserve.Cluster's bind=; port 0 picks a "
                                        "free one") from None
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.handshakes = HandshakeWatch(self.sock, curve=bool(curve_dir))
        except BaseException:
            self._release()
            finalize_hub(self.sock, self.ctx, None, None, "", private_dir=self._private)  # the socket, its folder
            raise
        self.workers: dict[bytes, WorkerRecord] = {}
        #: CURVE on: the public key (Z85, the authenticator's User-Id of each message) each routing id first said
        #: Hello with (``_key_fits``), and the messages of other keys refused under them (``KeyClashes``); None:
        #: CURVE off.
        self._keys: dict[bytes, str] | None = {} if curve_dir else None
        self._key_clashes = KeyClashes()
        #: Ids another key spoke under while their key was bound: they stay with the key they joined with.
        self._keys_clashed: set[bytes] = set()
        self.on_hello, self.on_event, self.on_lost, self.may_rejoin = on_hello, on_event, on_lost, may_rejoin
        self.on_drain = on_drain
        self.models = models
        #: (routing id, pid) of each process refused (``_admissible``): logged once, though it says Hello each beat.
        self._refused: set[tuple[bytes, int]] = set()
        #: Routing id -> when it was last told ``Rejoin`` (monotonic s), until it says Hello.
        self._told_rejoin: dict[bytes, float] = {}
        #: Ids whose worker left after draining, until one says Hello again: what such a process still sends as it
        #: exits is expected, so the rejoin it is told is logged at DEBUG (found in review: INFO noise after drains).
        self._left_draining: set[bytes] = set()
        self._intervals: dict[bytes, float] = {}  # routing id -> its last Hello's heartbeat_interval_s (``beat``)
        self.claims = IdClaims()  # the process behind each routing id, and two that clash over one
        #: When the last heartbeat round ran (monotonic s; ``beat``).
        self._beat_s: float | None = None
        self._next_id = 1
        self._fd = self.sock.getsockopt(zmq.FD)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        # Through a module-level function holding no reference to the hub, so that a hub dropped without close()
        # is still collected and cleaned up (found in review: the context was terminated with the authenticator's
        # socket open, which hung the process when collected or at exit, and the temp dir with its key was left).
        self._finalizer = weakref.finalize(self, finalize_hub, self.sock, self.ctx, self.auth, self.curve_keys,
                                           self.endpoint, self.handshakes, os.getpid(), self._private)

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ------------------------------------------------------------------------------------------------ sending

    def send(self, w: WorkerRecord, msg) -> None:
        """Send without waiting; a worker that cannot be reached is declared lost (its requests re-routed).
        ``msg``: a message, or one encoded already (bytes)."""
        if not w.alive:
            raise WorkerLostError(f"{w!r} is lost", worker_id=w.worker_id)
        try:
            self.sock.send_multipart([w.ident, msg if isinstance(msg, bytes) else P.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # EHOSTUNREACH: no connection under that id (review: read "Host unreachable")
            self.lose(w, send_failed(w, e))
            raise WorkerLostError(f"{w!r} cannot be reached ({e.strerror})", worker_id=w.worker_id) from None
        finally:
            self._check_readable()

    def start_call(self, w: WorkerRecord, msg, on_progress=None) -> asyncio.Future:
        """Send a request now (so requests to one worker keep the order they were issued in) and return the
        future of its final reply; the future fails with WorkerLostError if the worker goes."""
        fut = asyncio.get_running_loop().create_future()
        # Whoever needs the outcome reads it; a worker loss failing a call nobody waits on is not worth a warning.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not w.alive:
            fut.set_exception(WorkerLostError(f"{w!r} is lost", worker_id=w.worker_id))
            return fut
        w.calls[msg.id] = (fut, on_progress)
        try:
            self.send(w, msg)
        except WorkerLostError as e:
            w.calls.pop(msg.id, None)
            if not fut.done():
                fut.set_exception(e)
        return fut

    async def wait(self, w: WorkerRecord, msg, fut: asyncio.Future, timeout_s: float):
        """The final reply to a started call; an Error reply raises its typed error."""
        # asyncio.wait, not wait_for: wait_for (before Python 3.12) returns the reply when it arrives in the same
        # loop turn as a cancellation of the caller, which is then lost. Found in review: a close that cancelled
        # an admission as its GetStats was answered waited out the admission's next call (60 s) on a worker gone.
        try:
            await asyncio.wait((fut,), timeout=timeout_s)
        finally:
            if fut.done():
                w.calls.pop(msg.id, None)
        if not fut.done():
            raise TimeoutError_(
                f"{w!r} did not answer {type(msg).__name__} within {timeout_s:g} s", timeout_s=timeout_s,
                worker_id=w.worker_id)
        reply = fut.result()
        if isinstance(reply, P.Error):
            raise reply.exception()
        return reply

    async def call(self, w: WorkerRecord, msg, timeout_s: float = 30.0, on_progress=None):
        try:
            return await self.wait(w, msg, self.start_call(w, msg, on_progress), timeout_s)
        finally:
            w.calls.pop(msg.id, None)

    # ------------------------------------------------------------------------------------------------ receiving

    async def recv_loop(self) -> None:
        """Receive for as long as the task runs. ZMQ_FD is edge-triggered: it signals "state changed", so every
        wake-up reads until EAGAIN, and every send checks whether it made a message readable."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._check_readable()
        try:
            await asyncio.Event().wait()
        finally:
            if not self.sock.closed:
                self._loop.remove_reader(self._fd)

    def _check_readable(self) -> None:
        if self.sock.closed:
            return
        if self._loop is not None and not self._drain_scheduled and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._drain_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        self._drain_scheduled = False
        if self.sock.closed:
            return
        for _ in range(1024):
            try:
                # With CURVE, as frames: the key a message came with is a property of its frame, not of its bytes.
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=self._keys is None)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # closed under us at shutdown
            if self._keys is None:
                self._handle(frames)
            else:
                self._handle([f.bytes for f in frames], frames[-1].get("User-Id"))
        # Still more: yield to other tasks (HTTP) and come back.
        self._drain_scheduled = True
        self._loop.call_soon(self._on_readable)

    def _handle(self, frames: list[bytes], key: str | None = None) -> None:
        """``key``: with CURVE, the public key the message came with (Z85)."""
        if len(frames) != 2:
            log.warning("dropping a %d-frame message", len(frames))
            return
        ident, data = frames
        try:
            msg = P.decode_reply(data)
        except WarmServeError as e:
            log.warning("malformed message from %r: %s", ident, e)
            return
        if key is not None and not self._key_fits(ident, key, msg):
            return
        w, now = self.workers.get(ident), time.monotonic()
        if isinstance(msg, P.Hello):
            if self.curve_keys is not None:  # a local worker's Hello: it read its key files (hub_sockets.py)
                self.curve_keys.heard(key, msg.pid)
            self._told_rejoin.pop(ident, None)
            self._left_draining.discard(ident)
            self._intervals[ident] = msg.heartbeat_interval_s
            if (why := self.claims.refusal(ident, msg, now, w is not None and w.alive)) is not None:
                if w is not None and w.alive:  # two live processes under one id: worker_claims.py
                    self.lose(w, "another live process says Hello under its worker id: both are refused")
                from warmserve.controller.launch import tell_refused  # launch imports this module

                tell_refused(self.sock, ident, msg, why, log_it=False)
                return
            if w is not None and w.alive and (msg.pid != w.pid or self.claims.another_process(ident, msg)):
                # Same id, new process (a restart took the routing id over): the old one's state is gone. Heard just
                # now, the old one may live on, cut off (found in review: a second process started by mistake took
                # the id over unsaid); worker_claims refuses both if it connects again, which the line says.
                heard_s = now - w.last_seen_s
                self.lose(w, f"restarted as process {msg.pid}" + (
                    f" (process {w.pid} was heard {heard_s:.1f} s ago: if it still runs, two processes share the "
                    "worker id, and both are refused once it connects again)" if heard_s < 5.0 else ""))
            elif w is not None and w.ready:
                # The same process says Hello again only after it gave up on this controller (a send failed: its
                # connection was reset, or its queue full; or we were silent past its --peer-timeout-s): it aborted
                # our generations unanswered, and what was in flight either way went with the connection. Found in
                # review: ignored, its requests waited out request_timeout_s. Its Hellos from before it heard us
                # all arrive before it is ready (the admission's replies follow them on the one connection), so
                # the Hello of a ready worker is always this one. The loss of all it had, as any loss: its requests
                # start over elsewhere; the process, alive and connected again, is admitted again (cleaned) now,
                # local or remote.
                self.claims.admitted(ident, msg, now)
                self.rejoin(w, "it said Hello again: it gave up on the controller, its connection broken for a "
                               "moment, and aborted the requests running there", msg)
                return
            if w is not None and w.alive:
                w.last_seen_s = now
            elif self._admissible(ident, msg):
                self.claims.admitted(ident, msg, now)
                self.on_hello(ident, msg)
            return
        if w is None or not w.alive:
            self._tell_rejoin(ident)
            return
        w.last_seen_s = now
        try:
            self._dispatch(w, msg)
        except Exception:  # one bad event must not stop the receive loop
            log.exception("handling %s from %r", type(msg).__name__, w)

    def _key_fits(self, ident: bytes, key: str, msg) -> bool:
        """With CURVE: whether a message under routing id ``ident`` came with the key that id first said Hello with
        (recorded then, kept until the controller restarts). Found in review: any worker with a key allowed could
        take another's id (ROUTER_HANDOVER gives the id to its newest connection), say Hello with another pid and be
        sent that worker's traffic. A message from another key is dropped, logged (``KeyClashes``: again each minute
        while the clash lasts) and answered with a ``Refused`` that stops its sender connecting anew; the worker
        under that id is declared lost, since what the controller sends to the id now reaches that key's connection.
        That worker's own connection stays cut off (ZeroMQ's handover drops it without closing it): its next new
        one (each --peer-timeout-s) takes the id back, and its Hello is admitted again.

        An id whose worker is gone (lost, or never admitted) for another cause than such a clash goes to the next
        allowed key that says Hello under it: a worker started again with a rotated key keeps its --worker-id
        (found in review: it was refused for as long as the controller ran, and never told)."""
        first = self._keys.get(ident)
        w = self.workers.get(ident)
        if first is None or (first != key and isinstance(msg, P.Hello) and (w is None or not w.alive)
                             and ident not in self._keys_clashed):
            if isinstance(msg, P.Hello):
                self._keys[ident] = key
            return True
        if first == key:
            return True
        self._keys_clashed.add(ident)
        self._key_clashes.refuse(self.sock, ident, key, first, msg)
        if w is not None:
            self.lose(w, f"a peer with another CURVE key ({key}) took its worker id over")
        return False

    def _admissible(self, ident: bytes, hello: P.Hello) -> bool:
        """Whether a worker saying Hello speaks this protocol version and can hold one of the models. A refused one is
        told why (``Refused``): it says Hello on, and once started again as told it is admitted."""
        from warmserve.controller.launch import refusal, tell_refused  # launch imports this module

        why = refusal(hello, self.models)
        if why is not None:
            tell_refused(self.sock, ident, hello, why, log_it=(ident, hello.pid) not in self._refused)
            self._refused.add((ident, hello.pid))
        return why is None

    def _tell_rejoin(self, ident: bytes) -> None:
        """Ask a process that speaks under ``ident``, for which no worker is alive here, to say Hello: what it says
        else is dropped, since what it ran here was lost with it (its requests started over elsewhere). Found in
        review: a remote worker stopped for 3 s (SIGSTOP, a host stall), past worker_timeout_s, was declared lost
        and then shut out until its own --peer-timeout-s (30 s) ran out, since it only says Hello once it has heard
        nothing for that long: its only worker gone, every request failed with 503 meanwhile. Also a worker that did
        not notice its controller restart (its connection re-made between two of its sends): it said no Hello."""
        now = time.monotonic()
        if now - self._told_rejoin.get(ident, -REJOIN_EVERY_S) < REJOIN_EVERY_S or not self.may_rejoin(ident):
            return
        try:
            self.sock.send_multipart([ident, _REJOIN], zmq.NOBLOCK)
        except zmq.ZMQError:  # gone again, or not connected yet: it is told when it speaks next
            return
        self._told_rejoin[ident] = now
        log.log(logging.DEBUG if ident in self._left_draining else logging.INFO,
                "%s speaks with no live worker under its id: told to say Hello again", ident.decode(errors="replace"))

    def _dispatch(self, w: WorkerRecord, msg) -> None:
        if isinstance(msg, P.Heartbeat):
            return
        if isinstance(msg, P.Stats) and msg.id == 0:
            w.stats = msg
            if msg.draining:  # each Stats: its last, as it stops, says the drain is over (drain_left_s 0)
                w.drain_until_s = time.monotonic() + msg.drain_left_s
                if not w.draining:
                    self.on_drain(w)
            return
        call = w.calls.get(msg.id)
        if call is not None:
            fut, on_progress = call
            if isinstance(msg, P.PrewarmProgress):
                if on_progress is not None:
                    on_progress(msg)
            else:
                # The final reply: the entry goes now, or a call nobody awaits (executor.fire) would keep it
                # until the worker is lost (found in review: one per fired Evict, Deactivate, LeaveGroup).
                del w.calls[msg.id]
                if not fut.done():
                    if isinstance(msg, P.Stats):
                        w.stats = msg
                    fut.set_result(msg)
            return
        self.on_event(w, msg)

    # ------------------------------------------------------------------------------------------------ liveness

    @staticmethod
    def _take_down(w: WorkerRecord, what: str, why: str) -> None:
        """Mark ``w`` gone and fail the calls still waiting on it."""
        w.alive = False
        w.ready = False
        err = WorkerLostError(f"{w!r} was {what} ({why})", worker_id=w.worker_id)
        for fut, _ in list(w.calls.values()):
            if not fut.done():
                fut.set_exception(err)
        w.calls.clear()

    def lose(self, w: WorkerRecord, why: str) -> None:
        if not w.alive:
            return
        early_s = w.drain_until_s - DRAIN_END_SLACK_S - time.monotonic()
        stopped = w.stats is not None and w.stats.stopping  # sent SIGTERM, it stops without a drain
        # A local one that exited 0 finished its drain, whatever of its last answers this side has not read yet
        # (found in CI, under load: a rolling restart counted as a loss, its requests' ends still in the socket).
        w.left_by_plan = stopped or w.draining and (not w.gens or early_s <= 0 or exit_status(w.proc) == 0)
        if w.left_by_plan:  # its leaving was announced; what ran there has finished (or starts over: its log says)
            log.info("%r left %s: %s", w, "on SIGTERM, at once (no drain)" if stopped else "after draining", why)
            self._left_draining.add(w.ident)
        elif w.draining:
            log.warning("%r lost while draining, with %d request(s) in flight %.1f s before its drain's time was up "
                        "(it crashed or hung): %s", w, len(w.gens), early_s + DRAIN_END_SLACK_S, why)
        else:
            log.warning("%r lost: %s", w, why)
        self._take_down(w, "lost", why)
        self.on_lost(w, why)

    def rejoin(self, w: WorkerRecord, why: str, hello: P.Hello | None = None) -> None:
        """Lose ``w``, whose process lives on and whose connection was re-made (ZeroMQ reconnects by itself), then
        admit it again at once under a new record: what it ran is lost either way (its requests start over, as
        after any loss), but the process is sound. ``hello``: the Hello it said again; None: the one it joined with.
        Found in review: a local worker's Hello again had its healthy process killed, and a new one spawned after
        the restart back-off, counted as a restart in a row, where a remote one was admitted again at once."""
        if not w.alive:
            return
        w.rejoins = True
        self.lose(w, why)
        self.on_hello(w.ident, hello if hello is not None else hello_of(w))

    def retire(self, w: WorkerRecord, why: str) -> None:
        """Take a worker out on purpose (its process is about to be replaced): like ``lose`` for its calls and the
        worker table, but no ``on_lost``: nothing of the controller's is lost with it. What it still sends is
        dropped until a process under its routing id says Hello."""
        if not w.alive:
            return
        log.info("%r retired: %s", w, why)
        self._take_down(w, "retired", why)
        if self.workers.get(w.ident) is w:
            del self.workers[w.ident]

    def beat(self, now_s: float, timeout_s: float, stalled_s: float) -> None:
        """Send a heartbeat to every live worker and declare lost those silent for ``timeout_s`` or whose process
        exited. ``stalled_s``: how much later than its interval this round came (``LoopStalls.round``), which shows
        the controller itself stalled (the process stopped, its host or its event loop held up), reading nothing
        meanwhile: that time is nobody's silence, so each worker's silence goes on from where it stood when the
        stall began. Found in review: a controller stopped for 3.5 s (SIGSTOP) declared every healthy worker lost
        at the first round after, before it had read what they sent meanwhile, and had the local ones killed and
        started again."""
        prev_s, self._beat_s = self._beat_s, now_s
        self.handshakes.poll(now_s)
        self._told_rejoin = {i: t for i, t in self._told_rejoin.items() if now_s - t < REJOIN_EVERY_S}
        for w in list(self.workers.values()):
            if not w.alive:
                continue
            w.last_seen_s = min(now_s, w.last_seen_s + stalled_s)
            if w.proc is not None and w.proc.poll() is not None:
                self.lose(w, f"process {w.pid} exited with status {w.proc.returncode}")
                continue
            limit_s = worker_silence_limit_s(timeout_s, self._intervals.get(w.ident, 0.0), w, prev_s)
            if now_s - w.last_seen_s > limit_s:
                self.lose(w, f"silent for {now_s - w.last_seen_s:.1f} s (timeout {limit_s} s)")
                continue
            try:
                self.send(w, P.Heartbeat(time_s=time.time(), in_flight=len(w.gens)))
            except WorkerLostError:
                pass

    def close(self) -> None:
        # Here too, not only when recv_loop ends: a close that failed half-way closes the socket before that task
        # has run its cancellation, and a reader left on a closed (and reusable) descriptor outlives the socket.
        if self._loop is not None and not self.sock.closed and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self.auth = None  # the finalizer stops it and removes the keys
        self._finalizer()

    def _release(self) -> None:
        """Stop the authenticator and remove the local workers' keys (a constructor that failed)."""
        release_curve(self.auth, self.curve_keys)
        self.auth = None
