"""`warmserve serve` (``launch.demo_specs``) passes on, as a WARNING while it waits, the line of its demo writer child
waiting for another process that writes the same checkpoint (found in review: two servers of one $WARMSERVE_HOME,
the second's last word "first run: ~20 s" for as long as the other wrote, the child's stderr read only at its end)."""

import logging
import os
import subprocess
import sys
import time

from warmserve.controller.launch import demo_specs

HOLD = ("import fcntl, sys, time; f = open(sys.argv[1] + '.lock', 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(float(sys.argv[2]))")


def test_the_wait_on_another_writer_is_said_while_it_lasts(tmp_path, caplog):
    path = str(tmp_path / "llama-20m")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path, "5"], stdout=subprocess.PIPE, text=True)
    said_at = []

    class Stamp(logging.Handler):
        def emit(self, record):
            said_at.append((time.monotonic(), record.getMessage()))

    stamp = Stamp(logging.WARNING)
    logging.getLogger("warmserve.controller").addHandler(stamp)
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
            specs = demo_specs(str(tmp_path), names=("llama-20m",))
        released_at = time.monotonic()
    finally:
        logging.getLogger("warmserve.controller").removeHandler(stamp)
        holder.kill()
        holder.wait()
    assert [s.path for s in specs] == [path]
    assert os.path.isfile(os.path.join(path, "config.json"))
    waits = [(t, m) for t, m in said_at if m.startswith("waiting for")]
    assert len(waits) == 1, said_at
    t_said, words = waits[0]
    assert f"process {holder.pid} (" in words and path in words
    # said while the holder still held the lock (5 s), not with the rest of the child's stderr at its end
    assert released_at - t_said > 2.0, (released_at - t_said, words)
