"""Local CPU workers are forked from a fork server that has imported torch once (worker/forkserver.py): they serve,
their exit status, signals and stderr are a Popen child's, a lost one is forked again, and they end when the server
does; `autoscale`'s cold starts and `fork_cpu_workers=False` keep fresh interpreters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from warmserve.worker import forkserver
from warmserve.worker.forkserver import ForkedProcess

import serving


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _worker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "warmserve", "worker", "--device", "cpu", "--memory-gib", "0.0625", "--threads", "1",
            "--exit-with-parent", str(os.getpid()), *args]


def _wait_for(text: str, path, timeout_s: float = 60.0, proc=None) -> None:
    """Until ``text`` is in the log at ``path``; with ``proc``, failing at once should that process end first."""
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text():
        assert (proc is None or proc.poll() is None) and time.monotonic() < deadline, path.read_text()[-2000:]
        time.sleep(0.05)


def test_a_forked_worker_has_a_popen_childs_status_signals_and_stderr(tmp_path):
    assert forkserver.prepare(60)
    log_path = tmp_path / "w.log"
    with open(log_path, "wb") as log:
        bad = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0", "--page-mib", "3"),
                                      env=dict(os.environ), stdout=log, stderr=log, forked=True)
        good = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0"), env=dict(os.environ),
                                       stdout=log, stderr=log, forked=True)
    assert isinstance(bad, ForkedProcess) and isinstance(good, ForkedProcess)
    server = forkserver.shared_server()
    assert _ppid(good.pid) == server.proc.pid
    assert bad.wait(30) == 2  # a bad flag: the worker's own exit status, and its message in its log
    assert "--page-mib" in log_path.read_text()
    _wait_for("serving at", log_path)
    assert good.poll() is None and os.getsid(good.pid) == good.pid  # a session of its own
    with open(f"/proc/{good.pid}/cmdline", "rb") as f:  # in ps, a worker's command line, not the server's
        assert b"-m warmserve worker --device cpu" in f.read()
    with pytest.raises(subprocess.TimeoutExpired):
        good.wait(0.2)
    good.terminate()
    assert good.wait(30) == 0  # SIGTERM: the worker's orderly exit
    good.kill()  # after its end: nothing happens, as with Popen
    assert good.returncode == 0
    again = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0"), env=dict(os.environ),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, forked=True)
    again.send_signal(signal.SIGKILL)
    assert again.wait(30) == -signal.SIGKILL


def test_a_bare_exit_with_parent_flag_is_given_the_fork_servers_pid(tmp_path):
    # Found in review: a bare --exit-with-parent (its PID may be left out) last raised IndexError in the fork, and a
    # fresh interpreter started instead; one followed by another flag had that flag overwritten by the server's pid.
    assert forkserver.prepare(60)
    base = [sys.executable, "-m", "warmserve", "worker", "--device", "cpu", "--memory-gib", "0.0625", "--threads", "1"]
    server = forkserver.shared_server()
    procs = []
    for n, cmd in enumerate((base + ["--bind", "tcp://127.0.0.1:0", "--exit-with-parent"],
                             base + ["--exit-with-parent", "--bind", "tcp://127.0.0.1:0"])):
        log_path = tmp_path / f"w{n}.log"
        with open(log_path, "wb") as log:
            p = forkserver.popen_worker(cmd, env=dict(os.environ), stdout=log, stderr=log, forked=True)
        procs.append(p)
        assert isinstance(p, ForkedProcess), (cmd, p)
        _wait_for("serving at", log_path, proc=p)
        with open(f"/proc/{p.pid}/cmdline", "rb") as f:
            assert f"--exit-with-parent {server.proc.pid}".encode() in f.read()
    for p in procs:
        p.terminate()
        assert p.wait(30) == 0


def test_workers_end_with_their_fork_server_and_the_next_spawn_is_fresh_while_another_starts(tmp_path):
    assert forkserver.prepare(60)
    log_path = tmp_path / "w.log"
    with open(log_path, "wb") as log:
        w = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0", "--heartbeat-interval-s", "0.2"),
                                    env=dict(os.environ), stdout=log, stderr=log, forked=True)
    _wait_for("serving at", log_path)
    old = forkserver.shared_server()
    old.proc.kill()
    # The worker watches its parent, the server: it exits, and its handle reads that without the server.
    assert w.wait(30) == forkserver.STATUS_UNKNOWN
    assert not serving.pid_alive(w.pid)
    # and the controller's words for it say why the status says nothing (found in review: "status 255")
    from warmserve.controller.restarts import exit_words

    assert exit_words(w) == ("status 255: its fork server ended first (killed, or out of memory), so its own status "
                             "is lost")
    # The spawn does not wait for a new server's imports (it may be on the controller's event loop): this one is a
    # fresh interpreter, and the server started meanwhile forks the next.
    nxt = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0"), env=dict(os.environ),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, forked=True)
    assert type(nxt) is subprocess.Popen and forkserver.shared_server() is not old
    assert forkserver.prepare(60)
    after = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0"), env=dict(os.environ),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, forked=True)
    assert isinstance(after, ForkedProcess)
    for p in (nxt, after):
        p.kill()
        assert p.wait(30) == -signal.SIGKILL


def test_fresh_interpreters_and_gpu_devices_are_not_forked():
    with forkserver.fresh_interpreters():
        p = forkserver.popen_worker([sys.executable, "-c", "pass"], env=dict(os.environ), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, forked=True)
    assert isinstance(p, subprocess.Popen) and p.wait(30) == 0


def _pidfds() -> int:
    """This process's open pidfds."""
    return sum(os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]" for fd in _fds())


def _fds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{fd}")
            out.append(fd)
        except OSError:  # the listing's own descriptor, closed since
            pass
    return out


def test_a_clusters_cpu_workers_are_forked_and_a_killed_one_is_forked_again(tmp_path_factory):
    """Twice, and each time without a descriptor or record kept for the dead process (found in review: the
    controller kept its pidfd and its worker record, one per worker lost or drained, for the server's life)."""
    # restart_backoff_s: the restart's wait (0.5 s, then 1 s by default) is not what is tested here
    with serving.demo_cluster(tmp_path_factory, models=("llama-20m",), restart_backoff_s=0.05) as c:
        assert c.generate("llama-20m", "hello", max_tokens=2, temperature=0).completion_tokens >= 1
        server = forkserver.shared_server()
        procs = dict(c.controller.local_procs)
        assert all(isinstance(p, ForkedProcess) and _ppid(p.pid) == server.proc.pid for p in procs.values()), procs
        ident = next(iter(procs))
        pidfds = _pidfds()
        for _ in range(2):
            victim = c.controller.local_procs[ident]
            os.kill(victim.pid, signal.SIGKILL)
            assert victim.wait(30) == -signal.SIGKILL
            deadline = time.monotonic() + 60
            while c.controller.local_procs.get(ident) is victim or not all(
                    w.ready for w in c.controller.hub.workers.values()) or len(c.controller.hub.workers) < 2:
                assert time.monotonic() < deadline, c.stats()["workers"]
                time.sleep(0.1)
            fresh = c.controller.local_procs[ident]
            assert isinstance(fresh, ForkedProcess) and fresh.pid != victim.pid
            outs = [c.generate("llama-20m", f"again {i}", max_tokens=2, temperature=0) for i in range(4)]
            assert all(o.completion_tokens >= 1 for o in outs)
            assert _pidfds() == pidfds  # the victim's closed, the fresh one's open
            ctl = c.controller
            assert sorted(ctl.by_gpu.values(), key=id) == sorted(ctl.gpu_workers, key=id)  # the live ones alone


def test_fork_cpu_workers_false_starts_fresh_interpreters():
    with serving.demo_cluster(models=("llama-20m",), cpu_workers=1, fork_cpu_workers=False) as c:
        assert c.generate("llama-20m", "hello", max_tokens=2, temperature=0).completion_tokens >= 1
        (proc,) = c.controller.local_procs.values()
        assert isinstance(proc, subprocess.Popen) and _ppid(proc.pid) == os.getpid()


def test_without_pidfds_workers_start_fresh_and_no_child_is_left(monkeypatch):
    """Found in review: where pidfd_open is refused (old kernels, seccomp), each spawn crashed a server after its fork
    and left the forked worker running; now the spawner probes once and starts fresh interpreters."""
    def refused(pid, flags=0):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused)
    forkserver.forking_works.cache_clear()
    try:
        assert not forkserver.prepare(5)
        p = forkserver.popen_worker([sys.executable, "-c", "pass"], env=dict(os.environ), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, forked=True)
        assert type(p) is subprocess.Popen and p.wait(30) == 0
    finally:
        monkeypatch.undo()
        forkserver.forking_works.cache_clear()


KILLED_SPAWNER = """
import os, signal, subprocess, sys, time
from warmserve.worker import forkserver
assert forkserver.prepare(60)
w = forkserver.popen_worker([sys.executable, "-m", "warmserve", "worker", "--device", "cpu", "--memory-gib", "0.0625",
                             "--threads", "1", "--bind", "tcp://127.0.0.1:0", "--exit-with-parent", str(os.getpid())],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, forked=True)
helper = os.fork()
if helper == 0:  # a bare fork of the spawner (multiprocessing's fork, a pre-forking server) that lives on
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # the test reads the spawner's output to its end
    os.dup2(null, 2)
    time.sleep(60)
    os._exit(0)
print(forkserver.shared_server().proc.pid, w.pid, helper, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_spawner_takes_its_fork_server_and_workers_along_though_a_fork_of_it_lives():
    """Found in review: a process forked from the spawner held the server's socket open, so the server never saw its
    spawner go and the workers outlived a SIGKILLed controller."""
    out = subprocess.run([sys.executable, "-c", KILLED_SPAWNER], capture_output=True, text=True, timeout=120)
    server, worker, helper = (int(x) for x in out.stdout.split())
    try:
        deadline = time.monotonic() + 30
        while serving.pid_alive(server) or serving.pid_alive(worker):
            assert time.monotonic() < deadline, f"server {server} or worker {worker} outlived its spawner"
            time.sleep(0.1)
        assert serving.pid_alive(helper)
    finally:
        os.kill(helper, signal.SIGKILL)


def test_an_environment_value_that_is_not_utf8_reaches_a_forked_worker_as_bytes(tmp_path, monkeypatch):
    """Final review: a Latin-1 path in the environment (surrogates in os.environ) failed every forked spawn with a
    UnicodeEncodeError, and Cluster() with it."""
    assert forkserver.prepare(60)
    log_path = tmp_path / "w.log"
    env = dict(os.environ, WARMSERVE_TEST_LATIN1=os.fsdecode(b"/data/caf\xe9"))
    with open(log_path, "wb") as log:
        w = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0"), env=env, stdout=log, stderr=log,
                                    forked=True)
    try:
        assert isinstance(w, ForkedProcess)
        _wait_for("serving at", log_path)
    finally:
        w.kill()
        w.wait(30)


def test_a_server_slow_to_answer_is_passed_over_and_its_other_workers_live_on(tmp_path):
    """Final review: a spawn the server did not answer in time had the server stopped, and every healthy worker
    forked by it (they watch it) went with it."""
    assert forkserver.prepare(60)
    log_path = tmp_path / "w.log"
    with open(log_path, "wb") as log:
        healthy = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0"), env=dict(os.environ),
                                          stdout=log, stderr=log, forked=True)
    _wait_for("serving at", log_path)
    slow = forkserver.shared_server()
    os.kill(slow.proc.pid, signal.SIGSTOP)
    try:
        late = forkserver.popen_worker(_worker_cmd("--bind", "tcp://127.0.0.1:0"), env=dict(os.environ),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, forked=True)
        assert type(late) is subprocess.Popen  # a fresh interpreter in its place
        assert forkserver.shared_server() is not slow
    finally:
        os.kill(slow.proc.pid, signal.SIGCONT)
    late.kill()
    late.wait(30)
    deadline = time.monotonic() + 10
    while list(slow._children) != [healthy.pid]:  # the child it forked late: killed on arrival, its exit reported
        assert time.monotonic() < deadline, slow._children
        time.sleep(0.05)
    assert healthy.poll() is None, "a healthy worker went with its slow server"
    healthy.kill()
    assert healthy.wait(30) == -signal.SIGKILL
