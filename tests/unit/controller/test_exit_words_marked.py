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
