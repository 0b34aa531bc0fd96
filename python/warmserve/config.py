"""Configuration shared across processes. Each concern has its own frozen dataclass; units are in field names.

One tree: ``ClusterConfig`` holds the controller's (``ControllerConfig``, which embeds the policy's
``PolicyConfig``), the HTTP server's and the engine's (``EngineConfig``) configuration. A config file (TOML or
YAML) has the same shape: top-level cluster keys, and ``[controller]``, ``[policy]``, ``[engine]``, ``[server]``
tables; ``cluster_config_from_dict`` is its one parser.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field

from warmserve.errors import InvalidArgumentError
from warmserve.geometry import is_page_size
from warmserve.policy.config import PolicyConfig, policy_config_from_dict
from warmserve.protocol import EngineConfig


@dataclass(frozen=True)
class ModelSpec:
    """A model the cluster serves."""

    #: Directory of a Hugging Face checkpoint (config.json, *.safetensors, tokenizer.json).
    path: str
    #: Name clients use in requests; defaults to the directory's base name.
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
        object.__setattr__(self, "path", os.path.expanduser(self.path))
        check_field_types(self)
        if not self.name:
            object.__setattr__(self, "name", os.path.basename(os.path.normpath(self.path)))
        if self.tp not in (1, 2, 4, 8):
            raise InvalidArgumentError(f"ModelSpec {self.name!r}: tp must be 1, 2, 4 or 8, got {self.tp}", tp=self.tp)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InvalidArgumentError(f"ModelSpec {self.name!r}: dtype must be auto, float32, bfloat16 or float16, "
                                       f"got {self.dtype!r}", dtype=self.dtype)


@dataclass(frozen=True)
class ControllerConfig:
    """How the controller talks to workers and runs the policy loop."""

    #: ZeroMQ address workers connect to. Loopback by default: other hosts can only join when told so.
    bind: str = "tcp://127.0.0.1:0"
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
    #: JSON or CSV history of per-window load (model, start_s, avg, peak) that seeds the forecasts; "" for none.
    history_path: str = ""
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
    restart_backoff_cap_s: float = 30.0
    #: A restarted worker up this long counts as healthy again: its next restart waits restart_backoff_s, seconds.
    restart_reset_s: float = 60.0

    def __post_init__(self):
        for f in ("history_path", "curve_dir"):  # a pathlib.Path is a path as much as its text is
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
        check_endpoint(self.bind, "ControllerConfig.bind", listen=True, inproc_ok=False)
        # A `~` is the shell's: a path from a config file or the Python API reaches no shell (found in review: it
        # was read as a directory named "~").
        for f in ("history_path", "curve_dir"):  # strings already (check_field_types)
            object.__setattr__(self, f, os.path.expanduser(getattr(self, f)))
        # typed, naming the key (found in review: plain ValueErrors, which an `except WarmServeError` missed)
        if self.worker_timeout_s < 2 * self.heartbeat_interval_s:
            raise InvalidArgumentError(
                f"ControllerConfig.worker_timeout_s ({self.worker_timeout_s}) must be at least twice "
                f"heartbeat_interval_s ({self.heartbeat_interval_s}), or healthy workers are declared lost",
                key="worker_timeout_s")
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
    #: Requests in flight over HTTP beyond which new ones get 429.
    max_concurrent_requests: int = 1024

    def __post_init__(self):
        check_field_types(self)
        # An empty host makes the socket listen on every interface (found in review): say 0.0.0.0 to mean that.
        if not self.host.strip():  # a string already (check_field_types)
            raise InvalidArgumentError(f"ServerConfig.host must name an interface (127.0.0.1; 0.0.0.0 for every "
                                       f"interface), got {self.host!r}", key="host")
        if not 0 <= self.port <= 65535:  # a whole number already (check_field_types)
            raise InvalidArgumentError(f"ServerConfig.port must be in 0-65535 (0: a free one), got {self.port!r}",
                                       key="port")
        if self.max_concurrent_requests < 1:
            raise InvalidArgumentError(f"ServerConfig.max_concurrent_requests must be >= 1, got "
                                       f"{self.max_concurrent_requests}", key="max_concurrent_requests")
        check_api_key(self.api_key, "ServerConfig.api_key (--api-key, $WARMSERVE_API_KEY or the config file's "
                                    "server.api_key)")


def check_api_key(key: str, where: str) -> None:
    """Refuse an API key with whitespace at either end: the Authorization header is read without it (RFC 9110
    trims a field's value), so no client could ever send the key. Found in review: accepted at start, then every
    request was a 401; a key read from a file (a Kubernetes secret, ``echo KEY > file``) ends in a newline."""
    if key != key.strip():  # the key itself is not shown: error messages end up in logs
        raise InvalidArgumentError(f"{where} has whitespace (a space, tab or newline) at its start or end: no client "
                                   f"could send it, since the Authorization header is read without it. Strip it (a "
                                   f"key read from a file often ends in a newline)", key="api_key")


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
    #: Torch threads per CPU worker; 0 shares the machine's cores among the workers.
    cpu_worker_threads: int = 0
    #: Page size of every started worker's pool, bytes: a multiple of 2 MiB. On a GPU each page costs driver calls
    #: when mapped (a 1 GiB give-back took 8.4 ms at 2 MiB pages and 0.48 ms at 32 MiB on an H200:
    #: bench/switch/README.md); KV blocks share larger pages, which then grow and shrink the cache in steps of a page.
    worker_page_bytes: int = 2 << 20
    #: Host checkpoint cache of the started workers, bytes (memory/host_cache.py): checkpoint files kept in host
    #: memory shared by the workers of one machine, so a model's second load there (another worker's prewarm, a
    #: restart) reads host memory, on GPUs by DMA straight from it, not the files. 0: off, loads read the files.
    host_cache_bytes: int = 0
    #: Directory of that cache, a tmpfs shared by the machine's workers; "" for its default (/dev/shm/warmserve-ckpt).
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
        if not is_page_size(self.worker_page_bytes):
            raise InvalidArgumentError(f"ClusterConfig: worker_page_bytes must be a positive multiple of 2 MiB "
                                       f"({2 << 20}), got {self.worker_page_bytes}", key="worker_page_bytes")
        for d in self.devices:
            kind, _, idx = d.partition(":") if isinstance(d, str) else ("", "", "")
            if kind not in ("cpu", "cuda") or not idx.isdigit():
                raise InvalidArgumentError(f"ClusterConfig: device {d!r} must look like 'cuda:0' or 'cpu:0'",
                                           key="devices")
        gpus = [d for d in self.devices if d.startswith("cuda")]
        if len(set(gpus)) < len(gpus):  # found in review: two workers, each sizing its pool to 90% of one GPU
            raise InvalidArgumentError(f"ClusterConfig: devices {list(self.devices)} name a GPU twice; one worker per "
                                       f"GPU (it takes the GPU's free memory)", key="devices")
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


def check_endpoint(endpoint, what: str, *, listen: bool, inproc_ok: bool = True) -> None:
    """A ZeroMQ address ``tcp://HOST:PORT`` (or ipc://, inproc://), checked before any socket is made: ZeroMQ
    answers "Invalid argument" naming no flag, and takes a port beyond 65535 modulo 65536 (found in review:
    tcp://127.0.0.1:99999 bound port 34463). ``listen``: a bind, where port 0 or * picks a free one.
    ``inproc_ok`` False: where the peers are other processes, which an inproc:// address never reaches (found in
    review: a controller bound to one waited out its whole start timeout for workers that could not connect)."""
    fix = "e.g. tcp://127.0.0.1:5555" + (" (port 0: a free one)" if listen else "")
    if not isinstance(endpoint, str):
        raise InvalidArgumentError(f"{what} must be a ZeroMQ address like tcp://HOST:PORT, got {endpoint!r}; {fix}")
    scheme, sep, rest = endpoint.partition("://")
    if sep and scheme == "inproc" and not inproc_ok:
        raise InvalidArgumentError(f"{what} {endpoint!r}: an inproc:// address reaches only this process, and the "
                                   f"workers are other processes; {fix}", endpoint=endpoint)
    if sep and scheme in ("ipc", "inproc") and rest:
        return
    host, colon, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not colon or not host:
        raise InvalidArgumentError(f"{what} must be a ZeroMQ address like tcp://HOST:PORT, got {endpoint!r}; {fix}",
                                   endpoint=endpoint)
    if listen and port == "*":
        return
    low = 0 if listen else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        raise InvalidArgumentError(f"{what}: port {port!r} of {endpoint!r} must be a number in {low}-65535; {fix}",
                                   endpoint=endpoint)
    if not listen and host == "*":
        raise InvalidArgumentError(f"{what}: {endpoint!r} names no host to connect to; {fix}", endpoint=endpoint)


def _build(cls, data: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise InvalidArgumentError(f"config {where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}",
                                   unknown=sorted(unknown))
    out = {}
    for k, v in data.items():
        if isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        default = fields[k].default
        if isinstance(v, int) and not isinstance(v, bool) and isinstance(default, float):
            v = float(v)
        # The type of the field's default, checked here: a value of another type ("2" for a count, a string of
        # seconds) failed later with a bare TypeError naming no key (found in review).
        kind = type(default) if default is not dataclasses.MISSING and default is not None else None
        if kind in (bool, int, float, str) and (type(v) is not kind):
            what = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[kind]
            raise InvalidArgumentError(f"config {where}: {k} must be {what}, got {v!r}{_as_text_hint(v, kind)}", key=k)
        if kind is float and not math.isfinite(v):
            raise InvalidArgumentError(f"config {where}: {k} must be a finite number, got {v!r}", key=k)
        out[k] = v
    return cls(**out)


def _engine(data: dict) -> EngineConfig:
    import msgspec

    known = set(EngineConfig.__struct_fields__)
    unknown = set(data) - known
    if unknown:
        raise InvalidArgumentError(f"config [engine]: unknown keys {sorted(unknown)}; known: {sorted(known)}",
                                   unknown=sorted(unknown))
    try:
        return msgspec.convert(data, EngineConfig)
    except msgspec.ValidationError as e:
        raise InvalidArgumentError(f"config [engine]: {e}") from None


def _as_text_hint(value, kind: type) -> str:
    """Why a number came as text: YAML 1.1 (PyYAML) reads an exponent without a dot or sign (1e-1, 6e2) as a string."""
    if kind not in (int, float) or not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return f". YAML reads {value} as text: write {number!r} (or 1.0e-1 style, with a dot)"


def _table(value, where: str) -> dict:
    """A table of the config (absent: empty); anything else is refused naming it, not fed to dict()."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"config {where} must be a table of keys, got {value!r}", key=where)
    return dict(value)


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
            f"ticks every tick_s = {tick_s:g} s), got {window_s:g}. Fix: --window-s or [policy] window_s of "
            f"{floor:g} or more that divides 86400 (default 300)", key="window_s", floor_s=floor)


def _policy_table(value, where: str) -> PolicyConfig:
    table = _table(value, where)
    for k, v in table.items():
        if not policy_number_ok(k, v):
            raise InvalidArgumentError(f"config {where}: {k} must be a finite number, got {v!r} ({POLICY_INF_HINT})",
                                       key=k)
    pc = policy_config_from_dict(table, where=where)
    check_policy_numbers(pc, f"config {where}", table)
    return pc


def _flatten(data, where: str = "config") -> dict:
    """The file's content as one table of top-level keys: a [cluster] table's keys join the top level (found in
    review: its models were dropped for the top level's empty list, and the demo models served instead); a
    lone string for ``models`` is a one-item list."""
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{where} must hold a table of keys (models, devices, [controller], [policy], "
                                   f"[engine], [server]), got {type(data).__name__} {data!r:.80}")
    data = dict(data)
    cluster = _table(data.pop("cluster", None), "[cluster]")
    both = sorted(set(cluster) & set(data))
    if both:
        raise InvalidArgumentError(f"config: {both} given both at the top level and in [cluster]; keep one",
                                   keys=both)
    data.update(cluster)
    if isinstance(data.get("models"), str):
        data["models"] = [data["models"]]
    return data


def cluster_config_from_dict(data: dict) -> ClusterConfig:
    """Build a ClusterConfig from the parsed content of a TOML or YAML file: top-level cluster keys (models,
    devices, cpu_workers, ...; or the same in a [cluster] table) and the tables controller, policy, engine and
    server. ``policy`` is either the policy's name (a string) or the [policy] table of PolicyConfig fields (then
    the name goes in [controller] policy)."""
    data = _flatten(data or {})
    models = []
    listed = data.pop("models", None)
    if listed is not None and not isinstance(listed, (list, tuple)):
        raise InvalidArgumentError(f"config: models must be a list of checkpoint paths or tables with a path, got "
                                   f"{listed!r}", key="models")
    for i, m in enumerate(listed or ()):
        if isinstance(m, str):
            models.append(ModelSpec(path=m))
        elif isinstance(m, dict) and isinstance(m.get("path"), str):
            models.append(_build(ModelSpec, dict(m), f"models[{i}]"))
        else:
            raise InvalidArgumentError(
                f"config: models[{i}] must be a checkpoint path or a table with a path (path = \"/ckpt/m\", name, "
                f"tp, dtype), got {m!r}", key=f"models[{i}]")
    ctl = _table(data.pop("controller", None), "[controller]")
    if "policy_config" in ctl:
        ctl["policy_config"] = _policy_table(ctl["policy_config"], "[controller] policy_config")
    if "policy" in data and data["policy"] is None:  # YAML's `policy:` with its keys commented out: an empty table
        data["policy"] = {}
    if isinstance(data.get("policy"), dict):
        if "policy_config" in ctl:
            raise InvalidArgumentError("config: the policy's knobs are given both as [policy] and as [controller] "
                                       "policy_config; keep the [policy] table", key="policy")
        ctl["policy_config"] = _policy_table(data.pop("policy"), "[policy]")
    elif "policy" in data:
        # Found in review: a top-level policy name silently overrode [controller] policy.
        if "policy" in ctl:
            raise InvalidArgumentError(f"config: the policy is named twice, policy = {data['policy']!r} at the top "
                                       f"level and {ctl['policy']!r} in [controller]; keep [controller] policy",
                                       key="policy")
        ctl["policy"] = data.pop("policy")
    controller = _build(ControllerConfig, ctl, "[controller]")
    engine = _engine(_table(data.pop("engine", None), "[engine]"))
    server = _build(ServerConfig, _table(data.pop("server", None), "[server]"), "[server]")
    data.update(models=tuple(models), controller=controller, engine=engine, server=server)
    return _build(ClusterConfig, data, "top level")


def load_config(path: str) -> ClusterConfig:
    """Read a cluster configuration file: TOML (.toml) or YAML (.yaml/.yml)."""
    return cluster_config_from_dict(read_config_file(path))


def _config_text(path: str, kind: str) -> str:
    """The file's text: UTF-8, a leading byte-order mark (Windows editors write one) dropped. Found in review: a
    BOM'd TOML was refused as "Invalid statement (at line 1, column 1)" where the same YAML loaded, and a UTF-16 or
    Latin-1 file failed with a bare codec message naming no file."""
    with open(path, "rb") as f:
        raw = f.read()
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        utf16, at = raw[:2] in (b"\xff\xfe", b"\xfe\xff"), bom + e.start
        raise InvalidArgumentError(
            f"config file {path!r} is {'UTF-16' if utf16 else 'not UTF-8'} text (byte {raw[at]:#04x} at "
            f"offset {at} is no UTF-8): a {kind} config must be UTF-8. Fix: save it as UTF-8, e.g. "
            f"`iconv -f {'UTF-16' if utf16 else 'LATIN1'} -t UTF-8 OLD > NEW`"
            f"{'' if utf16 else ' for a Latin-1 file'}",
            path=path, encoding="utf-8") from None


def read_config_file(path: str) -> dict:
    """A config file's content as ``cluster_config_from_dict`` takes it: its top-level keys (a [cluster] table's
    among them), relative paths made relative to the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        import tomllib

        try:
            data = tomllib.loads(_config_text(path, "TOML"))
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgumentError(f"config file {path!r} is not valid TOML: {e}", path=path) from None
    elif ext in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(_config_text(path, "YAML"))
        except yaml.YAMLError as e:
            raise InvalidArgumentError(f"config file {path!r} is not valid YAML: {e}", path=path) from None
        data = {} if data is None else data
    else:
        raise InvalidArgumentError(f"config file {path!r}: use a .toml, .yaml or .yml file", path=path)
    data = _flatten(data, f"config file {path!r}")
    base = os.path.dirname(os.path.abspath(path))

    def here(p):  # relative paths are relative to the config file, not to wherever the server starts
        return os.path.join(base, p) if isinstance(p, str) and p and not os.path.isabs(os.path.expanduser(p)) else p

    if isinstance(data.get("models"), list):
        data["models"] = [dict(m, path=here(m["path"])) if isinstance(m, dict) and "path" in m else here(m)
                          for m in data["models"]]
    if "host_cache_dir" in data:
        data["host_cache_dir"] = here(data["host_cache_dir"])
    if isinstance(data.get("controller"), dict):
        data["controller"] = dict(data["controller"])
        for key in ("history_path", "curve_dir"):
            if key in data["controller"]:
                data["controller"][key] = here(data["controller"][key])
    return data


def policy_table_keys(data: dict) -> dict[str, str]:
    """The policy options a config's content (``read_config_file``) sets, each with where: the [policy] table's,
    or [controller] policy_config's."""
    ctl = data.get("controller")
    for table, where in ((data.get("policy"), "[policy]"),
                         (ctl.get("policy_config") if isinstance(ctl, dict) else None, "[controller] policy_config")):
        if isinstance(table, dict):
            return {str(k): where for k in table}
    return {}


def memory_gib_arg(memory_bytes: int) -> str:
    """A CPU worker's ``--memory-gib`` for ``memory_bytes``, exact: its float's repr reads back whole (found in
    review: 4 decimals cut the pool a page below what ``launch.check_weights_fit`` passed; ``launch.refusal`` then
    refused the worker)."""
    return repr(memory_bytes / (1 << 30))


def worker_cache_args(cfg: ClusterConfig) -> tuple[str, ...]:
    """The `warmserve worker` flags of ``cfg``'s host checkpoint cache (none when it is off)."""
    if not cfg.host_cache_bytes:
        return ()
    args = ("--host-cache-gib", repr(cfg.host_cache_bytes / (1 << 30)))  # exact: a division by a power of two
    return args + (("--host-cache-dir", cfg.host_cache_dir) if cfg.host_cache_dir else ())


def default_demo_dir() -> str:
    """Where `warmserve models demo` writes and `warmserve serve` looks: $WARMSERVE_HOME/demo, else
    ~/.cache/warmserve/demo."""
    home = os.environ.get("WARMSERVE_HOME")
    return os.path.join(home, "demo") if home else os.path.join(os.path.expanduser("~"), ".cache", "warmserve", "demo")
