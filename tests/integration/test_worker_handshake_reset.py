"""`warmserve worker --controller` at an address whose connections are reset as soon as they are accepted (a
network fault, a proxy that drops them): the worker says the connection broke during its handshake, once, at
WARNING, and keeps trying. Found in review: each such reset was logged as the controller refusing the worker's
key, at ERROR, sending operators after a CURVE problem that did not exist."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time


def _resetting_server(stop: threading.Event) -> tuple[int, list[int]]:
    """A loopback port whose every connection is closed with a reset (SO_LINGER 0) once ZeroMQ's greeting begins;
    returns it and the running count of connections reset."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    resets = [0]

    def run():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            conn.settimeout(1.0)
            try:
                conn.recv(10)  # the peer's greeting has begun: the handshake is under way
            except OSError:
                pass
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            resets[0] += 1
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], resets


def test_a_handshake_broken_by_the_network_is_no_key_refusal(tmp_path):
    stop = threading.Event()
    port, resets = _resetting_server(stop)
    log = tmp_path / "worker.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "warmserve", "worker", "--controller", f"tcp://127.0.0.1:{port}",
                                 "--memory-gib", "0.05", "--threads", "1", "--exit-with-parent", str(os.getpid())],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while resets[0] < 5:  # the worker imports first, then retries every 0.1 s
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
    finally:
        stop.set()
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert "refused this worker's key" not in text, text[-2000:]
    broke = [line for line in text.splitlines() if "broke during its handshake" in line]
    assert len(broke) == 1 and "WARNING" in broke[0] and "ECONNRESET" in broke[0], text[-2000:]
