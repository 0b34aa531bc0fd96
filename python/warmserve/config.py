"""Configuration shared across processes. Each concern has its own frozen dataclass; units are in field names.

One tree: ``ClusterConfig`` holds the controller's (``ControllerConfig``, which embeds the policy's
``PolicyConfig``), the HTTP server's and the engine's (``EngineConfig``) configuration. A config file (TOML or
YAML) has the same shape: top-level cluster keys, and ``[controller]``, ``[policy]``, ``[engine]``, ``[server]``
tables; ``config_file.cluster_config_from_dict`` is its one parser, a module of its own.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from dataclasses import dataclass, field

from warmserve.endpoints import check_endpoint  # noqa: F401  (config.check_endpoint: the name callers use)
from warmserve.errors import InvalidArgumentError
from warmserve.geometry import default_page_bytes, is_page_size
from warmserve.policy.config import PolicyConfig
from warmserve.policy.calendar import check_window_in_zone
from warmserve.protocol import EngineConfig


@dataclass(frozen=True)
class ModelSpec:
    """A model the cluster serves."""

    #: Directory of a Hugging Face checkpoint (config.json, *.safetensors, tokenizer.json), or a Hugging Face repo
    #: id (ORG/NAME) whose snapshot the local Hugging Face cache holds, where no such folder exists (hf_cache.py).
    path: str
    #: Name clients use in requests; defaults to the directory's base name (to the repo id for a repo id or a
    #: snapshot folder of the Hugging Face cache).
    name: str = ""
    #: Tensor-parallel degree: how many devices one instance spans.
    tp: int = 1
    #: Weight dtype in memory: "float32", "bfloat16" or "float16"; "auto" keeps the checkpoint's.
    dtype: str = "auto"

    def __post_init__(self):
        if isinstance(self.path, os.PathLike):  # a pathlib.Path is a path as much as its text is
            object.__setattr__(self, "path", os.fspath(self.path))
        if not isinstance(self.path, str) or not self.path:
            raise InvalidArgumentError(f"ModelSpec.path must be a checkpoint directory (a non-empty string), got "
                                       f"{self.path!r}", path=repr(self.path))
        # absolute (found in review: Cluster(".") served a model named "." from a path that workers with another
        # working directory, remote or Ray ones, resolved elsewhere); a config file's paths are taken from its folder
        path = os.path.abspath(os.path.expanduser(self.path))
        from warmserve.hf_cache import snapshot_for

        snapshot = snapshot_for(self.path, path)
        if snapshot is not None:  # served under the repo id, as `vllm serve ORG/NAME` serves it
            object.__setattr__(self, "name", self.name or self.path)
            path = snapshot
        object.__setattr__(self, "path", path)
        check_field_types(self)
        if not self.name:
            from warmserve.hf_cache import snapshot_repo_id

            object.__setattr__(self, "name", snapshot_repo_id(self.path) or os.path.basename(self.path))
            if not self.name:
                raise InvalidArgumentError(f"ModelSpec {self.path!r}: the path has no folder name to serve the "
                                           f"model under: give name=...", path=self.path)
        if self.tp not in (1, 2, 4, 8):
            raise InvalidArgumentError(f"ModelSpec {self.name!r}: tp must be 1, 2, 4 or 8, got {self.tp}", tp=self.tp)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InvalidArgumentError(f"ModelSpec {self.name!r}: dtype must be auto, float32, bfloat16 or float16, "
                                       f"got {self.dtype!r}", dtype=self.dtype)


#: A worker is declared lost after this many of its heartbeat intervals of silence at least. Its link sends a Heartbeat
#: once nothing has gone to the controller for one interval (worker/server.py): silent one interval and the poll's
#: millisecond at most, and twice leaves a whole interval for the network and a busy controller. Found in review:
#: before, a long engine step left ~3 intervals of silence under the 2x floor (ControllerConfig's check).
SILENCE_INTERVALS = 2


@dataclass(frozen=True)
class ControllerConfig:
    """How the controller talks to workers and runs the policy loop."""

    #: ZeroMQ address workers connect to. "" (default): a socket only this user's processes on this machine can
    #: reach (ipc:// in a folder of mode 0700); tcp://HOST:PORT for workers on other hosts (a loopback one, any
    #: user's process on this machine).
    bind: str = ""
    #: Policy by name, one of ``warmserve.policy.POLICY_NAMES``; the name may override policy_config fields.
    policy: str = "warmserve"
    #: The policy's knobs (forecast window, instance capacity, thresholds, ...): the config file's [policy] table.
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    #: Period of the policy loop (autoscaling, KV targets, prewarm plans), seconds.
    tick_s: float = 0.5
    #: Period of heartbeats to each worker, seconds.
    heartbeat_interval_s: float = 0.5
    #: A worker silent for this long is declared lost and its queued requests are re-routed, seconds.
    worker_timeout_s: float = 3.0
    #: JSON or CSV history of per-window load (model, window_start_s, avg, peak) that seeds the forecasts; "" for none.
    history_path: str = ""
    #: CSV file the controller keeps its measured load history in (with history_path's rows), rewritten as each
    #: window closes, for history_path at the next start; it keeps the last 14 days of windows, the time the
    #: controller was down not counted (controller/history_record.py); "" : not kept.
    history_record_path: str = ""
    #: IANA time zone whose days the load follows (its users' clocks, e.g. "America/New_York"): the forecasts'
    #: daily slots are its wall-clock hours, daylight-saving switches included. "": this machine's local zone.
    load_timezone: str = ""
    #: Requests waiting for an instance, per model, beyond which new ones are refused with 503.
    max_queue: int = 512
    #: A request that produced no token for this long fails with a timeout, seconds.
    request_timeout_s: float = 120.0
    #: On shutdown, in-flight requests get this long to finish before they are aborted, seconds.
    drain_timeout_s: float = 30.0
    #: A request that was on this many workers that were lost (running there, or sent) fails (WorkerLostError)
    #: instead of starting over once more: a request that kills its worker (by memory, say) must not take every
    #: worker down in turn. Until then it starts over elsewhere, after the tokens it had streamed
    #: (Generate.output_ids).
    max_worker_losses_per_request: int = 2
    #: Directory holding ZeroMQ CURVE keys (server.key_secret, workers' *.key public files); "" disables CURVE.
    curve_dir: str = ""
    #: Accept a worker socket bound to a non-loopback address with no CURVE (any host could join as a worker).
    insecure: bool = False
    #: A local worker that dies is started again after min(restart_backoff_cap_s, restart_backoff_s * 2**n)
    #: seconds, n counting its restarts in a row (reset once one stays up for restart_reset_s), seconds.
    restart_backoff_s: float = 0.5
    #: The longest wait before such a restart, seconds (the cap in restart_backoff_s's formula).
    restart_backoff_cap_s: float = 30.0
    #: A restarted worker up this long counts as healthy again: its next restart waits restart_backoff_s, seconds.
    restart_reset_s: float = 60.0

    def __post_init__(self):
        # a pathlib.Path is a path as much as its text is
        for f in ("history_path", "history_record_path", "curve_dir"):
            if isinstance(getattr(self, f), os.PathLike):
                object.__setattr__(self, f, os.fspath(getattr(self, f)))
        check_field_types(self)
        # NaN passes every comparison and inf a `> 0`: both are refused here, or a tick of NaN seconds spins the
        # policy loop and a drain of inf never ends (found in review).
        for f in ("tick_s", "heartbeat_interval_s", "worker_timeout_s", "request_timeout_s", "restart_backoff_s",
                  "restart_backoff_cap_s", "restart_reset_s"):
            if not _finite(getattr(self, f)) or getattr(self, f) <= 0:
                raise InvalidArgumentError(f"ControllerConfig.{f} must be a finite number > 0 seconds, got "
                                           f"{getattr(self, f)!r}", key=f)
        if not _finite(self.drain_timeout_s) or self.drain_timeout_s < 0:
            raise InvalidArgumentError(f"ControllerConfig.drain_timeout_s must be a finite number >= 0 seconds, got "
                                       f"{self.drain_timeout_s!r}", key="drain_timeout_s")
        for f in ("window_s", "load_window_s"):
            v = getattr(self.policy_config, f, None)
            if not _finite(v):
                raise InvalidArgumentError(f"PolicyConfig.{f} must be a finite number of seconds, got {v!r}", key=f)
        check_policy_numbers(self.policy_config, "ControllerConfig.policy_config")
        check_window(self.policy_config.window_s, self.tick_s)
        if self.bind:  # "": the private socket (controller/hub_sockets.py private_bind)
            check_endpoint(self.bind, "ControllerConfig.bind", listen=True, inproc_ok=False)
        # an unknown zone, or a window its switches would cut in two: a typed error before any process starts
        check_window_in_zone(self.policy_config.window_s, self.load_timezone, time.time())
        # A `~` is the shell's: a path from a config file or the Python API reaches no shell (found in review: it
        # was read as a directory named "~").
        for f in ("history_path", "history_record_path", "curve_dir"):  # strings already (check_field_types)
            object.__setattr__(self, f, os.path.expanduser(getattr(self, f)))
        # typed, naming the key (found in review: plain ValueErrors, which an `except WarmServeError` missed). Its
        # own workers beat at heartbeat_interval_s, silent for about one at most: see SILENCE_INTERVALS.
        if self.worker_timeout_s < SILENCE_INTERVALS * self.heartbeat_interval_s:
            raise InvalidArgumentError(
                f"ControllerConfig.worker_timeout_s ({self.worker_timeout_s}) must be at least twice "
                f"heartbeat_interval_s ({self.heartbeat_interval_s}): a busy worker may be silent for one interval "
                f"and a little more, or healthy workers are declared lost", key="worker_timeout_s")
        if self.max_queue < 1:
            raise InvalidArgumentError(f"ControllerConfig.max_queue must be >= 1, got {self.max_queue}",
                                       key="max_queue")
        if self.max_worker_losses_per_request < 1:
            raise InvalidArgumentError(f"ControllerConfig.max_worker_losses_per_request must be >= 1 (1: a request "
                                       f"fails with its first lost worker), got {self.max_worker_losses_per_request}",
                                       key="max_worker_losses_per_request")
        from warmserve.policy import POLICY_NAMES

        if not isinstance(self.policy, str) or self.policy not in POLICY_NAMES:
            raise InvalidArgumentError(f"ControllerConfig.policy: unknown policy {self.policy!r}; choose one of "
                                       f"{', '.join(POLICY_NAMES)}", policy=self.policy)


@dataclass(frozen=True)
class ServerConfig:
    """The OpenAI-compatible HTTP front end."""

    #: Interface to listen on; loopback unless told otherwise.
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one.
    port: int = 8000
    #: Bearer token clients must send; "" accepts every client.
    api_key: str = ""
    #: Requests in flight over HTTP beyond which new ones get 429, all models together; each model keeps room for
    #: its first max_concurrent_requests / (2 x models) whatever the others hold (controller/admission.py).
    max_concurrent_requests: int = 1024
    #: Origins (scheme://host[:port]) whose web pages may call the API from a browser (CORS); "*": any origin;
    #: empty: no CORS headers. A string is a comma-separated list (--allowed-origins).
    allowed_origins: tuple[str, ...] = ()
    #: Seconds a connection stays open with no whole request to answer: idle between keep-alive requests, or with
    #: its headers sent in part (``serve.py``). 75 s, nginx's default: above the 60 s idle timeout of common load
    #: balancers (AWS ALB), which would otherwise send requests on connections this server is closing.
    keepalive_timeout_s: float = 75.0

    def __post_init__(self):
        check_field_types(self)
        # An empty host makes the socket listen on every interface (found in review): say 0.0.0.0 to mean that.
        if not self.host.strip():  # a string already (check_field_types)
            raise InvalidArgumentError(f"ServerConfig.host must name an interface (127.0.0.1; 0.0.0.0 for every "
                                       f"interface), got {self.host!r}", key="host")
        if not 0 <= self.port <= 65535:  # a whole number already (check_field_types)
            raise InvalidArgumentError(f"ServerConfig.port must be in 0-65535 (0: a free one), got {self.port!r}",
                                       key="port")
        if not (math.isfinite(self.keepalive_timeout_s) and self.keepalive_timeout_s > 0):
            raise InvalidArgumentError(f"ServerConfig.keepalive_timeout_s must be a finite number of seconds > 0, got "
                                       f"{self.keepalive_timeout_s!r}", key="keepalive_timeout_s")
        if self.max_concurrent_requests < 1:
            raise InvalidArgumentError(f"ServerConfig.max_concurrent_requests must be >= 1, got "
                                       f"{self.max_concurrent_requests}", key="max_concurrent_requests")
        check_api_key(self.api_key, "ServerConfig.api_key (--api-key, $WARMSERVE_API_KEY or the config file's "
                                    "server.api_key)")
        if self.allowed_origins != ():  # the check lives in controller/cors.py, imported (aiohttp too) only if set
            from warmserve.controller.cors import check_origins

            object.__setattr__(self, "allowed_origins", check_origins(
                self.allowed_origins, "ServerConfig.allowed_origins (--allowed-origins or the config file's "
                                      "server.allowed_origins)"))


def check_api_key(key: str, where: str) -> None:
    """Refuse an API key with whitespace at either end: the Authorization header is read without it (RFC 9110
    trims a field's value), so no client could ever send the key. Found in review: accepted at start, then every
    request was a 401; a key read from a file (a Kubernetes secret, ``echo KEY > file``) ends in a newline. Also one
    with a lone surrogate that stands for no byte (a key of non-UTF-8 bytes from the shell is fine: it is compared as
    those bytes): no header can carry it."""
    if key != key.strip():  # the key itself is not shown: error messages end up in logs
        raise InvalidArgumentError(f"{where} has whitespace (a space, tab or newline) at its start or end: no client "
                                   f"could send it, since the Authorization header is read without it. Strip it (a "
                                   f"key read from a file often ends in a newline)", key="api_key")
    try:
        key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"{where} has a lone surrogate (a half of a UTF-16 pair, at character {e.start}) "
                                   f"that stands for no byte: no client could send it. Use a key of plain text",
                                   key="api_key", position=e.start) from None


@dataclass(frozen=True)
class ClusterConfig:
    """What to serve and where."""

    #: The models served.
    models: tuple[ModelSpec, ...] = ()
    #: Local devices to start one worker on each: "cuda:N" or "cpu:N"; empty = one per GPU, or CPU workers.
    devices: tuple[str, ...] = ()
    #: Number of CPU workers when devices is empty and there is no GPU.
    cpu_workers: int = 2
    #: Host memory each CPU worker may use for weights and KV cache, bytes; 0 sizes it from the models.
    cpu_worker_memory_bytes: int = 0
    #: Torch threads per CPU worker; 0 shares the cores this process may use (``host_cpus``) among them.
    cpu_worker_threads: int = 0
    #: Start local CPU workers (and their restarts) by forking a process that has imported torch and the engine
    #: once (worker/forkserver.py): a start skips the ~2.6 s import. False: a fresh interpreter each. GPU workers and
    #: `autoscale`'s cold starts are always fresh interpreters.
    fork_cpu_workers: bool = True
    #: Page size of every started worker's pool, bytes: a multiple of 2 MiB, or 0 for the default by device: 32 MiB
    #: when every started worker is on a GPU, else 2 MiB (geometry.default_page_bytes). On a GPU each page costs
    #: driver calls when mapped (a 1 GiB KV give-back took 9.8-12.0 ms at 2 MiB pages and 0.92-0.99 ms at 32 MiB on
    #: an H200: bench/switch/README.md); KV blocks share larger pages, which then grow and shrink the cache in steps
    #: of a page.
    worker_page_bytes: int = 0
    #: Host checkpoint cache of the started workers, bytes (memory/host_cache.py): checkpoint files kept in host
    #: memory shared by the workers of one machine, so a model's second load there (another worker's prewarm, a
    #: restart) reads host memory, on GPUs by DMA straight from it, not the files. 0: off, loads read the files. A
    #: fill that would leave less than 512 MiB of host memory (MemAvailable, or under the workers' memory cgroup
    #: limit) reads the file instead (memory/cache_files.py: FILL_HEADROOM_BYTES).
    host_cache_bytes: int = 0
    #: Directory of that cache, a tmpfs shared by the machine's workers; "" for its default (/dev/shm/warmserve-ckpt,
    #: or /dev/shm/warmserve-ckpt-UID where another user holds that one). A folder on a disk works too: its entries
    #: then stay on the disk across restarts, in the page cache while used.
    host_cache_dir: str = ""
    #: Remote workers (joining with `warmserve worker --controller`) to wait for before serving.
    remote_workers: int = 0
    #: Seconds to wait for workers to come up and register.
    worker_start_timeout_s: float = 120.0
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self):
        # One model or device given alone is a one-item list: a string was iterated character by character
        # (found in review: devices="cpu:0" was refused as device 'c', models="/ckpt" as models '/', 'c', ...).
        models = (self.models,) if isinstance(self.models, (str, os.PathLike, ModelSpec)) else self.models
        devices = (self.devices,) if isinstance(self.devices, str) else self.devices
        try:
            models, devices = tuple(models), tuple(devices)
        except TypeError:
            raise InvalidArgumentError(f"ClusterConfig: models and devices must be lists, got {self.models!r} and "
                                       f"{self.devices!r}") from None
        models = tuple(ModelSpec(path=m) if isinstance(m, (str, os.PathLike)) else m for m in models)
        for i, m in enumerate(models):
            if not isinstance(m, ModelSpec):
                raise InvalidArgumentError(f"ClusterConfig: models[{i}] must be a checkpoint path or a ModelSpec, "
                                           f"got {m!r}", key="models")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "devices", devices)
        if isinstance(self.host_cache_dir, os.PathLike):
            object.__setattr__(self, "host_cache_dir", os.fspath(self.host_cache_dir))
        check_field_types(self)
        # a `~` is the shell's, and the workers get the path with no shell between (found in review)
        object.__setattr__(self, "host_cache_dir", os.path.expanduser(self.host_cache_dir))
        for f in ("cpu_workers", "remote_workers", "cpu_worker_memory_bytes", "cpu_worker_threads",
                  "host_cache_bytes"):
            if getattr(self, f) < 0:  # what 0 means is each field's own (found in review: "0: the default" for all)
                raise InvalidArgumentError(f"ClusterConfig: {f} must be a whole number >= 0, got {getattr(self, f)!r}",
                                           key=f)
        if not _finite(self.worker_start_timeout_s) or self.worker_start_timeout_s <= 0:
            raise InvalidArgumentError(f"ClusterConfig: worker_start_timeout_s must be a finite number > 0 seconds, "
                                       f"got {self.worker_start_timeout_s!r}", key="worker_start_timeout_s")
        if self.host_cache_dir and not self.host_cache_bytes:
            raise InvalidArgumentError("ClusterConfig: host_cache_dir needs host_cache_bytes (the cache's size; 0 "
                                       "turns the cache off)", key="host_cache_dir")
        if self.worker_page_bytes != 0 and not is_page_size(self.worker_page_bytes):
            raise InvalidArgumentError(f"ClusterConfig: worker_page_bytes must be a positive multiple of 2 MiB "
                                       f"({2 << 20}), or 0 for the default by device, got {self.worker_page_bytes}",
                                       key="worker_page_bytes")
        canonical, written = [], list(self.devices)
        for d in written:
            kind, _, idx = d.partition(":") if isinstance(d, str) else ("", "", "")
            # ASCII digits only: str.isdigit took "²", which int() refuses, and "٣"
            if kind not in ("cpu", "cuda") or not (idx.isascii() and idx.isdigit()):
                raise InvalidArgumentError(f"ClusterConfig: device {d!r} must look like 'cuda:0' or 'cpu:0'",
                                           key="devices")
            # the index as a number (found in review: "cuda:00" passed the GPU-twice check beside "cuda:0", and
            # torch refuses the string "cuda:00" at the worker's start-up)
            canonical.append(f"{kind}:{int(idx)}")
        object.__setattr__(self, "devices", tuple(canonical))
        gpus = [d for d in self.devices if d.startswith("cuda")]
        if len(set(gpus)) < len(gpus):  # found in review: two workers, each sizing its pool to 90% of one GPU
            twice = sorted({g for g in gpus if gpus.count(g) > 1})
            raise InvalidArgumentError(f"ClusterConfig: devices {written} name a GPU twice ({', '.join(twice)}); one "
                                       f"worker per GPU (it takes the GPU's free memory)", key="devices", gpus=twice)
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise InvalidArgumentError(f"ClusterConfig: model names must be unique, {sorted(dup)} repeat; set "
                                       f"ModelSpec.name", key="models")


#: What a field declared as each of these types must hold (a bool is no number here, though Python says it is).
_FIELD_TYPES = {"str": (str, "a string"), "int": (numbers.Integral, "a whole number"),
                "float": (numbers.Real, "a number"), "bool": (bool, "true or false")}


def check_field_types(obj) -> None:
    """Every field of the config dataclass ``obj`` of its declared type (scalars, and the config classes it nests),
    else InvalidArgumentError naming the field; whole numbers of other integer types become ints. Found in review:
    ``insecure="false"`` was taken as true (and let a controller listen on every interface unauthenticated), a
    ModelSpec name 7 or ``engine={}`` failed every request, ``controller=None`` and a float page size failed in
    Cluster() with bare errors."""
    cls = type(obj).__name__
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None and f.default == "":  # None for a string whose default is "" means that default
            object.__setattr__(obj, f.name, "")
            continue
        if f.type == "bool" and getattr(getattr(v, "dtype", None), "kind", "") == "b" and getattr(v, "shape", 0) == ():
            # a numpy bool (an array of them is no bool, found in review)
            object.__setattr__(obj, f.name, bool(v))
            continue
        kind, noun = _FIELD_TYPES.get(f.type, (None, ""))
        if kind is None:
            nested = {"PolicyConfig": PolicyConfig, "EngineConfig": EngineConfig}.get(f.type) or globals().get(f.type)
            if not isinstance(nested, type):
                continue  # tuples: checked item by item by the class itself
            kind, noun = nested, f"{'an' if f.type[0] in 'AEIOU' else 'a'} {f.type}"
        if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
            raise InvalidArgumentError(f"{cls}.{f.name} must be {noun}, got {v!r}", key=f.name)
        if kind is numbers.Integral and type(v) is not int:
            object.__setattr__(obj, f.name, int(v))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: Policy fields whose documentation gives inf a meaning (policy/config.py: preempt_after_s, "inf: never"). Any
#: other refuses it: a window, lifetime or wait of inf never ends. Every field refuses NaN.
POLICY_INF_FIELDS = frozenset({"preempt_after_s"})


def policy_number_ok(key: str, value) -> bool:
    """False for a NaN in any policy field, and for inf in one that gives it no meaning (POLICY_INF_FIELDS).
    Checked before PolicyConfig sees it: its own checks answer NaN with "cannot convert float NaN to integer"."""
    if not isinstance(value, float) or math.isfinite(value):
        return True
    return not math.isnan(value) and key in POLICY_INF_FIELDS


#: Said with a refused policy number.
POLICY_INF_HINT = f"only {', '.join(sorted(POLICY_INF_FIELDS))} takes inf"


def check_policy_numbers(pc: PolicyConfig, where: str, keys=None) -> None:
    """``policy_number_ok`` for the fields ``keys`` (default: every field) of ``pc``, the values as converted:
    text such as YAML's plain ``inf`` or TOML's ``"inf"`` becomes a float only in ``policy_config_from_dict``
    (found in review: both passed a check of the raw values, and a lifetime of inf never ended)."""
    for k in [f.name for f in dataclasses.fields(pc)] if keys is None else keys:
        v = getattr(pc, k, None)
        if not policy_number_ok(k, v):
            raise InvalidArgumentError(f"{where}: {k} must be a finite number, got {v!r} ({POLICY_INF_HINT})", key=k)


#: Smallest forecast window the live controller takes, seconds. Its history holds every window from its clock's
#: origin (controller/clock.py: a week back, or the earliest history row) on, per model: found in review, 0.01 s
#: windows took 2.4 GiB for one model (60 million windows) and 0.001 s would exhaust memory; at 1 s a week is
#: 604,800 windows. No preset, test or bench command uses less than 5 s.
MIN_WINDOW_S = 1.0


def check_window(window_s: float, tick_s: float) -> None:
    """Refuse a live policy window below MIN_WINDOW_S, or shorter than the policy loop's tick (whole windows
    would then pass between two ticks, never observed)."""
    if window_s < MIN_WINDOW_S or window_s < tick_s:
        floor = max(MIN_WINDOW_S, tick_s)
        raise InvalidArgumentError(
            f"policy window_s must be at least {floor:g} s (the controller keeps a week of windows per model, and "
            f"ticks every tick_s = {tick_s:g} s), got {window_s:g}. Fix: "
            + (f"--window-s or [policy] window_s of {floor:g} or more that divides 86400 (default 300)"
               if floor <= 86400 else  # found in review: "1e+09 or more that divides 86400" was asked for
               f"a tick_s below a day ({tick_s:g} s leaves no window that divides one), then a "
               "window_s that divides 86400 (default 300)"), key="window_s", floor_s=floor)


def memory_gib_arg(memory_bytes: int) -> str:
    """A CPU worker's ``--memory-gib`` for ``memory_bytes``, exact: its float's repr reads back whole (found in
    review: 4 decimals cut the pool a page below what ``launch.check_weights_fit`` passed; ``launch.refusal`` then
    refused the worker)."""
    return repr(memory_bytes / (1 << 30))


def with_worker_page_bytes(cfg: ClusterConfig, devices) -> ClusterConfig:
    """cfg with worker_page_bytes resolved for workers on ``devices`` ("cuda:N" / "cpu:N"): as set, or for 0 the
    default by device (geometry.default_page_bytes). Resolved once, before the controller is made, so that it plans
    with the page its started workers use."""
    if cfg.worker_page_bytes:
        return cfg
    return dataclasses.replace(cfg, worker_page_bytes=default_page_bytes(devices))


def worker_cache_args(cfg: ClusterConfig) -> tuple[str, ...]:
    """The `warmserve worker` flags of ``cfg``'s host checkpoint cache (none when it is off)."""
    if not cfg.host_cache_bytes:
        return ()
    args = ("--host-cache-gib", repr(cfg.host_cache_bytes / (1 << 30)))  # exact: a division by a power of two
    return args + (("--host-cache-dir", cfg.host_cache_dir) if cfg.host_cache_dir else ())


def default_demo_dir() -> str:
    """Where `warmserve models demo` writes and `warmserve serve` looks: $WARMSERVE_HOME/demo, else
    $XDG_CACHE_HOME/warmserve/demo, else ~/.cache/warmserve/demo. $XDG_CACHE_HOME as pip and Hugging Face read it
    (found in review: a cluster user whose home has a small quota points it at a larger disk, and the 2.5 GB of
    demo checkpoints went to the home all the same); a relative one is ignored, as the XDG spec says."""
    home = os.environ.get("WARMSERVE_HOME")
    if home:
        return os.path.join(home, "demo")
    cache = os.environ.get("XDG_CACHE_HOME", "")
    return os.path.join(cache if os.path.isabs(cache) else os.path.join(os.path.expanduser("~"), ".cache"),
                        "warmserve", "demo")
