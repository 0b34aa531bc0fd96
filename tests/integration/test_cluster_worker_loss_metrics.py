"""What the controller's metrics say about lost workers and the requests they ran: the lost workers gauge while a
worker is away, the prompt tokens a resumption prefills again, and requests failed by a close."""

import os
import signal
import sys
import threading
import time


from warmserve import SamplingParams
from warmserve.errors import WarmServeError
from warmserve.worker import forkserver

import serving

MODEL = "llama-20m"
PROMPT = [5, 17, 300, 41, 9]


def _workers_gauge(c) -> dict[str, float]:
    async def scrape():  # on the controller's loop: the gauges read its state
        c.controller.metrics.registry.render()
        return {s: c.controller.metrics.workers.get(state=s) for s in ("ready", "lost")}

    return c._run(scrape(), 30)


def _wait_gauge(c, want: dict, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := _workers_gauge(c)) != want:
        assert time.monotonic() < deadline, f"workers gauge {got}, expected {want}"
        time.sleep(0.1)


def _remote_worker(endpoint: str, log, worker_id: str = "otherhost-1-cpu0"):
    """A `warmserve worker` that joins the controller at ``endpoint`` by itself (a remote worker to it), forked from
    this process's fork server (worker/forkserver.py, which the local workers of the other tests here use; a fresh
    interpreter where forking does not work): a fresh interpreter's torch import, 1.6 s of CPU a start, is no part
    of what these tests check."""
    forkserver.prepare(60)
    return forkserver.popen_worker(
        [sys.executable, "-m", "warmserve", "worker", "--controller", endpoint, "--device", "cpu", "--memory-gib",
         "0.5", "--threads", "1", "--worker-id", worker_id, "--heartbeat-interval-s", "0.2",
         "--exit-with-parent", str(os.getpid())],
        stdout=log, stderr=log, env=dict(os.environ, OMP_NUM_THREADS="1"), forked=True)


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_a_remote_worker_counts_as_lost_until_it_joins_again(tmp_path):
    """Found in review: warmserve_workers{state="lost"} read the records of lost workers, which a loss drops at
    once: always 0. (A local worker being restarted: test_cluster_starved_model.py.)"""
    endpoint = _free_endpoint()
    log = open(tmp_path / "remote.log", "ab")
    remote = _remote_worker(endpoint, log)
    try:
        with serving.demo_cluster(models=(MODEL,), cpu_workers=0, remote_workers=1, bind=endpoint) as c:
            assert _workers_gauge(c) == {"ready": 1, "lost": 0}
            remote.kill()
            remote.wait()
            _wait_gauge(c, {"ready": 0, "lost": 1})  # silent for worker_timeout_s (2 s)
            remote = _remote_worker(endpoint, log)
            _wait_gauge(c, {"ready": 1, "lost": 0})
            assert c.generate(MODEL, "back", max_tokens=2, temperature=0).completion_tokens == 2
    finally:
        log.close()
        remote.kill()
        remote.wait()


def test_a_remote_worker_restarted_under_a_new_id_takes_the_lost_ones_place(tmp_path):
    """Found in review: the default worker id holds the process id, so a remote worker restarted (by systemd, say)
    joins under a new id, and the lost one stayed in warmserve_workers{state="lost"} for good: 1 per restart."""
    endpoint = _free_endpoint()
    log = open(tmp_path / "remote.log", "ab")
    remote = _remote_worker(endpoint, log, "otherhost-100-cpu0")
    try:
        with serving.demo_cluster(models=(MODEL,), cpu_workers=0, remote_workers=1, bind=endpoint) as c:
            for pid in (101, 102):
                remote.kill()
                remote.wait()
                _wait_gauge(c, {"ready": 0, "lost": 1})
                remote = _remote_worker(endpoint, log, f"otherhost-{pid}-cpu0")
                _wait_gauge(c, {"ready": 1, "lost": 0})
            assert c.generate(MODEL, "back", max_tokens=2, temperature=0).completion_tokens == 2
    finally:
        log.close()
        remote.kill()
        remote.wait()


def _long_generation(c, max_tokens: int):
    """Start a greedy generation of max_tokens in a thread, once it has generated a few tokens: (thread, its
    Completion in out[0], its error in err[0], raised in the test's thread by the caller)."""
    out, err = [], []

    def run():
        try:
            out.append(c.generate(MODEL, PROMPT, params=SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                        ignore_eos=True)))
        except BaseException as e:
            err.append(e)

    th = threading.Thread(target=run)
    th.start()
    deadline = time.monotonic() + 30
    while not any(r.generated > 3 for w in c.controller.gpu_workers for r in list(w.gens.values())):
        assert time.monotonic() < deadline and not err, err
        time.sleep(0.02)
    return th, out, err


def test_a_resumed_request_counts_the_prompt_its_new_instance_prefills():
    """Found in review: warmserve_prompt_tokens_total was counted once per request, at submit, so a request resumed
    after a worker loss did not count what its new instance prefilled: its prompt and the tokens generated
    before. (Requests that never reached an instance: test_cluster_starved_model.py.)"""
    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                              restart_backoff_s=0.2) as c:
        m = c.controller.metrics
        c.generate(MODEL, PROMPT, max_tokens=2)
        assert m.prompt_tokens.get(model=MODEL) == len(PROMPT)
        # 100 tokens: the kill lands a few tokens in, well before the end (the resumption is asserted below), and
        # the restarted worker generates the rest in a few seconds, not the 300's ten or more.
        th, out, err = _long_generation(c, 100)
        os.kill(c.controller.gpu_workers[0].pid, signal.SIGKILL)
        th.join(120)
        assert not err and out[0].completion_tokens == 100, err
        assert m.resumed.get(model=MODEL, why="worker_lost") == 1
        resumed_prompt = m.prompt_tokens.get(model=MODEL) - 2 * len(PROMPT)
        assert len(PROMPT) + 3 < resumed_prompt < len(PROMPT) + 100  # its prompt and its tokens before the loss


def test_requests_a_close_fails_are_counted():
    """Found in review: the requests a close failed (still running after drain_timeout_s) were left out of
    warmserve_requests_total, where the queued ones it failed were in."""
    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                              drain_timeout_s=0.5) as c:
        m = c.controller.metrics
        th, out, err = _long_generation(c, 2000)
        c.close()
        th.join(60)
        assert not out and len(err) == 1 and isinstance(err[0], WarmServeError), (out, err)
        assert "shut down" in str(err[0])
        assert m.requests.get(model=MODEL, outcome="error") == 1
