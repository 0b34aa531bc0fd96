"""`warmserve serve --curve-dir` waiting for a remote worker, and two `warmserve worker`s it must refuse: one with a
key not in DIR/workers/, one with no keys. From a security review: both were refused without a word on either side
and retried for ever, and the controller's timeout pointed at the network only. Now each worker logs an ERROR
saying its key was refused (and keeps trying), the controller a WARNING naming the refused key, and the timeout
names the CURVE keys."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import zmq.auth

import serving
from net_ports import free_port

#: The controller's wait for its remote worker. The workers start first and are connecting (retrying every 0.1 s, as
#: ZeroMQ does) before the controller binds, so their handshakes come within a fraction of a second of its start:
#: 5 s is ample. (Started together, three processes importing on two cores, the workers took up to 7 s of the
#: controller's wait, and 16 s held the test for 20 s.)
START_TIMEOUT_S = 5


def _wait_for(path, text, until_s):
    while time.monotonic() < until_s:
        if os.path.exists(path) and text in open(path).read():
            return True
        time.sleep(0.2)
    return False


def test_refused_workers_say_so_and_so_do_the_controller_and_its_timeout(tmp_path):
    model = serving.demo_paths(("llama-20m",))["llama-20m"]
    keys = tmp_path / "keys"
    (keys / "workers").mkdir(parents=True)
    zmq.auth.create_certificates(str(keys), "server")
    zmq.auth.create_certificates(str(tmp_path), "rogue")
    zmq.auth.create_certificates(str(keys / "workers"), "listed")  # a key listed (none: refused at start)
    os.remove(keys / "workers" / "listed.key_secret")
    for f in (keys / "server.key_secret", tmp_path / "rogue.key_secret"):
        os.chmod(f, 0o600)
    rogue_public = zmq.auth.load_certificate(str(tmp_path / "rogue.key"))[0].decode()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"worker_start_timeout_s = {START_TIMEOUT_S}\n")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    logs = {n: tmp_path / f"{n}.err" for n in ("ctl", "rogue", "plain")}
    common = ["--memory-gib", "0.05", "--threads", "1"]
    cmds = {
        "ctl": ["serve", "--config", str(cfg), "--model", model, "--cpu-workers", "0", "--remote-workers", "1",
                "--bind", endpoint, "--curve-dir", str(keys), "--port", "0"],
        "rogue": ["worker", "--controller", endpoint, "--curve-server-key", str(keys / "server.key"),
                  "--curve-secret-key", str(tmp_path / "rogue.key_secret"), "--worker-id", "rogue-w", *common],
        "plain": ["worker", "--controller", endpoint, "--worker-id", "plain-w", *common],
    }
    procs = {}
    try:
        for name in ("rogue", "plain", "ctl"):
            if name == "ctl":  # once both workers are up and connecting (see START_TIMEOUT_S)
                up_by = time.monotonic() + 90
                for w in ("rogue", "plain"):
                    assert _wait_for(logs[w], "connecting to the controller", up_by), logs[w].read_text()
            with open(logs[name], "w") as err:
                procs[name] = subprocess.Popen([sys.executable, "-m", "warmserve", *cmds[name]],
                                               stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S + 20
        for name in ("rogue", "plain"):
            assert _wait_for(logs[name], "refused this worker's key", deadline), logs[name].read_text()
        assert procs["rogue"].poll() is None and procs["plain"].poll() is None, "they keep trying"
        assert procs["ctl"].wait(max(1.0, deadline - time.monotonic())) == 1
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    rogue, plain, ctl = (logs[n].read_text() for n in ("rogue", "plain", "ctl"))
    assert "ERROR" in rogue and "not in the controller's --curve-dir DIR/workers/" in rogue
    assert "ERROR" in plain and "pass --curve-server-key and --curve-secret-key" in plain
    refused = [line for line in ctl.splitlines() if "refused a CURVE peer" in line]
    assert len(refused) == 1 and "WARNING" in refused[0] and rogue_public in refused[0], ctl
    assert "0 of 1 workers registered" in ctl and f"{keys}/workers/" in ctl and "--curve-server-key" in ctl
    # the start-up hint names the keys a worker needs (found in review: a worker started as it said was refused)
    hint = f"start each with `warmserve worker --controller {endpoint} --curve-server-key {keys}/server.key "
    assert hint + "--curve-secret-key WORKER.key_secret" in ctl, ctl
