"""A memory cgroup of a test's own, for a child process that moves itself in (writes its pid to the yielded
cgroup.procs): cgroup v1, or v2 where the memory controller is delegated to this process's group. Making one needs
root and a writable hierarchy; elsewhere the test is skipped. A group's OOM killer acts inside it only, so a
regression that overcommits kills the test's child, not the machine's other processes."""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest


def _mounts() -> dict[str, str]:
    """"cgroup2" or "memory" -> mount point of those cgroup hierarchies whose mount root is /."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, (fstype, _, opts) = pre.split(), post.split()[:3]
            if fields[3] != "/":
                continue
            if fstype == "cgroup2":
                out["cgroup2"] = fields[4]
            elif fstype == "cgroup" and "memory" in opts.split(","):
                out["memory"] = fields[4]
    return out


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int):
    """The cgroup.procs file of a new memory cgroup under this process's, limited to ``limit_bytes``; removed on
    exit (its processes must have exited)."""
    if os.geteuid() != 0:
        pytest.skip("making a memory cgroup needs root")
    mounts = _mounts()
    with open("/proc/self/cgroup") as f:
        lines = [ln.rstrip("\n").split(":", 2) for ln in f]
    v1 = next((p for _, c, p in lines if "memory" in c.split(",")), None)
    v2 = next((p for i, c, p in lines if i == "0" and not c), None)
    name = f"warmserve-test-{uuid.uuid4().hex[:8]}"
    if v1 is not None and "memory" in mounts:
        group, limit_file = os.path.join(mounts["memory"] + v1, name), "memory.limit_in_bytes"
    elif v2 is not None and "cgroup2" in mounts:
        parent = mounts["cgroup2"] + v2.rstrip("/")
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                delegated = "memory" in f.read().split()
        except OSError:
            delegated = False
        if not delegated:
            pytest.skip("cgroup v2 without the memory controller delegated to this process's group")
        group, limit_file = os.path.join(parent, name), "memory.max"
    else:
        pytest.skip("no memory cgroup hierarchy mounted")
    try:
        os.mkdir(group)
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here: {e}")
    try:
        with open(os.path.join(group, limit_file), "w") as f:
            f.write(str(limit_bytes))
        yield os.path.join(group, "cgroup.procs")
    finally:
        os.rmdir(group)
