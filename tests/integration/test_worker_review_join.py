"""Remote workers joining `warmserve serve`, from a review of the worker:

- a second `warmserve worker` started under a live worker's --worker-id had its first Hello refused (not connected
  yet), then heard the controller's heartbeats to the first one (ROUTER handover gave it the id) and never said
  Hello: the controller routed to it as to the first, and every request failed 404 ("it has []") for good. Now the
  worker says Hello on the first message it hears when none went out yet, and the controller takes it as the id's
  new process; the first, cut off, connects again after --peer-timeout-s of silence, and the controller refuses
  both, naming both, until one stops (``controller/worker_claims.py``);
- a worker whose pool could hold none of the models was admitted, and each request waited request_timeout_s (120 s)
  for a 504, nothing logged. Now it is refused with an error naming it, its pool and the models' sizes;
- a local worker got its budget as --memory-gib to 4 decimals, a page short of what the start checked, and was
  refused. Now it gets it exactly."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import serving
from net_ports import free_port
from tcp_proxy import CuttableProxy

MODEL = "llama-20m"


class _LateProxy(CuttableProxy):
    """Connects each connection on to the controller ``delay_s`` after the worker made it: the worker's first Hello
    finds no connection ready (EAGAIN), as the review saw it, whatever the timing of the start."""

    delay_s = 1.0

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
                time.sleep(self.delay_s)
                up = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # closed: the test is over
                return
            with self._lock:
                self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()


def _serve(tmp_path, endpoint: str, start_timeout_s: int) -> subprocess.Popen:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"worker_start_timeout_s = {start_timeout_s}\n[controller]\nheartbeat_interval_s = 0.2\n"
                   "worker_timeout_s = 5.0\ndrain_timeout_s = 1\n")
    with open(tmp_path / "serve.log", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "warmserve", "serve", "--config", str(cfg), "--model",
             serving.demo_paths((MODEL,))[MODEL], "--cpu-workers", "0", "--remote-workers", "1", "--bind", endpoint,
             "--port", "0", "--log-level", "INFO"], stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
            text=True)


def _worker(tmp_path, endpoint: str, name: str, memory_gib: str = "0.5", beat_s: float = 0.2,
            extra=()) -> subprocess.Popen:
    with open(tmp_path / f"{name}.log", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "warmserve", "worker", "--controller", endpoint, "--worker-id", "dup", "--threads",
             "1", "--memory-gib", memory_gib, "--heartbeat-interval-s", str(beat_s), "--log-level", "INFO", *extra],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)


def _wait_for(path, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text():
            return True
        time.sleep(0.2)
    return False


def _complete(url: str):
    return serving.post_json(url + "/v1/completions", {"model": MODEL, "prompt": "hello world", "max_tokens": 4},
                             timeout_s=30)


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()


def test_a_second_worker_under_a_live_workers_id_takes_its_place(tmp_path):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    serve = _serve(tmp_path, endpoint, 60)
    first = _worker(tmp_path, endpoint, "first")
    procs = [serve, first]
    proxy = _LateProxy(port)
    try:
        ready, _, _ = select.select([serve.stdout], [], [], 90)
        line = serve.stdout.readline() if ready else ""
        assert line, (tmp_path / "serve.log").read_text()[-3000:]
        url = json.loads(line)["serving"]
        assert _complete(url)[0] == 200
        # Its first Hello goes before it is connected (the proxy), and its beats are 2 s apart: the controller's
        # heartbeats to the id (every 0.2 s) reach it long before its next one, as in the review.
        second = _worker(tmp_path, proxy.endpoint, "second", beat_s=2.0)
        procs.append(second)
        assert _wait_for(tmp_path / "serve.log", f"restarted as process {second.pid}", 40), (
            (tmp_path / "serve.log").read_text()[-3000:], (tmp_path / "second.log").read_text())
        first.send_signal(signal.SIGKILL)  # what is served from now on, the second one serves
        first.wait()
        deadline = time.monotonic() + 20
        while (answer := _complete(url))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert answer[0] == 200, answer
        assert second.poll() is None
    finally:
        _stop(procs)
        proxy.close()


def test_two_live_workers_under_one_id_are_both_refused_and_told_why(tmp_path):
    """Found in review: the first, cut off by the second's connection (ROUTER handover), said Hello into nothing for
    good, and the log called the second a restart. Now it connects again after --peer-timeout-s without a word, and
    the controller, which knows each process by its start id, refuses both, naming both, until one stops."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    serve = _serve(tmp_path, endpoint, 60)
    first = _worker(tmp_path, endpoint, "first", extra=("--peer-timeout-s", "2"))
    procs = [serve, first]
    try:
        ready, _, _ = select.select([serve.stdout], [], [], 90)
        line = serve.stdout.readline() if ready else ""
        assert line, (tmp_path / "serve.log").read_text()[-3000:]
        assert _complete(json.loads(line)["serving"])[0] == 200
        second = _worker(tmp_path, endpoint, "second", extra=("--peer-timeout-s", "2"))
        procs.append(second)
        log = tmp_path / "serve.log"
        assert _wait_for(log, "two live processes use the worker id 'dup'", 60), log.read_text()[-3000:]
        said = next(line for line in log.read_text().splitlines() if "two live processes" in line)
        assert "ERROR" in said and f"process {first.pid} " in said and f"process {second.pid} " in said, said
        for name in ("first", "second"):
            assert _wait_for(tmp_path / f"{name}.log", "refused this worker: two live processes", 30), (
                (tmp_path / f"{name}.log").read_text()[-2000:])
        assert first.poll() is None and second.poll() is None and serve.poll() is None
    finally:
        _stop(procs)


def test_a_worker_that_holds_none_of_the_models_is_refused_and_says_why(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    serve = _serve(tmp_path, endpoint, 60)
    tiny = _worker(tmp_path, endpoint, "tiny", memory_gib="0.02")
    procs = [serve, tiny]
    try:
        log = tmp_path / "serve.log"
        assert _wait_for(log, "refused worker dup", 45), log.read_text()[-3000:]
        time.sleep(1.0)  # it says Hello each beat (0.2 s) meanwhile
        refused = [line for line in log.read_text().splitlines() if "refused worker dup" in line]
        assert len(refused) == 1 and "ERROR" in refused[0], refused
        assert f"pid {tiny.pid}" in refused[0] and "(0.0195 GiB: --memory-gib in whole pages" in refused[0], refused[0]
        assert f"'{MODEL}' needs " in refused[0] and "start it again with --memory-gib" in refused[0], refused[0]
        assert "joined" not in log.read_text() and serve.poll() is None
        # one started again with a pool that holds the model is admitted under the same id
        tiny.kill()
        tiny.wait()
        procs.append(_worker(tmp_path, endpoint, "big"))
        ready, _, _ = select.select([serve.stdout], [], [], 60)
        line = serve.stdout.readline() if ready else ""
        assert line, log.read_text()[-3000:]
        assert _complete(json.loads(line)["serving"])[0] == 200
    finally:
        _stop(procs)


def test_local_cpu_workers_beside_remote_ones_that_hold_no_model_are_refused_before_any_is_started():
    import asyncio

    import pytest

    from warmserve.config import ClusterConfig, ModelSpec
    from warmserve.controller.launch import start_cluster
    from warmserve.errors import InvalidArgumentError

    cfg = ClusterConfig(models=(ModelSpec(path=serving.demo_paths((MODEL,))[MODEL], name=MODEL),), devices=(),
                        cpu_workers=1, remote_workers=1, cpu_worker_memory_bytes=4 << 20)
    with pytest.raises(InvalidArgumentError, match="raise cpu_worker_memory_bytes"):
        asyncio.run(start_cluster(cfg))


def test_a_local_worker_gets_the_whole_budget_the_start_checked():
    """Found in review: --memory-gib went to 4 decimals, so a budget a few pages over the model's need reached the
    worker a page short; the admission refusal then turned it away and the start waited out its timeout."""
    from warmserve.config import ModelSpec
    from warmserve.controller.launch import check_weights_fit, weights_need_bytes
    from warmserve.controller.models import controller_model

    page = 2 << 20
    m = controller_model(ModelSpec(path=serving.demo_paths((MODEL,))[MODEL]))
    need = weights_need_bytes(m, page)
    # the first budget, in whole pages, that 4 decimals of GiB would have cut a page short
    budget = next(b for b in range(need, need + 64 * page, page)
                  if int(float(f"{b / (1 << 30):.4f}") * (1 << 30)) // page < b // page)
    check_weights_fit([m], budget, page)
    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=budget) as c:
        assert len(c.generate(MODEL, [5, 17], max_tokens=2, temperature=0).token_ids) == 2
