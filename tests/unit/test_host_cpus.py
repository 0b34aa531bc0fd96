"""The cores a CPU worker's default threads share (``warmserve.host_cpus``): the process's CPU affinity, and its
cgroup's CPU quota where that allows fewer. Found in review: the default was os.cpu_count(), every core of the host,
so a server given a few cores (a cpuset) or a CPU limit (docker --cpus, a Kubernetes limit) ran each worker with
several torch threads to a core. The affinity case runs a real `serve`: integration/test_worker_threads_affinity.py."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from warmserve.host_cpus import MOUNTINFO, _cgroup_mounts, cpu_quota_cores

CHILD = """
import os, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
from warmserve.host_cpus import cpu_quota_cores, usable_cores
print(usable_cores(), cpu_quota_cores())
"""


@pytest.fixture
def cpu_cgroup_of_one_core():
    """A cgroup v1 cpu group of the test's own with a quota of one core (100 ms per 100 ms); skipped where none can
    be made (not root, no v1 cpu hierarchy, a read-only one)."""
    root, mount = _cgroup_mounts(MOUNTINFO).get("v1", (None, None))
    if root != "/" or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a cgroup v1 cpu hierarchy mounted whole and two cores")
    d = os.path.join(mount, f"warmserve-test-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(d)
        with open(os.path.join(d, "cpu.cfs_period_us"), "w") as f:
            f.write("100000")
        with open(os.path.join(d, "cpu.cfs_quota_us"), "w") as f:
            f.write("100000")
    except OSError as e:
        if os.path.isdir(d):
            os.rmdir(d)
        pytest.skip(f"cannot make a cpu cgroup here: {e}")
    yield d
    os.rmdir(d)  # the child has exited: the group is empty


def test_a_process_in_a_cgroup_with_a_one_core_quota_gets_one_core(cpu_cgroup_of_one_core):
    r = subprocess.run([sys.executable, "-c", CHILD, cpu_cgroup_of_one_core], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1", "1.0"]  # before: os.cpu_count(), 2 here


def test_a_remote_worker_in_that_cgroup_runs_torch_on_one_thread(cpu_cgroup_of_one_core):
    """`warmserve worker` with no --threads: torch's default (every core of the affinity), capped at the quota."""
    code = CHILD.split("from warmserve.host_cpus")[0] + (
        "import torch\nfrom warmserve.worker.main import prewarm_engine\n"
        "before = torch.get_num_threads()\nprewarm_engine('cpu', None)\nprint(before, torch.get_num_threads())\n")
    r = subprocess.run([sys.executable, "-c", code, cpu_cgroup_of_one_core], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = map(int, r.stdout.split())
    assert after == 1, (before, after)  # before: torch's default, `before` threads


def _tree(tmp_path, cpu_max: dict[str, str], proc_cgroup: str, mount_root: str = "/"):
    """A cgroup v2 hierarchy under tmp_path/cg: ``cpu_max`` maps a group's path to its cpu.max line."""
    point = tmp_path / "cg"
    for group, line in cpu_max.items():
        d = point / group.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(line + "\n")
    (tmp_path / "mountinfo").write_text(f"41 31 0:38 {mount_root} {point} rw,relatime - cgroup2 cgroup2 rw\n")
    (tmp_path / "cgroup").write_text(proc_cgroup)
    return str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")


def test_cgroup_v2_the_least_quota_of_the_group_and_its_ancestors(tmp_path):
    files = _tree(tmp_path, {"/": "max 100000", "/kubepods": "400000 100000", "/kubepods/pod1": "150000 100000",
                             "/kubepods/pod1/c1": "max 100000"}, "0::/kubepods/pod1/c1\n")
    assert cpu_quota_cores(*files) == 1.5


def test_cgroup_v2_inside_a_cgroup_namespace_reads_the_mount_point_itself(tmp_path):
    files = _tree(tmp_path, {"/": "200000 100000"}, "0::/\n")  # a container's own group is its root
    assert cpu_quota_cores(*files) == 2.0


def test_no_quota_no_hierarchy_or_nothing_readable_is_none(tmp_path):
    assert cpu_quota_cores(*_tree(tmp_path / "a", {"/": "max 100000", "/g": "max"}, "0::/g\n")) is None
    assert cpu_quota_cores(str(tmp_path / "missing"), str(tmp_path / "missing")) is None
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mountinfo").write_text("")  # no cgroup hierarchy mounted
    (tmp_path / "b" / "cgroup").write_text("0::/\n")
    assert cpu_quota_cores(str(tmp_path / "b" / "mountinfo"), str(tmp_path / "b" / "cgroup")) is None


def test_a_mount_point_named_in_bytes_that_are_not_utf8_or_with_a_space_is_read(tmp_path):
    """Found in the locale review: one mount point whose name is not UTF-8 anywhere in the table (a Latin-1 folder)
    raised UnicodeDecodeError, and with it every `warmserve serve` start. Its line is read, and the hierarchy's own
    mount point, not UTF-8 and with a space (written "\\040" by the kernel), leads to its cpu.max."""
    root = os.fsencode(tmp_path)
    point = root + b"/cg caf\xe9"  # a Latin-1 "e acute": no UTF-8
    os.makedirs(os.path.join(point, b"g"))
    with open(os.path.join(point, b"g", b"cpu.max"), "wb") as f:
        f.write(b"250000 100000\n")
    with open(tmp_path / "mountinfo", "wb") as f:
        f.write(b"40 31 0:37 / /media/caf\xe9 rw - vfat /dev/sdb1 rw\n")
        f.write(b"41 31 0:38 / " + point.replace(b" ", b"\\040") + b" rw,relatime - cgroup2 cgroup2 rw\n")
    (tmp_path / "cgroup").write_text("0::/g\n")
    assert cpu_quota_cores(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")) == 2.5
