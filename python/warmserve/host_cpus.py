"""The cores this process may use, which a CPU worker's default torch threads share: its CPU affinity (taskset, a
container's or a batch job's cpuset) and its cgroup's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``:
docker --cpus, a Kubernetes CPU limit), whichever is less. Found in review: the default was ``os.cpu_count()``,
every core of the host, so a server given a few cores of a large host ran each worker with several torch threads to
a core."""

from __future__ import annotations

import math
import os
import re
import sys

MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUP = "/proc/self/cgroup"


def usable_cores() -> int:
    """The cores this process may run on (its affinity), fewer where its cgroup's CPU quota allows fewer (rounded
    up: a quota of 1.5 cores runs two threads at three quarters of a core each)."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity call on this platform
        cores = os.cpu_count() or 1
    quota = cpu_quota_cores()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cpu_quota_cores(mountinfo: str = MOUNTINFO, proc_cgroup: str = PROC_CGROUP) -> float | None:
    """The least CPU quota (quota / period, in cores) of this process's cgroup and its ancestors, in the cgroup v2
    hierarchy and the v1 one of the cpu controller; None where none is set or none can be read."""
    try:
        mounts = _cgroup_mounts(mountinfo)
        with open_path_table(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        kind = "v2" if hid == "0" and not controllers else "v1" if "cpu" in controllers.split(",") else None
        if kind not in mounts:
            continue
        root, point = mounts[kind]
        rel = os.path.relpath(path, root) if path == root or path.startswith(root.rstrip("/") + "/") else "."
        d = os.path.normpath(os.path.join(point, rel))
        while True:  # the group and its ancestors up to the hierarchy's mount point: the least quota binds
            q = _quota(d, kind)
            if q is not None:
                found.append(q)
            if d == point or os.path.dirname(d) == d:
                break
            d = os.path.dirname(d)
    return min(found) if found else None


def _cgroup_mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """"v2" and "v1" (the hierarchy with the cpu controller) -> (the mount's root in the hierarchy, its mount
    point)."""
    out: dict[str, tuple[str, str]] = {}
    with open_path_table(mountinfo) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, rest = pre.split(), post.split()
            if len(fields) < 5 or len(rest) < 3:
                continue
            if rest[0] == "cgroup2":
                out.setdefault("v2", (unescape_mount_path(fields[3]), unescape_mount_path(fields[4])))
            elif rest[0] == "cgroup" and "cpu" in rest[2].split(","):
                out.setdefault("v1", (unescape_mount_path(fields[3]), unescape_mount_path(fields[4])))
    return out


def open_path_table(path: str):
    """A kernel table that names paths (/proc/self/mounts, mountinfo, cgroup), opened as text decoded as ``os``
    decodes paths: the file system encoding, a byte that does not decode kept as a surrogate, so each path read is
    the one ``os`` functions take. Found in the locale review: read in the locale's encoding, one mount point on the
    machine whose name was not UTF-8 (a Latin-1 folder, a drive's label) raised UnicodeDecodeError in every start
    of ``warmserve serve`` (its workers' default threads are counted here) and in the host cache's filesystem
    check."""
    return open(path, encoding=sys.getfilesystemencoding(), errors="surrogateescape")


def unescape_mount_path(field: str) -> str:
    """A path field of /proc/self/mounts or mountinfo with the kernel's octal escapes undone (a space, a tab, a
    newline and a backslash are written ``\\040``, ``\\011``, ``\\012`` and ``\\134``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _quota(d: str, kind: str) -> float | None:
    try:
        if kind == "v2":
            with open(os.path.join(d, "cpu.max")) as f:
                quota, period = (f.read().split() + ["100000"])[:2]
            return None if quota == "max" else int(quota) / int(period)
        with open(os.path.join(d, "cpu.cfs_quota_us")) as f, open(os.path.join(d, "cpu.cfs_period_us")) as g:
            quota_us, period_us = int(f.read()), int(g.read())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None
