"""`warmserve worker`: one device worker process.

Engine-level prewarming happens here, before any model is asked for: torch and the engine are imported, the
thread count set and the page pool created (every page of it), and only then does the worker bind its endpoint
(or say Hello to its controller) and report ready.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys

from .. import errors
from .. import protocol as P
from ..errors import GiB
from ..geometry import default_page_bytes, is_page_size

DEFAULT_BIND = "tcp://127.0.0.1:0"
#: Seconds a worker sent SIGTERM lets its requests in flight finish: inside Kubernetes' default grace period of
#: 30 s before its SIGKILL (terminationGracePeriodSeconds), with room for the abort and the exit after it.
DEFAULT_DRAIN_TIMEOUT_S = 20.0

log = logging.getLogger("warmserve.worker")


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--controller", metavar="tcp://HOST:PORT", help="connect to this controller's ROUTER")
    where.add_argument("--bind", metavar="ENDPOINT", default=None,
                       help="serve on this ZeroMQ endpoint (default tcp://127.0.0.1:0: a free loopback port)")
    p.add_argument("--device", default="cpu", help="cpu (a host-memory slice) or cuda:N")
    p.add_argument("--memory-gib", type=float, default=None,
                   help="page-pool size in GiB (default: 4 on cpu, 90%% of free GPU memory on cuda)")
    p.add_argument("--page-mib", type=int, default=None,
                   help="page size of the pool in MiB, a positive multiple of 2 (default 32 on cuda, 2 on cpu). Larger "
                   "pages cost fewer driver calls per GiB mapped on a GPU (bench/switch/README.md); KV blocks share "
                   "them")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (cpu device; default: torch's, at most the cgroup's CPU quota)")
    p.add_argument("--host-cache-gib", type=float, default=0.0,
                   help="load checkpoints through the machine's host checkpoint cache of this many GiB, shared by "
                        "its workers (a second worker loads from host memory, on GPUs by DMA, not from the files; "
                        "default 0: off)")
    p.add_argument("--host-cache-dir", default=None, metavar="DIR",
                   help="the cache's directory, a tmpfs shared by the machine's workers (default: HostCacheConfig's, "
                        "/dev/shm/warmserve-ckpt); with -UID appended where another user holds that one")
    p.add_argument("--worker-id", default=None, help="name of this worker (default HOST-PID-DEVICE)")
    p.add_argument("--host-name", default=None, metavar="NAME",
                   help="the machine this worker runs on, as the controller groups workers into servers (workers "
                        "of one may form tensor-parallel groups; default: this host's name)")
    p.add_argument("--heartbeat-interval-s", type=float, default=1.0,
                   help="seconds between heartbeats to peers (Stats pushes to a controller; default 1)")
    p.add_argument("--peer-timeout-s", type=float, default=30.0,
                   help="abort a client's generations after this long without a message from it; with "
                        "--controller, also connect to the controller again (seconds; default 30)")
    p.add_argument("--drain-timeout-s", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="S",
                   help="on SIGTERM (or SIGHUP: its terminal closed, unless run under nohup), with --controller: "
                        "take no new work and let the requests in flight finish for up to this many seconds, then "
                        "abort what is left (the controller starts it over elsewhere) and exit; a second SIGTERM "
                        "ends the drain (default %(default)g; 0: abort at once)")
    p.add_argument("--max-queued-mib", type=int, default=None, metavar="MIB",
                   help="MiB of requests the worker holds unread (while an engine step runs) before it refuses more "
                        "with OverloadedError (default 256)")
    p.add_argument("--ready-fd", type=int, default=None,
                   help="write one JSON Hello line to this file descriptor once serving (used by spawn_local_worker)")
    p.add_argument("--curve-server-key", metavar="FILE", default=None,
                   help="with --controller: the controller's public CURVE certificate (turns encryption on)")
    p.add_argument("--curve-secret-key", metavar="FILE", default=None,
                   help="this worker's secret certificate (zmq.auth.create_certificates): with --curve-server-key, "
                        "its key towards the controller; with --curve-clients-dir, its server key")
    p.add_argument("--curve-clients-dir", metavar="DIR", default=None,
                   help="with --bind: turn CURVE on and let in only clients whose public certificates are in DIR")
    p.add_argument("--insecure", action="store_true",
                   help="allow --bind on a non-loopback address without CURVE (anyone who can connect can send "
                        "Prewarm, Evict, Shutdown)")
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="most sequences one instance runs at once, for activations that bring no limits of their "
                        "own (a controller sends its cluster's)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="most tokens one engine step computes")
    p.add_argument("--max-kv-blocks", type=int, default=None,
                   help="most KV blocks one instance may hold (default 0: as many as the pool maps)")
    p.add_argument("--exit-with-parent", nargs="?", type=int, const=0, default=None, metavar="PID",
                   help="shut down when the parent process exits; PID: the parent it must have (a spawner passes "
                        "its own pid, so a worker whose parent died while it started exits too)")
    p.add_argument("--log-level", default="WARNING", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   help="what goes to stderr (default WARNING)")


def check_device(device: str) -> str:
    """``device`` as torch reads it (cuda:00 becomes cuda:0), or InvalidArgumentError. Found in review: cuda:00
    passed a check of its digits, then torch refused the string at start-up with an untyped RuntimeError; callers
    use the returned name."""
    index = device[5:] if device.startswith("cuda:") else ""
    if device in ("cpu", "cuda"):
        return device
    if not (index.isascii() and index.isdigit()):  # ASCII: "²" is a digit to str.isdigit, not to int()
        raise errors.InvalidArgumentError(f"--device must be cpu or cuda:N, got {device!r}", device=device)
    return f"cuda:{int(index)}"


def check_cuda(device: str, *, flag: str = "--device", fix: str = "use --device cpu") -> None:
    """A CUDA device that this process can see (imports torch). Found in review: cuda:0 on a machine without CUDA
    failed inside torch with "module 'torch._C' has no attribute '_cuda_setDevice'". ``flag`` and ``fix``: how the
    command that asks names the device, and what to use instead when there is no GPU (`bench switch`: its
    --backend)."""
    if not device.startswith("cuda"):
        return
    import torch

    index = int(device.split(":", 1)[1]) if ":" in device else 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise errors.InvalidArgumentError(f"{flag} {device}: no CUDA device visible (torch.cuda.is_available() is "
                                          f"False); {fix}", device=device, flag=flag, visible=0)
    if not 0 <= index < count:
        raise errors.InvalidArgumentError(f"{flag} {device}: only {count} CUDA device(s) visible (cuda:0 to "
                                          f"cuda:{count - 1}); check CUDA_VISIBLE_DEVICES", device=device,
                                          flag=flag, visible=count)


def check_args(args: argparse.Namespace) -> None:
    """What the flags can be checked for before torch is imported and the pool made (seconds of work)."""
    from ..config import check_endpoint

    args.device = check_device(args.device)
    # Found in review: a heartbeat interval of 0 busy-looped a core; NaN passes every comparison.
    for flag in ("heartbeat_interval_s", "peer_timeout_s"):
        v = getattr(args, flag)
        if not math.isfinite(v) or v <= 0:
            raise errors.InvalidArgumentError(f"--{flag.replace('_', '-')} must be a finite number > 0 seconds, "
                                              f"got {v}", **{flag: v})
    if not math.isfinite(args.drain_timeout_s) or args.drain_timeout_s < 0:
        raise errors.InvalidArgumentError(f"--drain-timeout-s must be a finite number >= 0 seconds, got "
                                          f"{args.drain_timeout_s}", drain_timeout_s=args.drain_timeout_s)
    if args.memory_gib is not None and (not math.isfinite(args.memory_gib) or args.memory_gib <= 0):
        raise errors.InvalidArgumentError(f"--memory-gib must be a finite number > 0, got {args.memory_gib}",
                                          memory_gib=args.memory_gib)
    # Found in review: checked only in build_pool, after torch was imported and the engine prewarmed (3-4 s).
    if args.page_mib is not None and not is_page_size(args.page_mib << 20):
        raise errors.InvalidArgumentError(f"--page-mib must be a positive multiple of 2, got {args.page_mib}",
                                          page_mib=args.page_mib)
    if not math.isfinite(args.host_cache_gib) or args.host_cache_gib < 0:
        raise errors.InvalidArgumentError(f"--host-cache-gib must be a finite number >= 0 (0: no cache), got "
                                          f"{args.host_cache_gib}", host_cache_gib=args.host_cache_gib)
    if args.host_cache_dir is not None and not args.host_cache_gib:
        raise errors.InvalidArgumentError("--host-cache-dir needs --host-cache-gib (the cache's size)",
                                          path=args.host_cache_dir)
    if args.controller is not None:
        check_endpoint(args.controller, "--controller", listen=False)
    if args.bind is not None:
        check_endpoint(args.bind, "--bind", listen=True)
    for flag in ("curve_server_key", "curve_secret_key"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise errors.InvalidArgumentError(f"--{flag.replace('_', '-')} {path}: no such file (a certificate "
                                              "zmq.auth.create_certificates wrote)", path=path)
    if args.curve_clients_dir is not None and not os.path.isdir(args.curve_clients_dir):
        # Found in review: no fix said.
        raise errors.InvalidArgumentError(f"--curve-clients-dir {args.curve_clients_dir}: no such directory: create "
                                          "it and put in it the public key (NAME.key, as zmq.auth."
                                          "create_certificates writes it) of each client to admit",
                                          path=args.curve_clients_dir)
    mib = getattr(args, "max_queued_mib", None)
    if mib is not None and mib < 1:
        raise errors.InvalidArgumentError(f"--max-queued-mib must be a whole number of MiB >= 1 (default 256), got "
                                          f"{mib}", max_queued_mib=mib)
    # Found in review: -1 was a traceback from torch after its import; 0 meant all threads, unsaid.
    if args.threads is not None and args.threads < 1:
        raise errors.InvalidArgumentError(f"--threads must be >= 1 (leave it out for all of this machine's), got "
                                          f"{args.threads}", threads=args.threads)
    # Found in review: -5 ran the whole start-up and exited 0; a bad --ready-fd failed only after it.
    if args.exit_with_parent is not None and args.exit_with_parent < 0:
        raise errors.InvalidArgumentError(f"--exit-with-parent PID must be a process id >= 1 (or no PID: the parent "
                                          f"at start), got {args.exit_with_parent}", pid=args.exit_with_parent)
    if args.ready_fd is not None:
        check_ready_fd(args.ready_fd)


def check_ready_fd(fd: int) -> None:
    """An open descriptor this process may write to."""
    import fcntl

    try:
        writable = fd >= 0 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except OSError:
        writable = False
    if not writable:
        raise errors.InvalidArgumentError(f"--ready-fd {fd} is no file descriptor open for writing in this process "
                                          "(the spawner must pass it on: pass_fds)", fd=fd)


def check_security(args: argparse.Namespace) -> None:
    """CURVE options that fit the way the worker is reached, and no unauthenticated non-loopback bind unless
    --insecure (checked here, before the slow prewarming, and again by WorkerServer)."""
    from ..security import require_authenticated_bind
    from .server import BIND_FIX

    if args.controller:
        if args.curve_clients_dir:
            raise errors.InvalidArgumentError(
                "--curve-clients-dir is for --bind; with --controller pass --curve-server-key (and --curve-secret-key)")
        if args.curve_secret_key and not args.curve_server_key:
            # Found in review: the key was ignored and the worker spoke plain text (the client classes refuse this).
            raise errors.InvalidArgumentError(
                "--curve-secret-key needs --curve-server-key with --controller: CURVE towards the controller needs "
                "its public key (DIR/server.key of its --curve-dir); without both the worker would connect in plain "
                "text", path=args.curve_secret_key)
        return
    if args.curve_server_key:
        raise errors.InvalidArgumentError(
            "--curve-server-key is for --controller; with --bind pass --curve-secret-key and --curve-clients-dir")
    if args.curve_clients_dir and not args.curve_secret_key:
        raise errors.InvalidArgumentError("--curve-clients-dir needs --curve-secret-key (this worker's .key_secret)")
    if args.curve_secret_key and not args.curve_clients_dir:  # found in review: the worker served in plain text
        raise errors.InvalidArgumentError(
            "--curve-secret-key needs --curve-clients-dir with --bind: CURVE on a bound worker needs the public keys "
            "of the clients it admits; without both the worker would serve in plain text", path=args.curve_secret_key)
    require_authenticated_bind(args.bind or DEFAULT_BIND, authenticated=bool(args.curve_clients_dir),
                               insecure=args.insecure, who="warmserve worker --bind", fix=BIND_FIX)


def warn_unresolved_controller(endpoint: str) -> None:
    """Found in review: a --controller host that does not resolve left the worker silent for good. A warning, not a
    refusal: a name may resolve only later (a container whose service is not up yet), and ZeroMQ tries again."""
    scheme, _, rest = endpoint.partition("://")
    host = rest.rpartition(":")[0].rpartition(";")[2].strip("[]")  # ZeroMQ's tcp://SOURCE;HOST:PORT, [IPv6]
    if scheme != "tcp" or not host:
        return
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        log.warning("--controller %s: the host %s does not resolve here (%s); check the address. The worker waits "
                    "for it and says Hello each heartbeat", endpoint, host, e)


def check_bind(endpoint: str) -> None:
    """A tcp endpoint this worker cannot bind (a port in use) fails now, before torch and the pool (seconds of
    work), with a typed error: found in review, a raw ZMQError traceback after all of that. A throwaway socket
    binds it and lets it go; WorkerServer's own bind fails the same way should another process take it
    meanwhile. Not ipc: binding a path takes it over from the process that holds it."""
    if not endpoint.startswith("tcp://"):
        return
    import zmq

    from warmserve.endpoints import is_ipv6_endpoint
    from warmserve.errors import bind_error

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if is_ipv6_endpoint(endpoint):
        sock.setsockopt(zmq.IPV6, 1)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        raise bind_error("the worker", endpoint, e.errno, zmq.strerror(e.errno)) from None
    finally:
        sock.close(linger=0)
        ctx.term()


def engine_config(args: argparse.Namespace) -> P.EngineConfig:
    """The engine limits given by flags (the others at their defaults); a bad value is refused before startup."""
    given = {f: getattr(args, f) for f in ("max_num_seqs", "max_batch_tokens", "max_kv_blocks")
             if getattr(args, f, None) is not None}
    return P.EngineConfig(**given)


def build_pool(device: str, memory_gib: float | None, prefault: bool = True, page_mib: int | None = None):
    """The page pool of a device: all pages created now, so that later only map and unmap happen (and, with
    prefault, touched now on the host, so no load pays for first touches). Pages of ``page_mib`` MiB (None: the
    device's default, geometry.default_page_bytes)."""
    from ..memory import PagePool

    device = check_device(device)
    if page_mib is None:
        page_mib = default_page_bytes([device]) >> 20
    if not is_page_size(page_mib << 20):
        raise errors.InvalidArgumentError(f"--page-mib must be a positive multiple of 2, got {page_mib}",
                                          page_mib=page_mib)
    page = page_mib << 20
    index = 0
    if device == "cpu":
        capacity = int((4.0 if memory_gib is None else memory_gib) * GiB)
    else:
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if memory_gib is None:
            import torch

            free, _ = torch.cuda.mem_get_info(index)
            capacity = int(free * 0.9)
        else:
            capacity = int(memory_gib * GiB)
    pages = capacity // page  # whole pages: a budget in GiB rarely is a multiple of the page
    if pages < 1:
        raise errors.InvalidArgumentError(
            f"a pool of {capacity} bytes holds no {page_mib} MiB page: raise --memory-gib or lower --page-mib",
            capacity_bytes=capacity, page_bytes=page,
        )
    if device == "cpu":
        return PagePool(pages * page, backend="host", device=0, page_bytes=page, prefault=prefault)
    return PagePool(pages * page, backend="cuda", device=index, page_bytes=page)


def build_host_cache(gib: float, directory: str | None):
    """The host checkpoint cache of ``gib`` GiB in ``directory`` (the default tmpfs when None); None for 0 GiB."""
    if not gib:
        return None
    from ..memory.cache_files import default_root
    from ..memory.host_cache import HostCacheConfig, HostCheckpointCache

    cfg = HostCacheConfig(capacity_bytes=int(gib * GiB), root=directory or default_root())
    # It checks that this user can make files there (found in review: a directory of another user passed here,
    # and every load then failed untyped); its error is told against the flag.
    try:
        return HostCheckpointCache(cfg)
    except errors.InvalidArgumentError as e:
        raise errors.InvalidArgumentError(f"--host-cache-dir: {e.message}", path=cfg.root) from None


def prewarm_engine(device: str, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    elif device.startswith("cpu"):
        # torch's own default counts the cores of the affinity, not a cgroup's CPU quota (docker --cpus, a
        # Kubernetes limit): capped at the quota, or each of those cores gets a thread that waits for its turn
        from warmserve.host_cpus import usable_cores

        torch.set_num_threads(min(torch.get_num_threads(), usable_cores()))
    import warmserve.engine  # noqa: F401  (the import is the prewarming)

    if device.startswith("cuda"):
        from warmserve.engine.parallel import indexed_device

        torch.cuda.set_device(indexed_device(device))
        torch.zeros(1, device=device)  # creates the CUDA context now, not on the first request


def main(args: argparse.Namespace) -> int:
    try:
        return serve(args)
    except errors.WarmServeError as e:  # a bad flag or a pool that cannot be made: say why, no traceback
        say_stderr(f"warmserve worker: {type(e).__name__}: {e}")
        return 2


def say_stderr(line: str) -> None:
    """``line`` to stderr, or nowhere when stderr cannot take it. Found in review: with its log (`serve --log-dir`)
    on a full disk a restarted worker's banner raised ENOSPC, so it exited 1 at every restart and the model went
    unserved; serving needs no disk, and its lost log lines are said by the controller (launch.spawn_worker)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s worker %(levelname)s %(message)s")
    check_args(args)
    if args.exit_with_parent and os.getppid() != args.exit_with_parent:
        # The spawner died while this process started: said before the imports and the pool (found in review: a
        # few seconds of torch's import here, then the server's own check of the parent shut it down).
        log.warning("parent process %d is gone: shutting down", args.exit_with_parent)
        return 0
    if args.threads:
        # Before torch is imported, so its thread pools start at this size.
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    check_security(args)
    if not args.controller:
        check_bind(args.bind or DEFAULT_BIND)
    else:
        warn_unresolved_controller(args.controller)
    engine = engine_config(args)
    from .core import WorkerCore
    from .server import WorkerServer

    check_cuda(args.device)
    prewarm_engine(args.device, args.threads)
    pool = build_pool(args.device, args.memory_gib, page_mib=args.page_mib)
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}-{args.device.replace(':', '')}"
    cache = build_host_cache(args.host_cache_gib, args.host_cache_dir)
    core = WorkerCore(pool, device=args.device, worker_id=worker_id, emit=lambda peer, msg: None, engine=engine,
                      host_cache=cache)
    server = WorkerServer(
        core,
        bind=None if args.controller else (args.bind or DEFAULT_BIND),
        controller=args.controller,
        heartbeat_interval_s=args.heartbeat_interval_s,
        peer_timeout_s=args.peer_timeout_s,
        exit_with_parent=args.exit_with_parent,
        curve_server_key=args.curve_server_key,
        curve_secret_key=args.curve_secret_key,
        curve_clients_dir=args.curve_clients_dir,
        insecure=args.insecure,
        host_name=args.host_name or "",
        **({"max_queued_bytes": args.max_queued_mib << 20} if getattr(args, "max_queued_mib", None) else {}),
    )
    # Its own address: with --controller the endpoint is the controller's, which the worker connects to.
    where = (f"on host {socket.gethostname()} (pid {os.getpid()}), connecting to the controller at {server.endpoint}"
             if args.controller else f"serving at {server.endpoint}")

    def stop(signum, frame):
        # SIGTERM (a container stop, a pod eviction): a drain (WorkerServer.drain); the second, or one with nothing
        # to drain for, leaves the loop at its next turn, frees everything, exits 0. Flags only: the loop, on this
        # same thread, acts on them between its turns.
        if not server.drain(args.drain_timeout_s):
            core.stop_signalled = core.stopping = True

    signal.signal(signal.SIGTERM, stop)
    # Found in review: a worker started from a terminal or an ssh session was killed on the spot when that closed
    # (SIGHUP's default), its requests in flight lost; now it drains as on SIGTERM. Started under `nohup`, SIGHUP
    # stays ignored, as asked.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, stop)
    try:
        # In here: a write that fails (the reader gone) still closes the server and the pool.
        if args.ready_fd is not None:
            import msgspec

            with os.fdopen(args.ready_fd, "wb") as f:
                f.write(msgspec.json.encode(server.hello()) + b"\n")
        say_stderr(f"warmserve worker {worker_id} on {args.device} {where}")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        core.close()
        server.close()
        if cache is not None:  # after the core: its loads, which read the entries, have ended
            cache.close()
        close = getattr(pool, "close", None)
        if close is not None:
            close()
    return 0
