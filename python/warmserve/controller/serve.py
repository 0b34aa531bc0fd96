"""`warmserve serve`: the OpenAI-compatible server.

With no arguments it writes the demo checkpoints if absent and serves them on local CPU workers (or one worker
per GPU). ``--config FILE`` (TOML or YAML) names models, devices, policy and limits; flags override the file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import threading

import msgspec

from warmserve.config import POLICY_INF_HINT, ClusterConfig, ModelSpec, policy_number_ok
from warmserve.config_file import cluster_config_from_dict, policy_table_keys, read_config_file
from warmserve.controller.accept_refusal import AcceptRefusal
from warmserve.controller.history_record import starting_history
from warmserve.controller.open_files import AcceptErrorLog, raise_open_files_limit
from warmserve.controller.serve_terminal import say as _say, stop_signals, watch_parent, write_line
from warmserve.errors import InvalidArgumentError, bind_error
from warmserve.geometry import is_page_size
from warmserve.outputs import check_output_folder

log = logging.getLogger("warmserve.controller")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="cluster config, .toml or .yaml (default: the demo models)")
    p.add_argument("--host", default=None, help="HTTP interface (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $WARMSERVE_API_KEY if set and not empty, "
                        "else the config file's server.api_key, else no key)")
    p.add_argument("--allowed-origins", default=None, metavar="ORIGINS", help="comma-separated origins whose web "
                   "pages may call the API from a browser (CORS), e.g. http://localhost:3000; * for any (default none)")
    p.add_argument("--model", action="append", default=None, metavar="PATH[=NAME]",
                   help="serve this checkpoint folder (repeatable), named NAME (default: the folder's name), or a "
                        "Hugging Face repo id ORG/NAME whose snapshot the local Hugging Face cache holds (nothing is "
                        "downloaded; named the repo id); replaces the config's models. A PATH holding '=' that is a "
                        "folder is taken whole")
    p.add_argument("--devices", default=None, help="comma-separated local devices (cuda:0,cuda:1 or cpu:0,cpu:1)")
    p.add_argument("--cpu-workers", type=int, default=None, help="CPU workers when there is no GPU (default 2)")
    p.add_argument("--remote-workers", type=int, default=None,
                   help="workers on other hosts to wait for (they run `warmserve worker --controller ADDR`)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="start the workers on an existing Ray cluster (pip install 'warmserve[ray]'): one per GPU, or "
                        "--cpu-workers per node without GPUs, on every node; ADDRESS: its head (HOST:6379), "
                        "default the cluster this machine belongs to. Nodes on other hosts need --bind on a "
                        "reachable address")
    p.add_argument("--bind", default=None,
                   help="ZeroMQ address workers connect to (default: a socket only this user's processes on "
                        "this machine can reach; tcp://HOST:PORT for workers on other hosts)")
    p.add_argument("--policy", default=None, help="policy by name (default warmserve); `warmserve simulate --help` "
                                                   "lists them")
    p.add_argument("--window-s", type=float, default=None,
                   help="forecast window, seconds (default 300); the same as --policy-option window_s=...")
    p.add_argument("--policy-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a PolicyConfig field over the config file's [policy] table (repeatable), "
                        "e.g. instance_capacity=16")
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="most sequences one instance runs at once (default: the policy's instance_capacity)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="most tokens one engine step computes")
    p.add_argument("--max-kv-blocks", type=int, default=None,
                   help="most KV blocks one instance may hold (default 0: as many as the pool maps)")
    p.add_argument("--cpu-worker-threads", type=int, default=None,
                   help="torch threads per CPU worker (default: the cores this process may use, shared among "
                        "the workers)")
    p.add_argument("--worker-page-mib", type=int, default=None,
                   help="page size of each started worker's pool, MiB, a multiple of 2 (default, or 0: 32 when "
                        "every worker is on a GPU, else 2; larger pages cost fewer driver calls per GiB on GPUs: "
                        "bench/switch/README.md)")
    p.add_argument("--host-cache-gib", type=float, default=None,
                   help="load checkpoints through a host checkpoint cache of this many GiB shared by each machine's "
                        "workers (a second load of a model there reads host memory, not its files; default 0: off); "
                        "it outlives the server: --host-cache-dir")
    p.add_argument("--host-cache-dir", default=None, metavar="DIR",
                   help="that cache's directory, a tmpfs (default /dev/shm/warmserve-ckpt); with -UID appended "
                        "where another user holds that one. Its entries persist "
                        "after the server exits, so that the next start (any server on this machine using DIR) "
                        "loads them from memory; they keep host memory (RAM) in use up to the capacity "
                        "(--host-cache-gib; least recently used entries are evicted when a new one needs room) "
                        "until a reboot. To free that memory, `rm -r DIR` while no server uses it")
    p.add_argument("--history", default=None, help="per-window load history (CSV or JSON) that seeds forecasts")
    p.add_argument("--record-history", default=None, metavar="FILE",
                   help="keep the load this server measures in FILE (CSV, --history's rows included, rewritten as "
                        "each forecast window closes), to give as --history at the next start; an existing FILE "
                        "must also be the --history, so nothing in it is lost")
    p.add_argument("--load-timezone", default=None, metavar="ZONE",
                   help="IANA time zone whose days the load follows (e.g. America/New_York): forecasts keep its "
                        "hours across daylight-saving switches (default: this machine's local zone)")
    p.add_argument("--curve-dir", default=None, help="directory of ZeroMQ CURVE keys; turns on CURVE to workers")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --bind without --curve-dir (any host that reaches it can join as a "
                        "worker); for trusted networks only")
    p.add_argument("--log-dir", default=None, help="write each local worker's log here")
    p.add_argument("--exit-with-parent", type=int, default=None, metavar="PID",
                   help="stop (as on SIGTERM) once process PID, which must be the parent, exits: for a program that "
                        "runs the server as its child (the benchmarks do)")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   help="what goes to stderr (default INFO): INFO has one access-log line per HTTP request "
                        "(logger warmserve.access: method, path, model, status, prompt and completion tokens, TTFT, "
                        "total time, request id) and worker joins and losses; WARNING keeps errors and problems only. "
                        "Start-up progress is printed whatever the level")



def split_model_arg(arg: str) -> tuple[str, str]:
    """``--model PATH[=NAME]`` as (PATH, NAME; "" for the folder's name). An existing folder is taken whole, else the
    split is at the last "=" whose left side is a folder, else at the first (a path on a remote worker's disk).
    Found in review: training outputs name folders ``step=1000``, and the first "=" cut such a path for good."""
    if os.path.isdir(arg):
        return arg, ""
    for i in reversed([i for i, c in enumerate(arg) if c == "="]):
        if os.path.isdir(arg[:i]):
            return arg[:i], arg[i + 1:]
    path, _, name = arg.partition("=")
    return path, name


def build_config(args) -> ClusterConfig:
    from warmserve.policy.config import parse_policy_options

    data = read_config_file(args.config) if args.config else None
    cfg = cluster_config_from_dict(data) if data is not None else ClusterConfig()
    # the options this run sets, and where, for note_shadowed: the file's table, then the flags over it
    given = {k: f"config {where}" for k, where in policy_table_keys(data or {}).items()}
    server, ctl, top, engine = {}, {}, {}, {}
    for flag in ("host", "port", "allowed_origins"):
        if getattr(args, flag) is not None:
            server[flag] = getattr(args, flag)
    # Flag > environment > file. An empty $WARMSERVE_API_KEY (a container's default export) counts as unset:
    # found in review, it replaced a config file's key with none and served without authentication, unwarned.
    # An empty --api-key is refused rather than taken as "no key": README's `--api-key "$KEY"` with $KEY unset
    # turned authentication off, over a config file's key (found in review). No key at all: leave the flag out.
    for flag in ("devices", "history", "record_history", "log_dir"):  # found in review: "" meant the default
        if getattr(args, flag) is not None and not getattr(args, flag).strip(", "):
            name = "--" + flag.replace("_", "-")
            raise InvalidArgumentError(f'{name} {getattr(args, flag)!r} names nothing (an unset variable in {name} '
                                       f'"$VAR"?): give one, or leave {name} out', flag=name)
    if args.api_key == "":
        raise InvalidArgumentError('--api-key "" is empty (an unset variable in --api-key "$KEY"?): give the key, '
                                   "or leave --api-key out to use $WARMSERVE_API_KEY or the config file's "
                                   "server.api_key", flag="--api-key")
    key = args.api_key if args.api_key is not None else (os.environ.get("WARMSERVE_API_KEY") or None)
    if key is not None:
        server["api_key"] = key
    for flag, field in (("bind", "bind"), ("policy", "policy"), ("history", "history_path"),
                        ("record_history", "history_record_path"),
                        ("curve_dir", "curve_dir"), ("load_timezone", "load_timezone")):
        if getattr(args, flag) is not None:
            ctl[field] = getattr(args, flag)
    options = list(args.policy_option)
    if args.window_s is not None:
        if any(o.partition("=")[0].strip() == "window_s" for o in options):
            # found in review: the --policy-option, applied after, silently won over --window-s
            raise InvalidArgumentError("--window-s and --policy-option window_s=... both set the forecast window: "
                                       "give one", option="window_s")
        options.insert(0, f"window_s={args.window_s}")
    for option in options:
        # PolicyConfig answers a NaN window with "cannot convert float NaN to integer", naming nothing.
        key, _, text = option.partition("=")
        key = key.strip()
        try:
            value = float(text)
        except ValueError:
            continue
        if not policy_number_ok(key, value):
            raise InvalidArgumentError(f"policy option {key}: {text.strip()} is not a finite number "
                                       f"({POLICY_INF_HINT})", option=key)
    if args.insecure:
        ctl["insecure"] = True
    if options:
        ctl["policy_config"] = parse_policy_options(options, cfg.controller.policy_config)
        given.update((o.partition("=")[0].strip(), "--policy-option") for o in options)
    for flag in ("max_num_seqs", "max_batch_tokens", "max_kv_blocks"):
        if getattr(args, flag) is not None:
            engine[flag] = getattr(args, flag)
    if args.worker_page_mib is not None:
        # found in review: ClusterConfig's refusal named worker_page_bytes and bytes (--worker-page-mib 3: "got
        # 3145728"), not the flag and the MiB it was given
        if args.worker_page_mib and not is_page_size(args.worker_page_mib << 20):
            raise InvalidArgumentError(f"--worker-page-mib must be a positive multiple of 2 (MiB), or 0 for the "
                                       f"default by device, got {args.worker_page_mib}", flag="--worker-page-mib")
        top["worker_page_bytes"] = args.worker_page_mib << 20
    if args.host_cache_gib is not None:
        if not math.isfinite(args.host_cache_gib) or args.host_cache_gib < 0:
            raise InvalidArgumentError(f"--host-cache-gib must be a finite number >= 0 (0: no cache), got "
                                       f"{args.host_cache_gib}", key="host_cache_bytes")
        top["host_cache_bytes"] = int(args.host_cache_gib * (1 << 30))
        if not top["host_cache_bytes"]:  # off: a config file's directory goes with it (found in review: refused)
            top["host_cache_dir"] = ""
    if args.host_cache_dir is not None:
        top["host_cache_dir"] = args.host_cache_dir
    if args.model:
        specs = []
        for m in args.model:
            path, name = split_model_arg(m)
            specs.append(ModelSpec(path=path, name=name))
        top["models"] = tuple(specs)
    if args.devices:
        top["devices"] = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    for flag in ("cpu_worker_threads", "cpu_workers", "remote_workers"):
        if getattr(args, flag) is not None:
            top[flag] = getattr(args, flag)
    try:
        out = dataclasses.replace(
            cfg, server=dataclasses.replace(cfg.server, **server),
            controller=dataclasses.replace(cfg.controller, **ctl), engine=msgspec.structs.replace(cfg.engine, **engine),
            **top)
    except InvalidArgumentError as e:  # a key from $WARMSERVE_API_KEY is not named as --api-key's (found in review)
        raise _named_by_flag(e, {**server, **ctl, **engine, **top, "api_key": args.api_key}) from None
    if args.cpu_workers is not None and out.devices:
        # Found in review: the devices' workers were started and --cpu-workers dropped, without a word.
        where = f"--devices {args.devices}" if args.devices else f"the config file's devices ({args.config})"
        cpus = ",".join(f"cpu:{i}" for i in range(max(args.cpu_workers, 1)))
        raise InvalidArgumentError(
            f"--cpu-workers {args.cpu_workers} and {where} both say which workers to start: with devices set, one "
            f"worker is started on each of {list(out.devices)} and --cpu-workers is not used. Fix: drop "
            f"--cpu-workers, or list the cpu devices (e.g. --devices {cpus})", flag="--cpu-workers",
            devices=list(out.devices))
    note_shadowed(out.controller, given)
    check_policy_fixes(out.controller)
    wide = [m.name or m.path for m in out.models if m.tp > 1]
    if wide and "colocate_tp" in given and out.controller.policy_config.colocate_tp:
        # found in review: taken off at the start with a line at INFO only (Controller: the workers run a shard
        # alone); the default is on, so only a value given is said here
        print(f"warmserve serve: colocate_tp = true ({given['colocate_tp']}) is not taken: a worker runs a "
              f"tensor-parallel shard alone, so {wide} each run alone on their workers", file=sys.stderr, flush=True)
    return out


#: The flags whose names are not their config field's, dashed (``_named_by_flag``).
_FLAG_OF_FIELD = {"history_path": "--history", "history_record_path": "--record-history", "api_key": "--api-key",
                  "worker_page_bytes": "--worker-page-mib", "host_cache_bytes": "--host-cache-gib"}


def _named_by_flag(e: InvalidArgumentError, given: dict) -> InvalidArgumentError:
    """A config class's refusal of a value a flag gave, reworded to name the flag first (found in review: `serve
    --port -1` said "ServerConfig.port must be ...", naming no flag); the field's words stay, for config files."""
    field = e.fields.get("field") or e.fields.get("key")
    if given.get(field) is None:  # the config file's value, or a check of several fields: its words already fit
        return e
    flag = _FLAG_OF_FIELD.get(field, "--" + field.replace("_", "-"))
    return InvalidArgumentError(f"{flag}: {e.message}", **dict(e.fields, flag=flag))


def check_policy_fixes(ctl) -> None:
    """The policy options with what the policy fixes (``overrides``), as ``make_policy`` builds them, refused now
    with advice that can work. Found in review: `--policy autoscale --policy-option consolidate=true` started, then
    failed advising coserve_tpot_s > 0, which autoscale fixes to 0 (following the advice failed the same way)."""
    from warmserve.policy.registry import POLICIES

    if (variant := POLICIES.get(ctl.policy)) is None:
        return
    try:
        dataclasses.replace(ctl.policy_config, **variant.overrides)
    except InvalidArgumentError as e:
        if ctl.policy_config.consolidate and variant.overrides.get("coserve_tpot_s", 1.0) <= 0:
            raise InvalidArgumentError(
                f"policy {ctl.policy!r} fixes coserve_tpot_s=0 (no co-serving), and consolidate=true moves quiet "
                f"models onto co-serving hosts: no coserve_tpot_s given reaches {ctl.policy}. Fix: consolidate=false "
                f"(--policy-option consolidate=false, or consolidate = false in the config's [policy]), or another "
                f"policy (e.g. --policy warmserve)", policy=ctl.policy, option="consolidate") from None
        fixed = ", ".join(f"{k}={v}" for k, v in variant.overrides.items() if getattr(ctl.policy_config, k) != v)
        raise InvalidArgumentError(
            f"policy {ctl.policy!r} fixes {fixed}, and with that the policy options given fail: {e.message}. Fix: "
            f"change the options that need otherwise, or choose another policy", policy=ctl.policy) from None


def note_shadowed(ctl, given: dict[str, str]) -> None:
    """Say on stderr which of the options ``given`` (option -> where it was set) the policy ``ctl.policy`` does
    not take, as `warmserve simulate` says it (``policy.registry.shadowed_options``). Found in review: `serve
    --policy autoscale --policy-option prewarm=true` ran with prewarm off, and a config file's [policy] table under
    `[controller] policy = "autoscale"` the same, without a word."""
    from warmserve.policy.registry import shadowed_options

    for line in shadowed_options(ctl.policy_config, given, [ctl.policy]):
        print(f"warmserve serve: {line}", file=sys.stderr, flush=True)


#: Connections the HTTP socket queues before they are accepted (the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 1024


class _Stopped(Exception):
    """A stop signal (SIGINT, SIGTERM, SIGHUP: ``serve_terminal.stop_signals``) came while the server was starting."""


async def serve(cfg: ClusterConfig, *, log_dir: str | None = None, ready=None,
                ray_address: str | None = None) -> None:
    """Run until SIGINT/SIGTERM/SIGHUP, then drain: in-flight requests finish, new ones get 503; a second signal stops
    the drain. ``ray_address``: start the workers on that Ray cluster ("auto": the one this machine belongs to)
    instead of as local processes."""
    from aiohttp import web

    from warmserve.controller.api import Api
    from warmserve.controller.launch import start_cluster, with_defaults
    from warmserve.controller.starting_site import StartingSite

    raise_open_files_limit()  # before the listener and the workers' sockets: each connection holds a descriptor
    if ray_address is None:
        check_local_devices(cfg.devices)
    # The HTTP port first: one in use is an error now, not after every worker has started (found in review). It
    # listens from here; connections wait in its backlog until the site serves them.
    try:
        listener = socket.create_server((cfg.server.host, cfg.server.port), backlog=LISTEN_BACKLOG,
                                        family=socket.AF_INET6 if ":" in cfg.server.host else socket.AF_INET)
    except OSError as e:  # found in review: a bare OSError, exit 1, when `serve` ran twice on the default port
        raise bind_error("the HTTP server", f"{cfg.server.host}:{cfg.server.port}", e.errno, e.strerror,
                         option="--port", any_host="--host 0.0.0.0", example="127.0.0.1 and a free --port") from None
    # Signals from here on: a SIGTERM or Ctrl-C during start-up stops the start and its workers (found in review:
    # the default handlers ended the controller on the spot, and workers still starting ran on; a Ctrl-C while the
    # demo checkpoints were written read as their writer failing, with its KeyboardInterrupt traceback). Once
    # stopping, a second one ends the drain (found in review: it did nothing, and shutdown took drain_timeout_s).
    stop = asyncio.Event()
    signals = 0
    controller = None

    def on_signal():
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1 and controller is not None:
            controller.end_drain()

    loop = asyncio.get_running_loop()
    for sig in stop_signals():
        loop.add_signal_handler(sig, on_signal)
    loop.set_exception_handler(AcceptRefusal(AcceptErrorLog()))
    if not cfg.models:
        _say("no models named (--model, --config): writing the demo checkpoints if absent (first run: ~20 s)")

    def prepare():
        ready_cfg = with_defaults(cfg)
        return ready_cfg, starting_history(ready_cfg.controller)

    starting_site = StartingSite(listener, LISTEN_BACKLOG)  # 503s until the API's site takes the port over
    await starting_site.start()
    try:
        # The demo writer and the workers are child processes in the terminal's process group: a Ctrl-C stops
        # them too, and their failure, a moment before the signal reaches this loop, is the stop's.
        cfg, history = await _unless_stopped(_in_daemon_thread(prepare), stop, grace_s=1.0)
        if stop.is_set():
            raise _Stopped()
        _say(f"starting workers and loading {len(cfg.models)} model(s): "
             f"{', '.join(m.name or os.path.basename(m.path.rstrip('/')) for m in cfg.models)}")
        if ray_address is not None:
            from warmserve.controller.ray_launch import start_ray_cluster

            starting = start_ray_cluster(cfg, ray_address, history=history, log_dir=log_dir)
        else:
            starting = start_cluster(cfg, history=history, log_dir=log_dir)
        controller = await _unless_stopped(starting, stop, grace_s=1.0)
    except _Stopped:
        await starting_site.close()
        listener.close()
        _say("stopped while starting")
        return
    except BaseException:
        await starting_site.close()
        listener.close()
        raise
    await starting_site.close()
    if ray_address is not None:
        # Ray's connection (made on the starting thread) put Ray's own SIGTERM handler in front of ours, which
        # printed a stack trace at every stop (found in review): ours again, as before the start
        for sig in stop_signals():
            loop.remove_signal_handler(sig)
            loop.add_signal_handler(sig, on_signal)
    api = Api(controller, api_key=cfg.server.api_key, max_concurrent_requests=cfg.server.max_concurrent_requests,
              allowed_origins=cfg.server.allowed_origins)
    # handler_cancellation: a client that hangs up cancels its handler, and with it its request (the generation
    # is aborted on its worker), streaming or not; aiohttp leaves handlers running by default. keepalive_timeout:
    # aiohttp's timer runs from a connection's start and closes it only while it waits for a whole request, never
    # under one. Its default, 3630 s: found in review, connections that sent half a header, or nothing, were held
    # for ever, and enough of them used every file descriptor, so that no client could connect.
    runner = web.AppRunner(api.app(), access_log=None, handle_signals=False, handler_cancellation=True,
                           keepalive_timeout=cfg.server.keepalive_timeout_s)
    await runner.setup()
    # SockSite listens again with its own backlog (aiohttp's default 128): the listener's must be passed on.
    site = web.SockSite(runner, listener, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError:
        await controller.close(drain=False)
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    # What exists now (modules, tokenizers, the policy) lives as long as the server: keep it out of the garbage
    # collector's scans, whose pauses would otherwise land on requests.
    import gc

    gc.collect()
    gc.freeze()
    # One machine-readable line: scripts and tests wait for it instead of sleeping.
    url = http_url(cfg.server.host, port)
    write_line(json.dumps({"serving": url, "workers_endpoint": controller.hub.endpoint,
                           "models": controller.model_names()}), sys.stdout)
    _say(f"ready: OpenAI API at {url}/v1 serving {', '.join(controller.model_names())} "
         f"(metrics at /metrics); Ctrl-C stops")
    if ready is not None:
        ready(port, controller)
    await stop.wait()
    _say(f"shutting down: draining in-flight requests up to {cfg.controller.drain_timeout_s:g} s; Ctrl-C again to "
         f"stop now")
    closing = asyncio.ensure_future(controller.close(drain=True))
    await asyncio.sleep(0)  # the close has set its drain deadline: a second signal from here on cuts it short
    if signals > 1:
        controller.end_drain()
    await closing
    await runner.cleanup()


def http_url(host: str, port: int) -> str:
    """The server's base URL: an IPv6 address in brackets (RFC 3986; found in review: http://::1:8432 was printed,
    which no client parses)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _unless_stopped(work, stop: asyncio.Event, grace_s: float = 0.0):
    """``work``'s result, or _Stopped once ``stop`` is set first (``work`` is then cancelled, and its own clean-up
    has run). A failure of ``work`` followed within ``grace_s`` seconds by the stop is the stop's."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        if grace_s and task.done() and not task.cancelled() and task.exception() is not None:
            await asyncio.wait([stopping], timeout=grace_s)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()  # done even if a stop came with it: the caller stops it the ordinary way
    if stop.is_set():
        if not task.cancelled():
            task.exception()  # retrieved: the stop caused it
        raise _Stopped()
    return task.result()


async def _in_daemon_thread(fn):
    """``fn()`` on a daemon thread: a stop need not wait for it, nor the interpreter's exit (a demo checkpoint
    writer it runs goes on alone, or got the same Ctrl-C)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def run() -> None:
        try:
            value, ok = fn(), True
        except BaseException as e:
            value, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop has closed: nobody waits for it any more
            pass

    threading.Thread(target=run, name="warmserve-serve-prepare", daemon=True).start()
    return await fut


#: Seconds check_local_devices waits for `nvidia-smi -L` before it leaves the check to the workers.
NVIDIA_SMI_TIMEOUT_S = 10.0


def check_local_devices(devices) -> None:
    """Refuse a cuda:N this machine has not got, before any worker starts (found in review: each worker failed
    inside torch, "module 'torch._C' has no attribute '_cuda_setDevice'"). Without torch, which the controller
    never imports: only when the answer is certain (CUDA_VISIBLE_DEVICES hides every GPU, no NVIDIA driver at all,
    or nvidia-smi's count); otherwise (nvidia-smi fails or times out: a busy or wedged driver says nothing about
    the devices) the worker checks its device itself."""
    cuda = [d for d in devices if d.startswith("cuda")]
    if not cuda:
        return
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() in ("", "-1"):
        visible = 0
    elif shutil.which("nvidia-smi") is not None:
        visible = _nvidia_smi_gpus()
        if visible is None:
            return
        if cvd is not None:
            visible = min(visible, len([d for d in cvd.split(",") if d.strip()]))
    elif not any(n.startswith("nvidia") for n in _listdir("/dev")) and not os.path.exists("/dev/dxg"):
        visible = 0
    else:
        return
    top = max(int(d.partition(":")[2] or 0) for d in cuda)
    if visible == 0:
        raise InvalidArgumentError(f"devices {', '.join(cuda)}: no CUDA device visible on this machine; use cpu:N "
                                   f"devices (or name none: CPU workers)", devices=list(cuda))
    if top >= visible:
        raise InvalidArgumentError(f"devices: cuda:{top} asked for, but only {visible} CUDA device(s) are visible "
                                   f"(cuda:0 to cuda:{visible - 1}); check CUDA_VISIBLE_DEVICES", visible=visible)


def _nvidia_smi_gpus() -> int | None:
    """The GPUs `nvidia-smi -L` lists, or None when it gives no answer (it failed or timed out). launch.visible_gpus
    takes no answer as 0, right for choosing devices, but here it refused cuda:N on a machine that has it (found
    in review)."""
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU "))


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


class BadHttpAtInfo(logging.Filter):
    """aiohttp.server logs each request its parser refuses (a bad request line, header or chunk) as an ERROR with a
    traceback, "Error handling request": the client's fault, not the server's, and one a port scanner repeats at
    will (found in review: such tracebacks filled the log). Those become one INFO line without the traceback; the
    server's own errors keep their level and traces."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or not isinstance(exc, HttpProcessingError) \
                or not str(record.msg).startswith("Error handling request"):
            return True
        record.msg = "aiohttp refused a malformed HTTP request from %s: %s: %s"
        record.args = (*(record.args or ("?",))[:1], type(exc).__name__, ascii(exc.message)[1:-1][:300])
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        # the logger let the record through as an ERROR: whether it takes INFO is asked again
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


#: The filter ``main`` puts on aiohttp.server (one instance: addFilter adds it once).
BAD_HTTP_AT_INFO = BadHttpAtInfo()


def main(args) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("aiohttp.server").addFilter(BAD_HTTP_AT_INFO)
    from warmserve.errors import WarmServeError, exit_status

    try:
        cfg = build_config(args)
        check_output_folder("--log-dir", args.log_dir)  # found in review: a file there was a bare FileExistsError
    except (OSError, ValueError) as e:
        print(f"warmserve serve: {e}", file=sys.stderr)
        return 2
    if getattr(args, "exit_with_parent", None) is not None and not watch_parent(args.exit_with_parent):
        print(f"warmserve serve: process {args.exit_with_parent} is not this one's parent (gone already?): not "
              f"starting", file=sys.stderr)
        return 0
    try:
        asyncio.run(serve(cfg, log_dir=args.log_dir, ray_address=getattr(args, "ray", None)))
    except (WarmServeError, OSError, ValueError) as e:
        # Startup failures (a worker that cannot start, a port in use, a bad checkpoint) read as one line; one
        # the caller must fix (a model path with no checkpoint) exits 2, as a bad option does (found in review: 1).
        _say(f"{type(e).__name__}: {e}")
        return exit_status(e)
    return 0
