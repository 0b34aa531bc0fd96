"""Temp dirs named by the process that owns them, so that a later run removes those of an owner that ended without
removing its own (killed with SIGKILL: the OOM killer, a CI job's timeout), and nothing a live process may still use.

A name is ``prefix``, the pid namespace's inode, "-", the owner's pid, "-", then anything (``tempfile.mkdtemp``'s
random part): the inode, since a pid means nothing in another namespace (a container sharing the folder)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile

from warmserve.controller.pids import pid_running


def pid_ns() -> int:
    """This process's pid namespace's inode; 0 where /proc does not say (then no owner can be proven dead)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def owned_prefix(prefix: str) -> str:
    """The ``tempfile.mkdtemp`` prefix of a dir this process owns, for ``sweep_dead_owners``."""
    return f"{prefix}{pid_ns()}-{os.getpid()}-"


def sweep_dead_owners(root: str, prefix: str) -> list[str]:
    """Remove the dirs under ``root`` named by ``owned_prefix(prefix)`` whose owner, in this pid namespace, has
    ended; returns their paths. Only dirs of this euid, never a symlink (lstat; ``shutil.rmtree`` follows none
    below). One whose owner cannot be proven dead (another namespace's, an older unnamed one, a pid reused since,
    /proc unreadable) is left alone: a wrong removal would pull a running process's files from under it."""
    named = re.compile(re.escape(prefix) + r"(\d+)-(\d+)-[^/]+")
    ns = pid_ns()
    removed: list[str] = []
    try:
        entries = os.listdir(root)
    except OSError:
        return removed
    for entry in entries:
        m = named.fullmatch(entry)
        if m is None or not ns or int(m.group(1)) != ns or pid_running(int(m.group(2))):
            continue
        path = os.path.join(root, entry)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def owned_temp_dir(prefix: str, root: str | None = None) -> tempfile.TemporaryDirectory:
    """A ``tempfile.TemporaryDirectory`` under ``root`` ($TMPDIR by default) named by this process, made once the
    dirs of ``prefix`` whose owners ended are swept from ``root``."""
    root = root or tempfile.gettempdir()
    sweep_dead_owners(root, prefix)
    return tempfile.TemporaryDirectory(prefix=owned_prefix(prefix), dir=root)
