"""Configuration shared across processes. Each concern has its own frozen dataclass; units are in field names.

One tree: ``ClusterConfig`` holds the controller's (``ControllerConfig``, which embeds the policy's
``PolicyConfig``), the HTTP server's and the engine's (``EngineConfig``) configuration. A config file (TOML or
YAML) has the same shape: top-level cluster keys, and ``[controller]``, ``[policy]``, ``[engine]``, ``[server]``
tables; ``cluster_config_from_dict`` is its one parser.
"""

from __future__ import annotations

import dataclasses
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
        if not self.name:
            import os

            object.__setattr__(self, "name", os.path.basename(os.path.normpath(self.path)))
        if self.tp not in (1, 2, 4, 8):
            raise ValueError(f"ModelSpec {self.name!r}: tp must be 1, 2, 4 or 8, got {self.tp}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"ModelSpec {self.name!r}: dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")


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
        for f in ("tick_s", "heartbeat_interval_s", "worker_timeout_s", "request_timeout_s", "restart_backoff_s",
                  "restart_backoff_cap_s", "restart_reset_s"):
            if getattr(self, f) <= 0:
                raise ValueError(f"ControllerConfig.{f} must be > 0, got {getattr(self, f)}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"ControllerConfig.drain_timeout_s must be >= 0 seconds, got {self.drain_timeout_s}")
        if self.worker_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"ControllerConfig.worker_timeout_s ({self.worker_timeout_s}) must be at least twice "
                f"heartbeat_interval_s ({self.heartbeat_interval_s}), or healthy workers are declared lost"
            )
        if self.max_queue < 1:
            raise ValueError(f"ControllerConfig.max_queue must be >= 1, got {self.max_queue}")
        if self.max_worker_losses_per_request < 1:
            raise ValueError(f"ControllerConfig.max_worker_losses_per_request must be >= 1 (1: a request fails with "
                             f"its first lost worker), got {self.max_worker_losses_per_request}")
        from warmserve.policy import POLICY_NAMES

        if self.policy not in POLICY_NAMES:
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
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServerConfig.port must be in 0-65535 (0: a free one), got {self.port}")
        if self.max_concurrent_requests < 1:
            raise ValueError(f"ServerConfig.max_concurrent_requests must be >= 1, got {self.max_concurrent_requests}")


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
    #: Remote workers (joining with `warmserve worker --controller`) to wait for before serving.
    remote_workers: int = 0
    #: Seconds to wait for workers to come up and register.
    worker_start_timeout_s: float = 120.0
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self):
        if self.cpu_workers < 0 or self.remote_workers < 0:
            raise ValueError("ClusterConfig: cpu_workers and remote_workers must be >= 0")
        if self.worker_start_timeout_s <= 0:
            raise ValueError(f"ClusterConfig: worker_start_timeout_s must be > 0 seconds, got "
                             f"{self.worker_start_timeout_s}")
        if not is_page_size(self.worker_page_bytes):
            raise ValueError(f"ClusterConfig: worker_page_bytes must be a positive multiple of 2 MiB "
                             f"({2 << 20}), got {self.worker_page_bytes}")
        for d in self.devices:
            kind, _, idx = d.partition(":")
            if kind not in ("cpu", "cuda") or not idx.isdigit():
                raise ValueError(f"ClusterConfig: device {d!r} must look like 'cuda:0' or 'cpu:0'")
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"ClusterConfig: model names must be unique, {sorted(dup)} repeat; set ModelSpec.name")


def _build(cls, data: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"config {where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
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
            raise ValueError(f"config {where}: {k} must be {what}, got {v!r}")
        out[k] = v
    return cls(**out)


def _engine(data: dict) -> EngineConfig:
    import msgspec

    known = set(EngineConfig.__struct_fields__)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"config [engine]: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        return msgspec.convert(data, EngineConfig)
    except msgspec.ValidationError as e:
        raise InvalidArgumentError(f"config [engine]: {e}") from None


def cluster_config_from_dict(data: dict) -> ClusterConfig:
    """Build a ClusterConfig from the parsed content of a TOML or YAML file: top-level cluster keys (models,
    devices, cpu_workers, ...) and the tables controller, policy, engine and server. ``policy`` is either the
    policy's name (a string) or the [policy] table of PolicyConfig fields (then the name goes in
    [controller] policy)."""
    data = dict(data or {})
    models = []
    for i, m in enumerate(data.pop("models", []) or []):
        models.append(ModelSpec(path=m) if isinstance(m, str) else _build(ModelSpec, dict(m), f"models[{i}]"))
    ctl = dict(data.pop("controller", {}) or {})
    if isinstance(data.get("policy"), dict):
        ctl["policy_config"] = policy_config_from_dict(data.pop("policy"))
    elif "policy" in data:
        ctl["policy"] = data.pop("policy")
    controller = _build(ControllerConfig, ctl, "[controller]")
    engine = _engine(dict(data.pop("engine", {}) or {}))
    server = _build(ServerConfig, dict(data.pop("server", {}) or {}), "[server]")
    cluster = dict(data.pop("cluster", {}) or {})
    cluster.update(data)
    cluster.update(models=models, controller=controller, engine=engine, server=server)
    return _build(ClusterConfig, cluster, "[cluster]")


def load_config(path: str) -> ClusterConfig:
    """Read a cluster configuration file: TOML (.toml) or YAML (.yaml/.yml)."""
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        import tomllib

        with open(path, "rb") as f:
            data = tomllib.load(f)
    elif ext in (".yaml", ".yml"):
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f) or {}
    else:
        raise ValueError(f"config file {path!r}: use a .toml, .yaml or .yml file")
    base = os.path.dirname(os.path.abspath(path))
    for m in data.get("models", []) or []:
        # Relative checkpoint paths are relative to the config file, not to wherever the server starts.
        if isinstance(m, dict) and "path" in m and not os.path.isabs(os.path.expanduser(m["path"])):
            m["path"] = os.path.join(base, m["path"])
    ctl = data.get("controller") or {}
    for key in ("history_path", "curve_dir"):  # files named in the config are relative to it, too
        if ctl.get(key) and not os.path.isabs(os.path.expanduser(ctl[key])):
            ctl[key] = os.path.join(base, ctl[key])
    data["models"] = [
        os.path.join(base, m) if isinstance(m, str) and not os.path.isabs(os.path.expanduser(m)) else m
        for m in data.get("models", []) or []
    ]
    return cluster_config_from_dict(data)


def default_demo_dir() -> str:
    """Where `warmserve models demo` writes and `warmserve serve` looks: $WARMSERVE_HOME/demo, else
    ~/.cache/warmserve/demo."""
    import os

    home = os.environ.get("WARMSERVE_HOME")
    return os.path.join(home, "demo") if home else os.path.join(os.path.expanduser("~"), ".cache", "warmserve", "demo")
