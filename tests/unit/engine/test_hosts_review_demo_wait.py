"""A second writer of a demo checkpoint that another process is writing says whom it waits for (found in review: two
servers of one $WARMSERVE_HOME, the second silent for as long as the first wrote, or for ever behind a stopped one)."""

import subprocess
import sys
import time

from warmserve.engine.demo import WAITING_WORDS

HOLD = ("import fcntl, sys, time; f = open(sys.argv[1] + '.lock', 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(float(sys.argv[2]))")
SPEC = "DemoSpec('llama', 64, 128, 2, 4, 2, vocab_size=256)"


def test_the_waiting_writer_names_the_process_it_waits_for(tmp_path):
    path = str(tmp_path / "tiny")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path, "4"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-c", "import sys; from warmserve.engine.demo import DemoSpec, config_dict, "
             f"write_checkpoint; print(write_checkpoint(sys.argv[1], 'tiny', config_dict({SPEC})))", str(tmp_path)],
            capture_output=True, text=True, timeout=120)
        waited_s = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == path
    assert waited_s > 2.0  # it did wait for the holder, which held the lock 4 s
    lines = [ln for ln in second.stderr.splitlines() if ln.startswith(WAITING_WORDS)]
    assert len(lines) == 1, second.stderr
    assert f"process {holder.pid} (" in lines[0] and path in lines[0] and f"kill {holder.pid}" in lines[0]


def test_a_free_lock_says_nothing(tmp_path):
    second = subprocess.run(
        [sys.executable, "-c", "import sys; from warmserve.engine.demo import DemoSpec, config_dict, "
         f"write_checkpoint; print(write_checkpoint(sys.argv[1], 'tiny', config_dict({SPEC})))", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert WAITING_WORDS not in second.stderr
