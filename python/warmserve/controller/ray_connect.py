"""The process's Ray connection, shared by every ``RayLauncher`` in it (used by ``ray_launch``).

Ray allows one connection per process. Found in review: the first launcher to connect owned it and closed it when
it closed, killing the actors of every other cluster of the process; a launcher asked for another cluster's address
silently ran on the one connected; an address whose port accepted TCP but was no Ray head (the dashboard's 8265)
left ``ray.init`` retrying for ever on the event loop, where neither a timeout nor Ctrl-C could end it. So the
connection is counted (closed when its last launcher closes, and only when warmserve made it), its address is
compared with the one asked for, the head must answer as a gRPC server, and ``ray.init`` runs on a thread of its own
with a deadline.

Calls made off the launcher's thread on an actor (its kill, on a thread of its own) go through ``call_on``, with the
connection the actor was made on. Found in review (a Ray abort, "Check failed: Cannot find an actor handle", in a
KillActor from a thread): such a kill ran after the last launcher's close had shut the connection down, where
``ray.kill`` (one of Ray's auto-init APIs) connected the process again, beside the next launcher's ``ray.init``; or
it ran across the shutdown, or on the next connection, which does not know the handle. Now it is skipped unless its
connection is still the current one (the actor ended with its connection's job), and shutdown and connect wait until
the calls in flight on the connection have returned.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from typing import Callable

from warmserve.controller.ray_plan import RayClusterError, unbracket
from warmserve.errors import InvalidArgumentError

log = logging.getLogger("warmserve.controller")

#: How long the Ray head given as HOST:PORT gets to accept a TCP connection before connecting is given up, seconds
#: (ray.init retries an unreachable head for minutes).
HEAD_PROBE_TIMEOUT_S = 5.0
#: How long the head gets to answer an HTTP/2 greeting (the GCS is a gRPC server), seconds.
GREETING_TIMEOUT_S = 5.0
#: How long a shutdown or a connect waits for the calls in flight on the connection (``call_on``), seconds: a kill takes
#: milliseconds, but one waits as long as Ray's head (the GCS) does not answer.
CALLS_DRAIN_S = 5.0
#: How long ray.init gets, seconds: a head that answers gRPC but is no GCS (Ray's client server on 10001) makes it
#: retry for ever.
CONNECT_TIMEOUT_S = 60.0

#: The HTTP/2 client preface and an empty SETTINGS frame: any HTTP/2 server answers with a SETTINGS frame.
_H2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 4

#: Lock ordering: ``_lock`` before ``_calls``, never the other way. ``call_on`` leaves a call in flight holding neither,
#: so a shutdown (holding ``_lock``) can wait on ``_calls`` for it to return.
_lock = threading.Lock()
#: Ids of the launchers using the process's Ray connection.
_users: set[int] = set()
#: The connection warmserve made (it shuts it down after its last user), as ``identity()``; None when it made none: a
#: program that connected itself keeps its connection.
_owned: tuple[str, str] | None = None
#: The number of ``call_on`` calls in flight, and its condition (notified as each returns).
_calls = threading.Condition(threading.Lock())
_in_flight = 0


def head_address(address: str) -> str:
    """The HOST:PORT ray.init will connect to, "" when Ray checks it itself (a ray:// client address). "auto" is
    resolved as Ray does: RAY_ADDRESS, else the address the last `ray start` on this machine wrote (found in review:
    a cluster that had crashed left that file behind, and ray.init waited on its dead head for ever), else a running
    cluster's."""
    requested = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment
        except ImportError:  # a Ray that moved it: ray.init resolves "auto" unchecked
            return ""
        try:
            address = get_ray_address_from_environment("auto", None)
        except ConnectionError as e:  # no cluster on this machine at all
            raise RayClusterError(
                f"no Ray cluster to connect to ({e}): start one (`ray start --head` here, `ray start --address "
                f"HEAD:6379` on the other machines) or pass its address to --ray", address=requested) from None
    return "" if "://" in address else address


def _split(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    return (unbracket(host), int(port)) if sep and port.isdigit() else None


def probe_head(address: str) -> None:
    """The head must accept a connection now: say so at once rather than after Ray's retries (for ever, for a head
    that is gone)."""
    head = head_address(address)
    where = _split(head)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=HEAD_PROBE_TIMEOUT_S).close()
    except OSError as e:
        found = "" if head == address else f" (found for {address!r})"
        raise RayClusterError(
            f"the Ray head at {head}{found} does not accept connections ({e}): check the address (`ray "
            f"status` on the head prints it) or start the cluster (`ray start --head`)", address=head) from None


def greet_head(address: str) -> None:
    """The head must answer an HTTP/2 greeting as the GCS (a gRPC server) does. Found in review: a port that
    accepted TCP but was no GCS (the dashboard's 8265) left ray.init retrying for ever. Skipped under Ray's TLS
    (the GCS then wants a TLS handshake first)."""
    head = head_address(address)
    where = _split(head)
    if where is None or os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return
    answer, why = b"", ""
    try:
        with socket.create_connection(where, timeout=GREETING_TIMEOUT_S) as s:
            s.sendall(_H2_GREETING)
            while len(answer) < 9:
                got = s.recv(9 - len(answer))
                if not got:
                    why = "it closed the connection"
                    break
                answer += got
    except socket.timeout:
        why = f"no answer within {GREETING_TIMEOUT_S:.0f} s"
    except OSError as e:
        why = str(e)
    if len(answer) == 9 and answer[3] == _H2_SETTINGS:
        return
    if answer.startswith(b"HTTP/"):
        why = f"it answered as an HTTP/1 server ({answer!r}...; the dashboard listens on 8265)"
    elif not why:
        why = f"it answered {answer!r}, which is no gRPC"
    raise RayClusterError(
        f"{head} accepts connections but is no Ray head (GCS): {why}. Pass the GCS address, HEAD:6379 by default "
        f"(`ray start --head` prints it as --address; `ray status` on the head shows it)", address=head)


def _init_within(address: str, timeout_s: float) -> None:
    """ray.init on a daemon thread, waited for at most ``timeout_s``: one that never returns keeps neither the
    caller nor the process's exit waiting. One that succeeds after it was given up on disconnects again."""
    import ray

    outcome: dict = {}
    done = threading.Event()
    gave_up = threading.Event()

    def run():
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except BaseException as e:  # handed to the caller
            outcome["error"] = e
        done.set()
        if gave_up.is_set() and "error" not in outcome:
            ray.shutdown()

    threading.Thread(target=run, name="warmserve-ray-init", daemon=True).start()
    if not done.wait(timeout_s):
        gave_up.set()
        raise RayClusterError(
            f"ray.init({address!r}) did not connect within {timeout_s:g} s: {address} is no Ray head that answers "
            f"(a Ray client server? pass ray://HOST:10001 for that), or the cluster is overloaded. Pass the GCS "
            f"address, HEAD:6379 by default (`ray status` on the head shows it)", address=address,
            timeout_s=timeout_s)
    error = outcome.get("error")
    if isinstance(error, (ConnectionError, RuntimeError, ValueError)):
        raise RayClusterError(
            f"cannot connect to a Ray cluster at {address!r}: {error}. Start one (`ray start --head` here, "
            f"`ray start --address HEAD:6379` on the other machines) or pass its address to --ray",
            address=address) from None
    if error is not None:
        raise error


def identity() -> tuple[str, str]:
    """The process's Ray connection, as its job id and its driver's node id (both read locally, without the GCS): the
    job id alone repeats (a local cluster started again numbers its jobs from 1 again), and a node id is that node's
    for one run of it. Connected only: ``ray.get_runtime_context`` connects a process that is not."""
    import ray

    ctx = ray.get_runtime_context()
    return ctx.get_job_id(), ctx.get_node_id()


def acquire(user: int, address: str, timeout_s: float | None = None) -> tuple[str, str]:
    """Connect (or use the process's connection) for launcher ``user``; pair with ``release``. Returns the connection
    (``identity()``), for ``call_on``."""
    import ray

    global _owned
    with _lock:
        if ray.is_initialized():
            if _owned is not None and _owned != identity():  # someone else reconnected since: theirs
                _owned = None
                _users.clear()
            check_same_cluster(address)
            log.info("using this process's Ray connection")
        else:
            _users.clear()  # connections made before have ended
            probe_head(address)
            greet_head(address)
            _drain("the connection before")  # a call still on a connection the program shut down itself
            _init_within(address, CONNECT_TIMEOUT_S if timeout_s is None else timeout_s)
            _owned = identity()
        _users.add(user)
        return identity()


def release(user: int) -> list[str]:
    """Launcher ``user`` is done with the connection; the last one disconnects when warmserve connected. Returns
    what it did (for the caller's log)."""
    import ray

    global _owned
    with _lock:
        if user not in _users:
            return []
        _users.discard(user)
        if _users or _owned is None or not ray.is_initialized():
            return []
        if identity() != _owned:
            _owned = None
            return []
        _owned = None
        # No call starts while ``_lock`` is held; those waiting for it find the connection shut down, and skip.
        _drain("ray.shutdown")
        ray.shutdown()
        return ["ray.shutdown"]


def call_on(connection: tuple[str, str] | None, fn: Callable[[], object]) -> bool:
    """``fn()`` (a Ray call on an actor or object of ``connection``, from any thread) unless that connection is no
    longer the process's current one: then it is skipped (its actors ended with its job), and False returned. A
    shutdown or connect waits for it (``_drain``). ``connection`` None: the caller made its actor without
    ``acquire`` (no connection to compare with), and ``fn`` just runs."""
    global _in_flight
    if connection is None:
        fn()
        return True
    import ray

    with _lock:
        # is_initialized first: identity() (and fn, an auto-init API such as ray.kill) would connect again.
        if not ray.is_initialized() or identity() != connection:
            return False
        with _calls:
            _in_flight += 1
    # Outside ``_lock``: a call that waits for a GCS that is gone must not hold up the other launchers' acquire.
    try:
        fn()
    finally:
        with _calls:
            _in_flight -= 1
            _calls.notify_all()
    return True


def _drain(before: str) -> None:
    """Wait (holding ``_lock``, so that no new call starts) until no ``call_on`` call is in flight, at most
    CALLS_DRAIN_S. Found in review: Ray aborted the process when a kill ran across its connection's shutdown."""
    with _calls:
        if not _calls.wait_for(lambda: _in_flight == 0, CALLS_DRAIN_S):
            log.warning("%d Ray call(s) on the connection still running after %.0f s (is Ray's head, the GCS, gone?): "
                        "%s goes ahead", _in_flight, CALLS_DRAIN_S, before)


def check_same_cluster(address: str) -> None:
    """The process is connected to a Ray cluster: ``address`` (when it names one) must be that one's. Found in review:
    Cluster(ray_address=B) silently ran on cluster A, the one the process was connected to."""
    import ray

    if address in ("auto", "") or "://" in address:
        return  # "auto": whichever this process uses; a ray:// client address names no GCS to compare
    try:
        connected = ray.get_runtime_context().gcs_address
    except Exception as e:  # a Ray without it: nothing to compare with
        log.debug("gcs_address: %s", e)
        return
    asked, have = _split(address), _split(connected or "")
    if asked is None or have is None or _same(asked, have):
        return
    raise InvalidArgumentError(
        f"this process is connected to the Ray cluster at {connected}, not {address}: Ray allows one cluster per "
        f"process. Pass ray_address={connected!r} (or 'auto'), or run the other cluster's server in another process",
        ray_address=address, connected=connected)


def _same(a: tuple[str, int], b: tuple[str, int]) -> bool:
    if a[1] != b[1]:
        return False
    ips_a, ips_b = _ips(a[0]), _ips(b[0])
    return bool(ips_a & ips_b) or (all(map(_local, ips_a)) and all(map(_local, ips_b)) and bool(ips_a and ips_b))


def _ips(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return {host}


def _local(ip: str) -> bool:
    """Whether ``ip`` is this machine's (loopback, or an address one of its interfaces holds: it can be bound)."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return False
    if addr.is_loopback:
        return True
    try:
        with socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False
