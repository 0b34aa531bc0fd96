"""The Ray launcher's connection, found in a review of the Ray launch path: an address whose port accepts TCP but
is no Ray head, and a relative log_dir. No Ray cluster: a port that is no head is a plain listener (nothing of Ray
starts to connect to it), and the log_dir is read where the launcher hands it to its actors. Two launchers in one
process, an address other than the connected cluster's, the program's own connection and a close while Ray's head
is gone are tested on a real Ray cluster: integration/test_ray_review_shared_connection.py."""

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller import ray_launch
from warmserve.controller.ray_launch import RayLauncher, RayNode

from controller_harness import demo_path

#: A child stuck in ray.init is killed after this many seconds (the test then fails).
CHILD_LIMIT_S = 40


class _Listener:
    """A TCP port that accepts connections and answers each with ``reply`` (b"": nothing), for as long as the
    test runs: what the dashboard (HTTP/1), a port in the wrong service's hands, or an HTTP/2 server that is not
    Ray's GCS looks like to a client."""

    def __init__(self, reply: bytes = b""):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.reply:
                try:
                    conn.recv(64)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


#: An HTTP/2 server's first frame: an empty SETTINGS frame (a gRPC server answers so, and then to nothing else).
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HTTP1 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def _child(code: str, env: dict | None = None) -> tuple[str, float]:
    """Run ``code`` in a child process; (its stdout, seconds it took). A child still running after CHILD_LIMIT_S
    fails the test: that is the hang under test."""
    t0 = time.monotonic()
    child_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child_env.update(env or {})
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=CHILD_LIMIT_S, env=child_env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {CHILD_LIMIT_S} s (hung in ray.init?)")
    return r.stdout + r.stderr[-1500:], time.monotonic() - t0


CONNECT = """
    from warmserve.controller.ray_launch import RayClusterError, RayLauncher
    try:
        import warmserve.controller.ray_connect as rc
        rc.CONNECT_TIMEOUT_S = {deadline}
    except ImportError:  # before the connect deadline existed
        pass
    try:
        RayLauncher({address!r}).connect()
    except RayClusterError as e:
        print("refused:", e)
    else:
        print("connected")
"""


@pytest.mark.parametrize("reply", [b"", HTTP1], ids=["silent", "http1"])
def test_a_port_that_accepts_tcp_but_is_no_ray_head_is_refused_within_seconds(tmp_path, reply):
    """`--ray 127.0.0.1:8265` (the dashboard) or any port that accepts TCP: found in review, ray.init retried it
    for ever (at 400 s still). Now: a RayClusterError naming the address and the GCS port, within seconds."""
    pytest.importorskip("ray")
    listener = _Listener(reply)
    try:
        out, took = _child(CONNECT.format(address=listener.address, deadline=60),
                           env={"RAY_TMPDIR": str(tmp_path)})
    finally:
        listener.close()
    assert "refused:" in out and listener.address in out and "6379" in out, out
    assert took < 20, (took, out)


def test_a_head_that_answers_http2_but_never_lets_ray_connect_is_given_up_at_the_deadline(tmp_path):
    """A gRPC server that is not the GCS (Ray's client server on 10001) passes the greeting; ray.init then retries
    for ever. The connect gives up at its deadline, and the process, its init thread still stuck, exits."""
    pytest.importorskip("ray")
    listener = _Listener(H2_SETTINGS)
    try:
        out, took = _child(CONNECT.format(address=listener.address, deadline=3), env={"RAY_TMPDIR": str(tmp_path)})
    finally:
        listener.close()
    assert "refused:" in out and "did not connect within 3 s" in out and listener.address in out, out
    assert took < 30, (took, out)


def test_the_start_on_the_event_loop_can_be_timed_out_while_ray_init_hangs(tmp_path):
    """Found in review: ray.init ran on the event loop, so neither Cluster's start timeout nor Ctrl-C (serve's
    signal handler runs on that loop) could stop it. Now the loop stays free: a wait_for around the start ends it
    on time, and the process exits."""
    pytest.importorskip("ray")
    listener = _Listener(H2_SETTINGS)
    code = f"""
        import asyncio, time
        from warmserve.config import ClusterConfig, ModelSpec
        from warmserve.controller.ray_launch import start_ray_cluster
        cfg = ClusterConfig(models=(ModelSpec(path={demo_path()!r}),), cpu_workers=1)
        t0 = time.monotonic()
        try:
            asyncio.run(asyncio.wait_for(start_ray_cluster(cfg, {listener.address!r}), 3))
        except (asyncio.TimeoutError, TimeoutError):
            print(f"timed out after {{time.monotonic() - t0:.1f}} s")
    """
    try:
        out, took = _child(code, env={"RAY_TMPDIR": str(tmp_path)})
    finally:
        listener.close()
    assert "timed out after" in out, out
    assert float(out.split("timed out after ")[1].split()[0]) < 8, out


def test_a_relative_log_dir_and_host_cache_dir_reach_the_actors_absolute(monkeypatch, tmp_path):
    """Found in review: the actors resolved log_dir against their raylet's directory (the logs landed there), and
    the error named a path relative to the user's directory that did not exist."""
    monkeypatch.chdir(tmp_path)
    node = RayNode("ab" * 28, "127.0.0.1", "here", 2.0, 0)
    seen = {}

    class Stop(Exception):
        pass

    def spawn(self, slot, connect, *, log_dir=None, extra_args=(), **kw):
        seen.update(log_dir=log_dir, extra_args=extra_args)
        raise Stop()

    def connect(self):
        self._connected = False  # nothing to let go of at close

    monkeypatch.setattr(RayLauncher, "connect", connect)
    monkeypatch.setattr(RayLauncher, "alive_nodes", lambda self: [node])
    monkeypatch.setattr(RayLauncher, "place", lambda self, slots, timeout_s: None)
    monkeypatch.setattr(RayLauncher, "spawn", spawn)
    monkeypatch.setattr(ray_launch, "check_model_paths", lambda *a: None, raising=False)
    cfg = ClusterConfig(models=(ModelSpec(path=demo_path()),), cpu_workers=1, host_cache_bytes=1 << 30,
                        host_cache_dir="hcache", controller=ControllerConfig(bind="tcp://127.0.0.1:0"))
    with pytest.raises(Stop):
        asyncio.run(ray_launch.start_ray_cluster(cfg, "auto", log_dir="wlogs"))
    assert seen["log_dir"] == str(tmp_path / "wlogs"), seen
    args = list(seen["extra_args"])
    assert args[args.index("--host-cache-dir") + 1] == str(tmp_path / "hcache"), args
