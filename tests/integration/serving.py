"""Helpers for tests that run `warmserve serve` as a subprocess and look at it only from outside: HTTP (/stats,
/metrics) and the process table (its local workers are its children). Not a test module."""

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

MODELS = ("llama-20m", "qwen2-30m")


def demo_paths(models=MODELS) -> dict[str, str]:
    from warmserve.engine.demo import write_demo_models

    return write_demo_models(None, models)


def start(tmp_path, *, models=MODELS, controller_toml: str = "", args=()) -> tuple[subprocess.Popen, str]:
    """`warmserve serve` on two CPU workers (one thread each); returns the process and its base URL."""
    paths = demo_paths(models)
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(
        "cpu_workers = 2\ncpu_worker_memory_bytes = 805306368\ncpu_worker_threads = 1\n"
        + "".join(f'[[models]]\npath = "{paths[m]}"\n' for m in models)
        + "[policy]\nwindow_s = 30\n[controller]\ntick_s = 0.2\nheartbeat_interval_s = 0.2\nworker_timeout_s = 2.0\n"
        "drain_timeout_s = 10\nrestart_backoff_s = 0.2\n" + controller_toml + "[server]\nport = 0\n")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "warmserve", "serve", "--config", str(cfg), "--log-level",
                             "INFO", "--log-dir", str(tmp_path / "logs"), *args],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    ready, _, _ = select.select([proc.stdout], [], [], 180)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait()
        raise RuntimeError("server did not start: " + (tmp_path / "serve.log").read_text()[-3000:])
    return proc, json.loads(line)["serving"]


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metrics(url: str) -> dict[tuple, float]:
    """/metrics as {(name, ((label, value), ...)): value}."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = tuple(sorted(tuple(p.split("=", 1)) for p in labels.rstrip("}").split(",") if "=" in p))
        out[(name, tuple((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


def counter(url: str, name: str) -> float:
    """A counter's value summed over its labels, whether exposed as NAME or NAME_total."""
    return sum(v for (n, _), v in metrics(url).items() if n in (name, name + "_total"))


def worker_pids(server_pid: int) -> list[int]:
    """The server's child processes (its local workers), from /proc."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server_pid and fields[0] != "Z":
            kids.append(int(d))
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
