"""Bring a cluster up: the controller, its local workers (one per GPU, or CPU workers), and remote ones joining.

Shared by `warmserve serve` and `warmserve.Cluster`, so both start a cluster the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import math
import os
import shutil
import socket
import subprocess
import sys

import zmq

from warmserve import __version__, protocol as P
from warmserve.config import (ClusterConfig, ModelSpec, default_demo_dir, memory_gib_arg, with_worker_page_bytes,
                              worker_cache_args)
from warmserve.controller.controller import Controller, check_tp_fits
from warmserve.controller.hub_sockets import LocalCurveKeys, remote_curve_hint
from warmserve.controller.models import controller_model
from warmserve.errors import GiB, InvalidArgumentError, OutOfMemoryError, WarmServeError, fmt_bytes
from warmserve.geometry import pages_for
from warmserve.host_cpus import usable_cores
from warmserve.worker import forkserver
from warmserve.policy.gpu_masks import MAX_GPUS_PER_SERVER

log = logging.getLogger("warmserve.controller")

#: Numbers the local workers of every cluster this process starts, so each has an id (and log file) of its own:
#: HOST-PIDwN-DEVICE with N counted across clusters. Found in review: two Clusters in one process both numbered
#: from w0, their workers had the same id and, with one log_dir, wrote one log file between them.
_worker_numbers = itertools.count()

#: ClusterConfig's own cpu_workers: set beside devices, only another value is worth a word (local_devices).
_CPU_WORKERS_DEFAULT = next(f.default for f in dataclasses.fields(ClusterConfig) if f.name == "cpu_workers")

#: Demo models `warmserve serve` uses with no config: small enough for a laptop's CPU.
DEFAULT_DEMO_MODELS = ("llama-20m", "qwen2-30m", "llama-90m")


def visible_gpus() -> int:
    """GPUs this process may use, without importing torch (the controller never needs it)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() in ("", "-1"):
        return 0
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if cvd is not None:
        n = min(n, len([d for d in cvd.split(",") if d.strip()]))
    return n


def local_devices(cfg: ClusterConfig) -> list[str]:
    """One worker per device of ``cfg.devices``; none given: one per visible GPU, else ``cfg.cpu_workers``."""
    if cfg.devices:
        # Found in review: a cpu_workers beside devices was dropped unsaid (`serve` refuses --cpu-workers with
        # devices; a ClusterConfig or file of both gets this word, the field's default says nothing).
        if cfg.cpu_workers != _CPU_WORKERS_DEFAULT:
            log.warning("cpu_workers=%d is not used: devices %s are set, one worker on each (fix: drop cpu_workers, "
                        "or list the cpu devices in devices)", cfg.cpu_workers, list(cfg.devices))
        return list(cfg.devices)
    n = visible_gpus()
    if n:
        return [f"cuda:{i}" for i in range(n)]
    return [f"cpu:{i}" for i in range(cfg.cpu_workers)]


def cpu_worker_memory_bytes(cfg: ClusterConfig, models) -> int:
    """The configured budget, or enough for the largest model twice over plus KV room (at least 1 GiB), in whole
    pages of the workers' size: found in review, with pages of 768 MiB or more the default held not even the
    smallest demo model and a page of KV (check_weights_fit refused it, asking for the default)."""
    if cfg.cpu_worker_memory_bytes:
        return cfg.cpu_worker_memory_bytes
    biggest = max(m.weight_bytes for m in models)
    want = 2 * biggest + (256 << 20)
    paged = (2 * pages_for(biggest, cfg.worker_page_bytes) + 2) * cfg.worker_page_bytes
    return max(1 << 30, -(-want // (256 << 20)) * (256 << 20), paged)


def weights_need_bytes(m, page_bytes: int) -> int:
    """What model ``m``'s weights (one rank's share under tp), mapped in whole pages with one page of KV beside them,
    take of a worker's pool of ``page_bytes`` pages: a smaller pool can never start it."""
    return (pages_for(m.weight_bytes / m.spec.tp, page_bytes) + 1) * page_bytes


def _gib_up(n_bytes: int) -> float:
    """``n_bytes`` in GiB, rounded up to 0.01: the --memory-gib a refusal tells a worker to take."""
    return math.ceil(n_bytes / GiB * 100) / 100


def refusal(hello: P.Hello, models) -> str | None:
    """Why a worker cannot be admitted: it speaks another protocol version (``protocol.PROTOCOL_VERSION``), or its
    pool holds none of ``models``; None: it holds one at least (or its Hello predates the pool fields). Found in
    review: a remote worker started with too small a --memory-gib was admitted, and each request waited out
    request_timeout_s (120 s) for an instance that never came, with nothing logged; and a worker of an older warmserve
    was admitted and dropped the fields it did not know (min_p, min_tokens: a client asking 10 tokens got fewer)."""
    if hello.protocol_version != P.PROTOCOL_VERSION:
        theirs = f"{hello.protocol_version}{' (before versions)' if not hello.protocol_version else ''}"
        return (f"refused worker {hello.worker_id} ({hello.device}, pid {hello.pid}): it speaks warmserve protocol "
                f"version {theirs} and this controller version {P.PROTOCOL_VERSION} (warmserve {__version__}), so "
                f"fields one side sends the other may drop unsaid: install the same warmserve version on both")
    if not hello.capacity_bytes or not hello.page_bytes:
        return None
    needs = {m.name: weights_need_bytes(m, hello.page_bytes) for m in models}
    if not needs or min(needs.values()) <= hello.capacity_bytes:
        return None
    listed = ", ".join(f"{name!r} needs {fmt_bytes(n)}" for name, n in needs.items())
    fix_gib = _gib_up(min(needs.values()))
    return (f"refused worker {hello.worker_id} ({hello.device}, pid {hello.pid}): its pool of "
            f"{fmt_bytes(hello.capacity_bytes)} ({hello.capacity_bytes / GiB:.3g} GiB: --memory-gib in whole pages of "
            f"{fmt_bytes(hello.page_bytes)}) holds none of the models ({listed}, weights and a KV page): start it "
            f"again with --memory-gib {fix_gib:g} or more")


def tell_refused(sock, ident: bytes, hello: P.Hello, why: str, log_it: bool) -> None:
    """Refuse a worker's Hello (``WorkerHub._admissible``): log ``why`` (``log_it``: once per process, though it says
    Hello each beat) and send it to the worker, which logs it on its side (found in review: a refused worker said
    nothing, its Hello left unanswered). A worker from before ``Refused`` cannot read it (its link would take it for
    the controller's answer and stop saying Hello): it is left unanswered, as before."""
    if log_it:
        log.error("%s", why)
    if hello.protocol_version < P.REFUSED_SINCE_VERSION:
        return
    try:
        sock.send_multipart([ident, P.encode(P.Refused(reason=why))], zmq.NOBLOCK)
    except zmq.ZMQError:  # gone again: it is told at its next Hello
        pass


def unheld(m, pools) -> tuple[str, dict] | None:
    """Why none of ``pools`` (the (capacity_bytes, page_bytes) of every worker admitted so far) can hold model
    ``m``, as (message, fields of the error); None when one can, when there are none (yet), or when one is unknown
    (a Hello from before the pool fields). Found in review: workers admitted for another model could not hold this
    one, and each of its requests waited out request_timeout_s (120 s) for a 504, nothing logged."""
    pools = list(pools)
    if not pools or not all(c and p for c, p in pools):
        return None
    needs = [(weights_need_bytes(m, p), c) for c, p in pools]
    if any(need <= c for need, c in needs):
        return None
    need, largest = min(n for n, _ in needs), max(c for _, c in needs)
    fix_gib = _gib_up(need)
    shard = f" (one of {m.spec.tp} ranks)" if m.spec.tp > 1 else ""
    return (f"no admitted worker's pool can hold model {m.name!r}: its weights{shard} and a KV page need "
            f"{fmt_bytes(need)}, and the largest pool of the workers admitted so far holds {fmt_bytes(largest)}: "
            f"start a worker with --memory-gib {fix_gib:g} or more (a GPU worker: on a GPU with that much memory); "
            f"its requests fail until one joins",
            {"model": m.name, "need_bytes": need, "largest_pool_bytes": largest, "pool_sizes": len(pools)})


def check_weights_fit(models, pool_bytes: int, page_bytes: int) -> None:
    """Refuse a model whose weights (one rank's share under tp), mapped in whole pages with one page of KV beside
    them, exceed a worker's pool: no worker could ever start it. Found in review: such a model was accepted, and
    each of its requests waited out request_timeout_s (120 s) for an instance that never came."""
    for m in models:
        need = weights_need_bytes(m, page_bytes)
        if need > pool_bytes:
            raise InvalidArgumentError(
                f"model {m.name!r}: its weights{f' (one of {m.spec.tp} ranks)' if m.spec.tp > 1 else ''} and a "
                f"KV page need {fmt_bytes(need)} of a CPU worker's pool, which holds {fmt_bytes(pool_bytes)}: raise "
                f"cpu_worker_memory_bytes or leave it 0 (sized from the models), or split the model over more "
                f"workers (tp)",
                model=m.name, need_bytes=need, pool_bytes=pool_bytes, tp=m.spec.tp)


#: Host memory a local CPU worker process takes beside its pool, bytes (torch, the engine, a prefill's activations;
#: with the fork server's share). Measured in review (2026-12-06, a memory cgroup, 2 workers of 1 GiB pools serving
#: the demo models): OOM-killed at start at 2.20-2.35 GiB, four 3,300-token prompts at once served at 2.4 GiB. Raised
#: from 256 MiB in the memory review (2026-12-07, ``cpu_workers = 1``, a 1 GiB pool, the whole server in a cgroup:
#: tests/integration/test_memory_review_worker_cgroup.py): beyond the pool the group's RSS was 272 MiB serving one
#: model, 354 MiB with 3 co-served demo models each prefilling 1,900-3,900 tokens at once, 490 MiB with 6 (the
#: worker's own anonymous RSS 175, 257 and 393 MiB; the fork server's 147, the controller's 50); one llama-20m
#: answering a 1,900-token prompt was SIGKILLed under the 256 MiB plan (a 1,370 MiB limit), and the 6 co-served
#: models served under 512 MiB's (1,615 MiB). It grows with the engines co-served on a worker (about 45 MiB each
#: for these models) and with their width: a flat figure, checked at start, before the models a worker will hold.
WORKER_PROCESS_BYTES = 512 << 20


def check_host_memory(workers: int, pool_bytes: int) -> None:
    """Refuse local CPU workers whose pools and processes together pass the host memory there is
    (``memory.host_memory_room``): each pool is checked alone as its worker makes it, and workers started together
    each saw room for their own, so their fallocates together met the OOM killer (found in review: 3 workers of 9
    GiB on a 24 GiB machine, one SIGKILLed before it registered, "exited with status -9"); and pools that fit with
    nothing left for the processes themselves met it too (found in review: under a 2.25 GiB limit, 2 workers of 1 GiB
    pools)."""
    from warmserve.memory.pool import host_memory_room  # the compiled core, only once workers are started

    room, what = host_memory_room()
    need = workers * (pool_bytes + WORKER_PROCESS_BYTES)
    if room is not None and need > room:
        raise OutOfMemoryError(
            f"{workers} local CPU workers with pools of {fmt_bytes(pool_bytes)} need {fmt_bytes(need)} of host "
            f"memory (each pool and about {fmt_bytes(WORKER_PROCESS_BYTES)} for its process), and {fmt_bytes(room)} "
            f"is available ({what}): lower cpu_workers or cpu_worker_memory_bytes (0: sized from the models), or "
            f"free host memory", asked_bytes=need, free_bytes=room, total_bytes=room, workers=workers,
            pool_bytes=pool_bytes, process_bytes=WORKER_PROCESS_BYTES)


def check_host_cache_dir(directory: str) -> None:
    """Refuse a host cache folder this user cannot make files in before any worker starts: each local worker checks
    it as it starts (``cache_files.check_root``), and found in review, the error then reached the caller only as
    "local worker ... exited (status 2) before it registered", the reason in the worker's stderr alone."""
    from warmserve.memory.cache_files import check_root, default_root

    root = directory or default_root()
    try:
        check_root(root)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"host_cache_dir (--host-cache-dir): {e.message}", path=root) from None


def demo_specs(out_dir: str | None = None, names=DEFAULT_DEMO_MODELS) -> tuple[ModelSpec, ...]:
    """Write the demo checkpoints when absent (deterministic, skipped when up to date) and name them. The writer
    runs as `warmserve models demo` in a child process: it needs torch, and the controller should not carry it."""
    import sys

    from warmserve.engine.demo import WAITING_WORDS

    where = "" if out_dir else (" ($WARMSERVE_HOME/demo)" if os.environ.get("WARMSERVE_HOME") else
                                 " ($XDG_CACHE_HOME or ~/.cache, then warmserve/demo; $WARMSERVE_HOME/demo when set)")
    out_dir = out_dir or default_demo_dir()
    try:  # found in the locale review: a Latin-1 $XDG_CACHE_HOME failed in the writer, told to "make it writable"
        out_dir.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"the demo models' folder {os.fsencode(out_dir)!r}{where} holds bytes that are not UTF-8, and workers are "
            "sent checkpoint paths as UTF-8 text. Fix: set WARMSERVE_HOME to a folder whose path is UTF-8, or serve "
            "checkpoints of your own (--model, --config)", path=os.fsencode(out_dir).decode("utf-8", "replace"))
    proc = subprocess.Popen([sys.executable, "-m", "warmserve", "models", "demo", "--out", out_dir, "--models", *names],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    said = []
    try:
        for line in proc.stderr:
            said.append(line)
            if line.startswith(WAITING_WORDS):  # a wait on another writer, said as it starts (engine/demo.py)
                log.warning("%s", line.rstrip("\n").removeprefix("warmserve: "))
        proc.wait()
    except BaseException:  # a stop while it writes: the child is not left writing for nobody
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stderr.close()
    stderr = "".join(said)
    if proc.returncode == 2:
        # A refusal (a full or read-only disk, a folder that is a file): its one line, less the child command's
        # name, which a `serve` user never typed (found in review: "warmserve models demo: --out ...").
        last = (stderr.strip().splitlines() or ["exit status 2"])[-1].removeprefix("warmserve models demo: ")
        raise InvalidArgumentError(
            f"writing the demo models into {out_dir}{where} failed: {last}. Fix: give that folder room or make it "
            "writable, set WARMSERVE_HOME to a folder that is, or serve checkpoints of your own (--model, "
            "--config)", path=out_dir)
    if proc.returncode != 0:
        raise WarmServeError(f"writing the demo models into {out_dir} failed:\n{stderr[-2000:]}",
                             out_dir=out_dir)
    return tuple(ModelSpec(path=os.path.join(out_dir, n), name=n) for n in names)


async def start_cluster(cfg: ClusterConfig, *, history=None, log_dir: str | None = None) -> Controller:
    """Start the controller, spawn the local workers and wait until every expected worker has registered."""
    models = [controller_model(s) for s in cfg.models]
    devices = local_devices(cfg)
    cfg = with_worker_page_bytes(cfg, devices)
    if not devices and not cfg.remote_workers:  # found in review: refused as a tp that "the widest machine" lacks
        raise InvalidArgumentError("no workers to start: cpu_workers is 0, no devices are given or visible and "
                                   "remote_workers is 0; give cpu_workers >= 1, devices, or remote_workers",
                                   cpu_workers=cfg.cpu_workers)
    if not cfg.remote_workers:
        # every worker is one of these, on this machine: refused before any is spawned (the controller's own check
        # runs once they have all registered, which took the whole start-up of every worker to refuse it)
        check_tp_fits(models, min(len(devices), MAX_GPUS_PER_SERVER))  # the driver's servers hold at most 8
    mem = cpu_worker_memory_bytes(cfg, models)
    if not cfg.remote_workers and all(d.startswith("cpu") for d in devices):  # pools of this size, every one
        check_weights_fit(models, mem, cfg.worker_page_bytes)
    elif devices and all(d.startswith("cpu") for d in devices):
        # the other models may run on the remote workers, but a local pool must hold one (else it is refused)
        check_weights_fit([min(models, key=lambda m: weights_need_bytes(m, cfg.worker_page_bytes))], mem,
                          cfg.worker_page_bytes)
    local_cpu = sum(d.startswith("cpu") for d in devices)
    if local_cpu:
        check_host_memory(local_cpu, mem)
    if devices and cfg.host_cache_bytes:
        check_host_cache_dir(cfg.host_cache_dir)
    threads = cfg.cpu_worker_threads or max(1, usable_cores() // max(1, len(devices)))
    procs = []
    host = socket.gethostname()
    # Made after the checks above, which raise outside the try: a controller made before them was never closed
    # (found in review: its load history record's thread and file lock stayed, and a retry was refused).
    controller = Controller(cfg, models, history=history)
    try:
        # In here: whatever fails once the socket is bound closes it (a bind that fails leaves nothing itself).
        endpoint = await controller.start()
        connect = endpoint.replace("0.0.0.0", "127.0.0.1").replace("tcp://*:", "tcp://127.0.0.1:")
        if cfg.fork_cpu_workers and any(d.startswith("cpu") for d in devices):
            # Its imports off the event loop; each spawn then forks in milliseconds (worker/forkserver.py).
            await asyncio.to_thread(forkserver.prepare, cfg.worker_start_timeout_s)
        for dev in devices:
            wid = f"{host}-{os.getpid()}w{next(_worker_numbers)}-{dev.replace(':', '')}"
            # Kept by the controller: a local worker that dies is started again the same way (Controller._restart).
            spawn = controller.local_spawn[wid.encode()] = functools.partial(
                spawn_worker, connect, dev, memory_bytes=mem, threads=threads, worker_id=wid,
                heartbeat_interval_s=cfg.controller.heartbeat_interval_s, log_dir=log_dir,
                curve=controller.hub.curve_keys, page_bytes=cfg.worker_page_bytes,
                extra_args=worker_cache_args(cfg) + worker_log_args(), forked=cfg.fork_cpu_workers)
            procs.append((wid, spawn()))
        controller.local_procs = {wid.encode(): p for wid, p in procs}
        if cfg.remote_workers:  # said, so that whoever starts them knows where (found in review: a silent wait)
            # With CURVE, the keys too: a worker started as the hint said without them was refused; and no wait for
            # workers no key lets in, nor a stale DIR/server.key named (found in review: remote_curve_hint)
            keys = (remote_curve_hint(cfg.controller.curve_dir, controller.hub.local_curve[0], cfg.remote_workers)
                    if cfg.controller.curve_dir else "")
            log.warning("waiting up to %g s for %d remote worker(s): start each with `warmserve worker --controller "
                        "%s%s` (this host's reachable address in place of a wildcard)", cfg.worker_start_timeout_s,
                        cfg.remote_workers, endpoint, keys)
        if not procs and controller.hub.curve_keys is not None:  # no local worker reads them, nor says Hello
            controller.hub.curve_keys.drop_files()
        await controller.wait_for_workers(len(devices) + cfg.remote_workers, cfg.worker_start_timeout_s,
                                          procs=[p for _, p in procs])
    except BaseException:
        await controller.close(drain=False)
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    log.info("cluster up: %d workers, models %s, workers join at %s", len(devices) + cfg.remote_workers,
             [m.name for m in models], endpoint)
    return controller


def with_defaults(cfg: ClusterConfig) -> ClusterConfig:
    """No models named: the demo models (written if absent)."""
    if cfg.models:
        return cfg
    return dataclasses.replace(cfg, models=demo_specs())


#: The levels `warmserve worker --log-level` takes, lowest first.
_WORKER_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def worker_log_args() -> tuple[str, ...]:
    """The `warmserve worker` flag that gives a started worker this process's warmserve log level (`serve
    --log-level`, or a Cluster user's logging set-up), the highest level the worker takes at or below it. Found in
    review of the logs: workers always logged at their own default, WARNING, so their INFO lines (a drain's end, a
    reconnect to the controller) never showed whatever the server's level."""
    level = logging.getLogger("warmserve").getEffectiveLevel()
    name = logging.getLevelName(max([lv for lv in _WORKER_LEVELS if lv <= level], default=logging.DEBUG))
    return ("--log-level", name)


#: The --log-dir folders whose trouble (unwritable, or on a full disk) was said, and how: said once, not at every
#: worker (re)start, and said again should it come back after it cleared.
_log_dir_said: dict[str, str] = {}


def _say_log_dir(log_dir: str, trouble: str | None, message: str = "") -> None:
    was = _log_dir_said.get(log_dir)
    if trouble is None:
        if was is not None:
            del _log_dir_said[log_dir]
            log.info("worker logs in %s are written again (%s no more)", log_dir, was)
        return
    if was != trouble:
        _log_dir_said[log_dir] = trouble
        log.warning("%s (said once for this folder)", message)


def open_worker_log(log_dir: str, worker_id: str):
    """The worker's log file in ``log_dir`` (made again where it was removed), open to append, or None: the worker
    then writes to this process's stderr. Found in review: a --log-dir made read-only (or gone and not creatable)
    under a running server failed every restart of a worker with a traceback, and one on a full disk took the
    worker's log lines, unsaid; serving needs no disk, so the worker starts either way and the trouble is said
    once, with the fix."""
    path = os.path.join(log_dir, f"{worker_id}.log")
    try:
        os.makedirs(log_dir, exist_ok=True)
        out = open(path, "ab")
    except OSError as e:
        _say_log_dir(log_dir, "unwritable", f"worker logs: cannot write {path} ({e.strerror}): workers started now "
                     "write to this server's stderr instead; fix: make the folder writable (or free its disk), or "
                     "start with --log-dir elsewhere")
        return None
    try:
        st = os.statvfs(log_dir)
        full = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) == 0  # root may write the reserved blocks
    except OSError:
        full = False
    if full:
        _say_log_dir(log_dir, "disk full", f"worker logs: the disk of {log_dir} is full: the workers serve on, but "
                     "their log lines are lost until space is freed there; fix: free space on it, or start with "
                     "--log-dir elsewhere")
    else:
        _say_log_dir(log_dir, None)
    return out


#: A local worker's --peer-timeout-s: how long it waits for a silent controller before it aborts what runs there
#: and says Hello anew (which the controller then counts as the worker's loss). A local controller that has died is
#: caught sooner, by --exit-with-parent; one that is silent but alive is stopped (Ctrl-Z, `kill -STOP`, a debugger)
#: or stalled, and its workers are not lost for that. Found in review: with 10 s, a controller stopped for 30 s
#: came back to both workers "lost", warmserve_workers_lost_total 2, and every request in flight started over.
LOCAL_PEER_TIMEOUT_S = 3600.0


def spawn_worker(controller: str, device: str, *, memory_bytes: int, threads: int, worker_id: str,
                 heartbeat_interval_s: float, log_dir: str | None = None,
                 curve: LocalCurveKeys | None = None, page_bytes: int = 2 << 20,
                 extra_args: tuple[str, ...] = (), forked: bool = False):
    """Start `warmserve worker --controller ...` as a child that dies with this process; ``extra_args``: more
    of its flags (``config.worker_cache_args``); ``forked``: a CPU worker is forked from this process's fork
    server (worker/forkserver.py), a Popen-like ``ForkedProcess``; ``curve``: the controller's ``LocalCurveKeys``,
    whose files it is given are written again when gone and taken off the disk once the worker has said Hello."""
    cmd = [
        sys.executable, "-m", "warmserve", "worker", "--controller", controller,
        "--device", "cpu" if device.startswith("cpu") else device,
        "--worker-id", worker_id, "--heartbeat-interval-s", str(heartbeat_interval_s),
        "--exit-with-parent", str(os.getpid()), "--peer-timeout-s", str(LOCAL_PEER_TIMEOUT_S),
        "--page-mib", str(page_bytes >> 20), *extra_args,
    ]
    if curve is not None:
        server_key, secret_key = curve.paths()
        cmd += ["--curve-server-key", server_key, "--curve-secret-key", secret_key]
    if device.startswith("cpu"):
        cmd += ["--memory-gib", memory_gib_arg(memory_bytes), "--threads", str(threads)]
    env = dict(os.environ)
    if device.startswith("cpu"):
        env["OMP_NUM_THREADS"] = str(threads)
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    out = open_worker_log(log_dir, worker_id) if log_dir else None
    try:
        # A session of its own: Ctrl-C in a terminal reaches the controller, which drains and then stops its
        # workers, instead of killing the workers under the requests being drained.
        proc = forkserver.popen_worker(cmd, env=env, stdout=out or subprocess.DEVNULL, stderr=out or None,
                                       forked=forked and device.startswith("cpu"))
        if out is not None:
            proc.log_path = out.name  # what a start error quotes (Controller.wait_for_workers)
        if curve is not None:
            curve.started(proc.pid)
        return proc
    finally:
        if out is not None:
            out.close()
