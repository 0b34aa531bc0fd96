"""The Ray launcher's checks before anything waits on Ray: a node that cannot hold its workers, an endpoint that
far nodes cannot reach, and the head's address (IPv6; "auto" naming a cluster that has crashed). Each was found in
review; none needs a Ray cluster."""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from warmserve.controller import ray_connect
from warmserve.controller.ray_launch import RayClusterError, RayNode, connect_address, plan_slots
from warmserve.errors import InvalidArgumentError


def node(i: int, address="10.0.0.1", cpus=8.0, gpus=0) -> RayNode:
    return RayNode(node_id=f"{i:02d}" * 28, address=address, hostname="box", cpus=cpus, gpus=gpus)


def test_a_gpu_node_with_fewer_cpus_than_gpus_is_refused_at_once_naming_the_shortfall():
    """Each GPU's bundle takes a CPU too: 8 GPUs and 2 CPUs made a placement group Ray could never place, and the
    start waited out worker_start_timeout_s to blame "other work"."""
    with pytest.raises(RayClusterError) as e:
        plan_slots([node(1, cpus=8), node(2, "10.0.0.3", cpus=2, gpus=8)], cpu_workers=2, tag="r1")
    msg = str(e.value)
    assert "02020202 (10.0.0.3)" in msg and "needs 8 CPUs but it offers 2" in msg, msg
    assert "--num-cpus 8" in msg, msg
    assert e.value.needs_cpus == 8 and e.value.gpus == 8
    # As many CPUs as GPUs: placeable.
    assert len(plan_slots([node(2, cpus=8, gpus=8)], cpu_workers=2, tag="r1")) == 8


def test_an_ipc_endpoint_is_kept_and_refused_when_a_node_is_on_another_host():
    """Found in review: ipc:///tmp/ws.sock became ipc://:/tmp/ws.sock, and was offered to far nodes."""
    here = [node(1, "10.0.0.1")]
    assert connect_address("ipc:///tmp/ws.sock", "10.0.0.1", here) == "ipc:///tmp/ws.sock"
    with pytest.raises(InvalidArgumentError, match="10.0.0.2"):
        connect_address("ipc:///tmp/ws.sock", "10.0.0.1", [*here, node(2, "10.0.0.2")])


def test_ipv6_endpoints_keep_their_brackets_and_an_ipv6_loopback_is_refused_for_far_nodes():
    """Found in review: tcp://[::1]:5555 was not seen as loopback and was handed to nodes on other hosts."""
    far = [node(1, "10.0.0.1"), node(2, "10.0.0.2")]
    with pytest.raises(InvalidArgumentError, match="10.0.0.2"):
        connect_address("tcp://[::1]:5555", "10.0.0.1", far)
    assert connect_address("tcp://[::1]:5555", "10.0.0.1", far[:1]) == "tcp://[::1]:5555"
    assert connect_address("tcp://[::]:5555", "fd00::1", [node(1, "fd00::1")]) == "tcp://[fd00::1]:5555"
    assert connect_address("tcp://[fd00::1]:5555", "fd00::1", [node(1, "fd00::2")]) == "tcp://[fd00::1]:5555"


def test_the_head_probe_reaches_an_ipv6_head():
    """Found in review: "[::1]:PORT" was probed with its brackets, and a head that answered was refused."""
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with listener:
        port = listener.getsockname()[1]
        ray_connect.probe_head(f"[::1]:{port}")
    with pytest.raises(RayClusterError, match=r"\[::1\]"):
        ray_connect.probe_head(f"[::1]:{port}")  # closed now


def test_auto_with_the_address_file_of_a_crashed_cluster_fails_at_once(tmp_path):
    """`--ray` with no address, on a machine whose Ray cluster died (its processes killed, `ray_current_cluster`
    left behind): found in review, ray.init waited on the dead head for ever. In a child process, whose hang can be
    ended; nothing of Ray starts (connecting to a head starts no process here)."""
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    ray_dir = tmp_path / "ray"
    ray_dir.mkdir()
    (ray_dir / "ray_current_cluster").write_text(f"127.0.0.1:{dead}\n")
    code = textwrap.dedent("""
        from warmserve.controller.ray_launch import RayClusterError, RayLauncher
        try:
            RayLauncher(None).connect()
        except RayClusterError as e:
            print("refused:", e)
        else:
            print("connected")
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path)
    # Ray's "auto" takes any gcs_server process it sees on the machine over the address file (found in CI: another
    # test's Ray cluster, in its own network namespace, was named instead of the dead head). In a PID namespace of
    # its own the child sees none.
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
    elif _gcs_servers_running():
        pytest.skip("another Ray cluster runs on this machine, and no PID namespace can hide it (needs root)")
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("RayLauncher('auto').connect() still waits on the crashed cluster's head after 30 s")
    assert r.stdout.startswith("refused:") and f"127.0.0.1:{dead}" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert time.monotonic() - t0 < 20
    # RAY_ADDRESS naming a dead head: the same.
    env["RAY_ADDRESS"] = f"127.0.0.1:{dead}"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert r.stdout.startswith("refused:") and f"127.0.0.1:{dead}" in r.stdout, (r.stdout, r.stderr[-2000:])


def _gcs_servers_running() -> bool:
    import psutil

    return any(p.info["name"] == "gcs_server" for p in psutil.process_iter(["name"]))
