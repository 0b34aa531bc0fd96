"""Helpers for tests that run `warmserve serve` as a subprocess and look at it only from outside: HTTP (/stats,
/metrics) and the process table (its local workers are its children); and for tests that run a `warmserve.Cluster`
in-process on the same demo models. Not a test module."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

MODELS = ("llama-20m", "qwen2-30m")


def demo_paths(models=MODELS) -> dict[str, str]:
    from warmserve.engine.demo import write_demo_models

    return write_demo_models(None, models)


#: The [controller] table every `warmserve serve` test starts from: fast ticks and heartbeats, so that a lost
#: worker is noticed (and restarted) within seconds on the 2-core test machine.
SERVE_CONTROLLER = {"tick_s": 0.2, "heartbeat_interval_s": 0.2, "worker_timeout_s": 2.0, "drain_timeout_s": 10,
                    "restart_backoff_s": 0.2}


def start(tmp_path, *, models=MODELS, tp: dict | None = None, policy: dict | None = None, cpu_workers: int = 2,
          cpu_worker_memory_bytes: int = 805306368, cluster_toml: str = "", log_level: str = "INFO", args=(),
          start_timeout_s: float = 180.0, preexec_fn=None, **controller) -> tuple[subprocess.Popen, str]:
    """`warmserve serve` on CPU workers (one thread each) with the demo `models`; returns the process and its base
    URL. `tp`: model -> tensor-parallel degree (1 if absent); `policy`: more [policy] keys. `cluster_toml` adds
    top-level lines; `controller` overrides SERVE_CONTROLLER keys (None leaves a key out,
    to its default). Its stderr goes to tmp_path/serve.log, its logs under tmp_path/logs. `preexec_fn`: run in the
    server's process before it starts (Popen's)."""
    paths = demo_paths(models)
    table = {k: v for k, v in {**SERVE_CONTROLLER, **controller}.items() if v is not None}
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(
        f"cpu_workers = {cpu_workers}\ncpu_worker_memory_bytes = {cpu_worker_memory_bytes}\ncpu_worker_threads = 1\n"
        + cluster_toml
        + "".join(f'[[models]]\npath = "{paths[m]}"\ntp = {(tp or {}).get(m, 1)}\n' for m in models)
        + "[policy]\nwindow_s = 30\n" + "".join(f"{k} = {v}\n" for k, v in (policy or {}).items())
        + "[controller]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
        + "[server]\nport = 0\n")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "warmserve", "serve", "--config", str(cfg), "--log-level",
                             log_level, "--log-dir", str(tmp_path / "logs"), *args],
                            stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=preexec_fn)
    log.close()
    ready, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait()
        raise RuntimeError("server did not start: " + (tmp_path / "serve.log").read_text()[-3000:])
    return proc, json.loads(line)["serving"]


def stop(proc: subprocess.Popen, timeout_s: float = 40.0) -> int:
    """SIGINT (a drain, then a clean exit), SIGKILL after timeout_s seconds; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def server_fixture(name: str, *, stop_timeout_s: float = 40.0, **start_kwargs):
    """A module-scoped pytest fixture yielding (url, process, its tmp dir) of start(tmp, **start_kwargs), in a fresh
    tmp dir called `name`; afterwards it stops the server and fails unless it exited with 0. Assign it to the
    module-level name the tests ask for (`server = serving.server_fixture(...)`)."""
    import pytest

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        tmp = tmp_path_factory.mktemp(name)
        proc, url = start(tmp, **start_kwargs)
        yield url, proc, tmp
        rc = stop(proc, stop_timeout_s)
        assert rc == 0, (tmp / "serve.log").read_text()[-3000:]

    return server


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_json(url: str, body: dict, timeout_s: float = 120.0):
    """POST ``body`` as JSON to ``url``; (status, decoded JSON answer), error statuses included."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1."""
    import socket

    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        return True
    except OSError:
        return False


def metrics(url: str) -> dict[tuple, float]:
    """/metrics as {(sample name, ((label, value), ...) sorted): value}, read with prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


def counter(url: str, name: str) -> float:
    """A counter's value summed over its labels, whether exposed as NAME or NAME_total."""
    return sum(v for (n, _), v in metrics(url).items() if n in (name, name + "_total"))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie nobody reaps has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(d))
    return kids


def worker_pids(server_pid: int) -> list[int]:
    """The server's local workers, from /proc: its child processes, or for CPU workers forked by its fork server
    (worker/forkserver.py) that server's children."""
    kids = []
    for kid in _children(server_pid):
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as f:
                forkserver = b"warmserve.worker.forkserver" in f.read()
        except OSError:
            continue
        kids += _children(kid) if forkserver else [kid]
    return sorted(kids)


def idle_problems(url: str) -> list[str]:
    """What still shows work or a leak: requests queued or in flight, KV blocks in use, pages no role accounts
    for, a worker that is not ready. Empty when the cluster is idle and every pool is back to its free pages."""
    _, st = get_json(url + "/stats")
    bad = [f"queued {m}: {n}" for m, n in st["queued"].items() if n]
    bad += [f"instance {i['instance_id']} in flight {i['in_flight']}" for i in st["instances"] if i["in_flight"]]
    bad += [f"worker {w['worker_id']} in flight {w['in_flight']}" for w in st["workers"] if w["in_flight"]]
    bad += [f"worker {w['worker_id']} not ready (alive={w['alive']})" for w in st["workers"] if not w["ready"]]
    for (name, labels), v in metrics(url).items():
        d = dict(labels)
        if name == "warmserve_worker_pages" and d.get("role") == "unaccounted" and v:
            bad.append(f"worker {d['worker']}: {v:.0f} pages unaccounted")
        if name == "warmserve_kv_cache_usage_ratio" and v:
            bad.append(f"worker {d['worker']} {d.get('model')}: KV usage {v}")
    return bad


def wait_idle(url: str, timeout_s: float = 20.0) -> list[str]:
    """Poll until idle_problems() is empty (returns []) or the timeout (returns the last problems)."""
    deadline = time.monotonic() + timeout_s
    while True:
        bad = idle_problems(url)
        if not bad or time.monotonic() > deadline:
            return bad
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------ in-process Cluster

@contextmanager
def demo_cluster(tmp_path_factory=None, *, models=MODELS, cpu_workers: int = 2,
                 cpu_worker_memory_bytes: int = 768 << 20, remote_workers: int = 0, worker_page_bytes: int = 2 << 20,
                 host_cache_bytes: int = 0, host_cache_dir: str = "", fork_cpu_workers: bool = True,
                 **controller_overrides):
    """A `warmserve.Cluster` on CPU workers (one thread each) with the demo `models`, closed on exit. Its controller
    ticks and heartbeats every 0.2 s, declares a worker lost after 2 s and plans on a 30 s window;
    `controller_overrides` are further ControllerConfig fields. With tmp_path_factory, its logs go to a fresh
    directory there."""
    from warmserve import Cluster
    from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
    from warmserve.policy.config import PolicyConfig

    paths = demo_paths(models)
    controller = {"policy_config": PolicyConfig(window_s=30), "tick_s": 0.2, "heartbeat_interval_s": 0.2,
                  "worker_timeout_s": 2.0, **controller_overrides}
    cfg = ClusterConfig(
        models=tuple(ModelSpec(path=paths[m]) for m in models), cpu_workers=cpu_workers,
        cpu_worker_memory_bytes=cpu_worker_memory_bytes, cpu_worker_threads=1, remote_workers=remote_workers,
        worker_page_bytes=worker_page_bytes, host_cache_bytes=host_cache_bytes, host_cache_dir=host_cache_dir,
        fork_cpu_workers=fork_cpu_workers, controller=ControllerConfig(**controller))
    log_dir = str(tmp_path_factory.mktemp("logs")) if tmp_path_factory is not None else None
    c = Cluster(None, config=cfg, log_dir=log_dir)
    try:
        yield c
    finally:
        c.close()


def cluster_fixture(**demo_cluster_kwargs):
    """A module-scoped pytest fixture yielding demo_cluster(tmp_path_factory, **demo_cluster_kwargs); assign it
    to the module-level name the tests ask for (`cluster = serving.cluster_fixture(...)`)."""
    import pytest

    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory):
        with demo_cluster(tmp_path_factory, **demo_cluster_kwargs) as c:
            yield c

    return cluster


def write_history(path, busy: str, idle: str) -> None:
    """A load-history CSV for the last two days, one row per 30 s window up to 30 s ago: `busy` at
    avg 8 / peak 40, `idle` at 0 / 0. The policy's history prediction then prewarms `busy` at once."""
    now_s = time.time()
    rows = ["model,window_start_s,avg,peak"]
    for t in range(int(now_s - 2 * 86400), int(now_s - 30), 30):
        rows += [f"{busy},{t},8,40", f"{idle},{t},0,0"]
    path.write_text("\n".join(rows) + "\n")


def wait_prewarmed(c, timeout_s: float) -> list[dict]:
    """Polls c.stats() until every prewarm it lists has finished loading (progress 1.0) or timeout_s passes;
    returns the last list of prewarms (empty if none started)."""
    deadline = time.monotonic() + timeout_s
    pw = []
    while time.monotonic() < deadline:
        pw = c.stats()["prewarms"]
        if pw and all(p["progress"] >= 1.0 for p in pw):
            break
        time.sleep(0.2)
    return pw


def write_slow_tiny_llama(folder: str, name: str = "tiny-llama") -> str:
    """A Llama checkpoint of 8 layers x 256 wide (random weights, 1024-token vocabulary) in ``folder``: small to
    write, yet slow enough per token on CPU that a generation is still running when a test cuts or pauses its
    worker. Returns its path."""
    from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint

    spec = DemoSpec(model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=1024)
    return write_checkpoint(folder, name, config_dict(spec), tokenizer=build_tokenizer(1024))
