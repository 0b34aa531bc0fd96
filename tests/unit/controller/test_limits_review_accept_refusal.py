"""An asyncio server at its open-files limit (a child process under RLIMIT_NOFILE 48, as `ulimit -n` gives a
non-root user) with serve's exception handler: a client past the limit is answered 503 at once, the event loop does
not spin on its backlog, and once descriptors free up a new client is served. Found in review: the client waited
unanswered and the controller's CPU grew from 7% to 80% in 30 s (controller/accept_refusal.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

_CHILD = r"""
import asyncio, json, resource, sys, time
from warmserve.controller.accept_refusal import AcceptRefusal
from warmserve.controller.open_files import AcceptErrorLog

resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def serve(reader, writer):
    while await reader.readline():
        writer.write(b"ok\n")
        await writer.drain()
    writer.close()

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptRefusal(AcceptErrorLog()))
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        print(json.dumps({"cpu_s": time.process_time()}), flush=True)

asyncio.run(main())
"""


def _ask(port: int, timeout_s: float = 3.0) -> bytes:
    """The first answer a new client gets to one line; b"" when none came in ``timeout_s``."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        s.sendall(b"hi\n")
        return s.recv(4096)
    except (socket.timeout, ConnectionError):
        return b""
    finally:
        s.close()


def test_client_past_the_open_files_limit_is_refused_with_503_and_the_loop_recovers():
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held: list[socket.socket] = []
    try:
        port = int(child.stdout.readline())
        answer = b""
        for _ in range(60):  # fewer than the limit of 48 can be held: the loop's own descriptors count
            s = socket.create_connection(("127.0.0.1", port), timeout=3.0)
            s.sendall(b"hi\n")
            try:
                answer = s.recv(4096)
            except socket.timeout:
                answer = b""
            if answer != b"ok\n":
                s.close()
                break
            held.append(s)
        assert 10 < len(held) < 48, len(held)
        assert answer.startswith(b"HTTP/1.1 503"), f"the client past the limit got {answer!r}, not a 503"
        assert b"retry-after: 1" in answer.lower()

        child.stdin.write("\n")
        child.stdin.flush()
        cpu0 = json.loads(child.stdout.readline())["cpu_s"]
        refused = [_ask(port) for _ in range(5)]
        time.sleep(2.0)
        child.stdin.write("\n")
        child.stdin.flush()
        cpu1 = json.loads(child.stdout.readline())["cpu_s"]
        assert all(a.startswith(b"HTTP/1.1 503") for a in refused), refused
        # Before: every retry re-read a full backlog, and the loop's CPU grew each second it stayed at the limit.
        assert cpu1 - cpu0 < 0.5, f"the loop used {cpu1 - cpu0:.2f} s of CPU in about 2 s at the limit"

        for s in held:
            s.close()
        held.clear()
        time.sleep(0.3)
        assert _ask(port) == b"ok\n"
    finally:
        for s in held:
            s.close()
        child.kill()
        child.wait()
