"""`warmserve worker --bind` on a port in use: a typed error naming the fix, no traceback, and before torch is
imported or the pool made (seconds of work)."""

from __future__ import annotations

import socket
import subprocess
import sys


def test_a_port_in_use_is_refused_with_a_typed_error_before_the_slow_set_up():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        # -X importtime lists every module imported on stderr: torch must not be among them.
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "warmserve", "worker", "--bind",
                            f"tcp://127.0.0.1:{port}", "--memory-gib", "0.1", "--threads", "1"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        holder.close()
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    said = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert r.returncode == 2, said
    assert "Traceback" not in r.stderr
    assert said == [f"warmserve worker: InvalidArgumentError: the worker cannot bind tcp://127.0.0.1:{port}: "
                    "Address already in use; another process holds that port (an earlier warmserve still running?): "
                    "pick another port (--bind tcp://HOST:PORT; port 0 picks a free one) or stop that process"]
    assert "torch" not in imported
