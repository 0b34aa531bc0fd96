"""``hub_sockets.sweep_dead_owners``: a start removes the CURVE key dirs of controllers that ended without removing
them (SIGKILLed while a local worker started), and nothing a running controller, another pid namespace or an older
naming owns: the integration test (test_review_abnormal_ends.py) kills a real server; this one pins who is spared."""

import os
import subprocess

from warmserve.controller.hub_sockets import CURVE_DIR_PREFIX, sweep_dead_owners
from warmserve.owned_dirs import pid_ns


def test_only_dirs_whose_owner_has_ended_in_this_namespace_go(tmp_path):
    ns = pid_ns()
    assert ns, "no /proc/self/ns/pid here: the sweep would spare everything"
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid runs nothing now (reuse within this test is as unlikely as it is harmless)
    live, dead = os.getpid(), gone.pid
    names = {
        f"{CURVE_DIR_PREFIX}{ns}-{dead}-a1b2": False,  # its controller ended: removed
        f"{CURVE_DIR_PREFIX}{ns}-{live}-c3d4": True,  # a running controller's
        f"{CURVE_DIR_PREFIX}{ns + 1}-{dead}-e5f6": True,  # another pid namespace's: its pids mean nothing here
        f"{CURVE_DIR_PREFIX}k7m8n9p0": True,  # the naming before owners were named: no owner to ask
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "local.key_secret").write_bytes(b"secret")
    (tmp_path / f"{CURVE_DIR_PREFIX}{ns}-{dead}-file").write_bytes(b"")  # not a dir: not one of ours
    sweep_dead_owners(str(tmp_path))
    assert {n: (tmp_path / n).exists() for n in names} == names
    assert (tmp_path / f"{CURVE_DIR_PREFIX}{ns}-{dead}-file").exists()
