"""`warmserve serve` at its open-files limit: it raises its soft limit to the hard one at start (as vLLM does), and
when clients hold every descriptor it logs one line that says so, with the numbers and the fix, instead of asyncio's
traceback per failed accept (found in review: a full backlog gave hundreds a second). Once the clients let go, it
serves again. A real server started at a soft limit of 160 and a hard one of 320; 500 idle client connections."""

import resource
import socket
import time

import serving

SOFT, HARD = 160, 320
CLIENTS = 500


def _low_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


def _soft_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    return int(line.split()[3])


def test_a_server_out_of_descriptors_says_so_once_and_serves_again(tmp_path):
    proc, url = serving.start(tmp_path, models=("llama-20m",), cpu_workers=1, preexec_fn=_low_limit)
    held = []
    try:
        assert _soft_limit(proc.pid) == HARD  # raised at start
        port = int(url.rsplit(":", 1)[1])
        for _ in range(CLIENTS):  # idle connections: each holds a descriptor of the server once accepted
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(3.5)  # asyncio retries the accept each second
        log = (tmp_path / "serve.log").read_text()
        said = [line for line in log.splitlines() if "cannot accept connections" in line]
        assert len(said) == 1, said
        assert "Too many open files" in said[0] and f"open-files limit {HARD}" in said[0] and "ulimit -n" in said[0]
        assert "out of system resource" not in log and "Traceback" not in log
        for s in held:
            s.close()
        held.clear()
        deadline = time.monotonic() + 20
        while True:  # the backlog's connections are accepted and closed; then a request is served
            try:
                status, health = serving.get_json(url + "/health")
                assert status == 200, health
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        for s in held:
            s.close()
        assert serving.stop(proc) == 0
