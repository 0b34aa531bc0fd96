"""A Ctrl-C in a command that has no handler of its own ends in one line and the shell's status for SIGINT (130),
not a KeyboardInterrupt traceback (found in review: `warmserve bench placement`, `calibrate`, `bench engine`, ...)."""

import os
import signal
import subprocess
import sys


def test_ctrl_c_mid_command_says_interrupted_in_one_line():
    p = subprocess.Popen([sys.executable, "-m", "warmserve", "bench", "placement", "--repeats", "50"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        head = p.stdout.readline()  # the table's header: the command's main() is running
        assert "plan ms" in head, head + p.stderr.read()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "warmserve bench placement: interrupted" and "Traceback" not in err, err
