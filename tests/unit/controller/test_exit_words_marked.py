"""How a local worker's process ended (controller/restarts.py ``exit_words``): a SIGKILL the controller sent
itself (``kill_marked``: a silent worker stopped, a replaced one) is said to be the controller's. Found in review:
every such end, and every drained worker killed as it exited, was put down to "the kernel's OOM killer"."""

from __future__ import annotations

import subprocess
import sys

from warmserve.controller.restarts import exit_words, kill_marked


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_sigkill_of_the_controllers_own_is_not_the_oom_killers():
    p = _sleeper()
    kill_marked(p)
    p.wait(10)
    assert exit_words(p) == "killed by SIGKILL from the controller, which stopped it"


def test_a_sigkill_from_elsewhere_still_names_the_oom_killer():
    p = _sleeper()
    p.kill()
    p.wait(10)
    assert exit_words(p).startswith("killed by SIGKILL (the kernel's OOM killer")


def test_a_process_that_had_ended_is_not_marked_as_the_controllers_kill():
    """Found in review: a forked worker killed from elsewhere was reported as killed by the controller, whose
    kill came after the process had ended (its status reaches the fork server later than its connection's end)."""
    import os
    import signal
    import time

    p = _sleeper()
    os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a zombie now, not yet reaped (as under a fork server)
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.01)
    kill_marked(p)
    p.wait(10)
    assert exit_words(p).startswith("killed by SIGKILL (the kernel's OOM killer")


def test_a_process_killed_from_elsewhere_and_still_exiting_is_not_marked():
    """Found in a soak: a worker SIGKILLed from elsewhere with a large pool mapped takes a while to exit, and the
    controller's kill came while it still read as running (4 of 6 outside kills logged as the controller's). Here
    the kill lands while the process holds 512 MiB of touched memory, and the controller's follows at once: a SIGKILL
    pending or an exit under way is no process of the controller's to kill."""
    import os
    import signal

    p = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(512 << 20); "
                          "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    os.kill(p.pid, signal.SIGKILL)
    kill_marked(p)
    p.wait(10)
    assert exit_words(p).startswith("killed by SIGKILL (the kernel's OOM killer")
