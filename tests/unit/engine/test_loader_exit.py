"""A process that exits while loads run (a Ctrl-C during ``load_model(...).wait()``, any exit without cancel())
ends after the tensors its loads are on, not after the whole checkpoints (found in review: the loads' finishing
threads are not daemons, and the interpreter joined them while they copied and converted everything left)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint

#: Loads at once, each of a checkpoint of many small tensors: a load stops between two of them.
LOADS = 4
#: The longest the child may take to say its next line (the full loads take ~5 s here): past it the child hangs.
LINE_TIMEOUT_S = 60.0

CHILD = r"""
import atexit, os, sys, time
import torch
torch.set_num_threads(1)
from warmserve.engine import load_model
from warmserve.memory import PagePool

path, n = sys.argv[1], int(sys.argv[2])
ckpt_bytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))  # float32: twice what loads
pool = PagePool(-(-n * ckpt_bytes >> 21) << 21, backend="host", prefault=False)
# The moment the interpreter has joined its non-daemon threads (the loads' own): its exit handlers run next, this
# one first (registered after the pool's finalizer). The rest of the exit (the pool's unmap, torch's teardown,
# about 0.5 s here) is the same whatever the loads do.
atexit.register(lambda: print("joined", time.monotonic(), flush=True))
start = lambda: [load_model(path, pool, dtype="bfloat16", kv_reserve_bytes=0) for _ in range(n)]  # all converted
t0 = time.monotonic()
for m in [job.wait() for job in start()]:
    m.close()
print("full", time.monotonic() - t0, flush=True)
try:
    jobs = start()
    print("waiting", flush=True)
    for job in jobs:
        job.wait()
    print("finished before the interrupt", flush=True)
except KeyboardInterrupt:
    done = sum(j.progress[0] for j in jobs) / sum(j.progress[1] for j in jobs)
    print("interrupted", time.monotonic(), done, flush=True)
    sys.exit(130)
"""


class _Lines:
    """The child's stdout line by line, each waited for at most LINE_TIMEOUT_S: a child that hangs fails the test
    instead of hanging the run (a plain readline() has no timeout, and select() on a buffered text pipe misses the
    lines its buffer already holds, so this reads the raw descriptor)."""

    def __init__(self, proc: subprocess.Popen):
        self.fd, self.buf = proc.stdout.fileno(), b""

    def next(self) -> str:
        deadline = time.monotonic() + LINE_TIMEOUT_S
        while b"\n" not in self.buf:
            left_s = deadline - time.monotonic()
            if left_s <= 0 or not select.select([self.fd], [], [], left_s)[0]:
                raise AssertionError(f"the child said nothing for {LINE_TIMEOUT_S} s (hung); so far: {self.buf!r}")
            chunk = os.read(self.fd, 4096)
            if not chunk:  # it exited: what is left, without a newline
                line, self.buf = self.buf, b""
                return line.decode()
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode() + "\n"


def test_ctrl_c_during_wait_exits_after_the_tensors_the_loads_are_on(tmp_path):
    # float32 on disk, loaded as bfloat16: every tensor is converted on the load's thread, 64 layers of them (32
    # finished too soon to interrupt once conversions read whole rows at a time)
    path = write_checkpoint(str(tmp_path), "deep", config_dict(DemoSpec("llama", 256, 1024, 64, 4, 2, vocab_size=512)))
    err_path = tmp_path / "child.err"
    with open(err_path, "wb") as err_file:  # a file, not a pipe: a chatty child cannot block on a full pipe
        proc = subprocess.Popen([sys.executable, "-c", CHILD, path, str(LOADS)], stdout=subprocess.PIPE,
                                stderr=err_file)
    try:
        lines = _Lines(proc)
        full_s = float(lines.next().split()[1])
        assert lines.next() == "waiting\n"
        proc.send_signal(signal.SIGINT)  # the user's Ctrl-C
        said = lines.next().split()
        assert said and said[0] == "interrupted", said
        interrupted_s, done = float(said[1]), float(said[2])
        joined = lines.next().split()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    err = err_path.read_text()
    assert proc.returncode == 130 and joined and joined[0] == "joined" and "Traceback" not in err, err[-3000:]
    left_s = (1 - done) * full_s
    assert left_s > 0.1, f"the loads were {done:.0%} done when interrupted: too little left to tell"
    stop_s = float(joined[1]) - interrupted_s
    assert stop_s < 0.25 * left_s, (f"the loads' threads ended {stop_s:.2f} s after the interrupt; the {LOADS} "
                                    f"loads take {full_s:.2f} s and were {done:.0%} done ({left_s:.2f} s left)")
    assert time.monotonic() - interrupted_s < 30
