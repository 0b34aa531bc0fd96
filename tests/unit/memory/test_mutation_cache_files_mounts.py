"""Gaps found by mutation testing of memory/cache_files.py: ``memory_backed`` takes the filesystem of the longest
mount point holding the directory (/dev/shm's tmpfs, not the devtmpfs of /dev above it), and the warning for a
checkpoint larger than the whole budget names the budget that would hold it in GiB. A mount point with a space, or
named in bytes that are not UTF-8, is read (a table of the test's own, so no mount is needed)."""

from __future__ import annotations

import os

import pytest

from warmserve.memory.cache_files import fill_memory_room, memory_backed, over_budget_warning


def _mounts() -> dict[str, str]:
    """Mount point -> filesystem type of this process's mounts (the last mount on a point wins)."""
    with open("/proc/self/mounts") as f:
        return {p[1]: p[2] for p in (ln.split() for ln in f) if len(p) >= 3}


@pytest.fixture
def shm() -> str:
    mounts = _mounts()
    if mounts.get("/dev/shm") != "tmpfs" or mounts.get("/") in ("tmpfs", "ramfs", "hugetlbfs"):
        pytest.skip("needs /dev/shm mounted as a tmpfs on a root that is not memory")
    return "/dev/shm"


def test_a_directory_under_a_tmpfs_mount_is_memory_and_one_on_the_root_disk_is_not(shm):
    """/dev/shm and a directory below it (existing or not) are on the tmpfs, the longest mount point holding them
    (below "/" and, where mounted, /dev): memory; "/" itself is not."""
    assert memory_backed(shm)
    assert memory_backed(os.path.join(shm, "warmserve-no-such-dir", "x"))
    assert not memory_backed("/")


def test_fill_memory_room_is_said_for_a_tmpfs_cache_only(shm):
    """A cache on /dev/shm gets a host memory room (an int, with what bounds it); one on the root disk none."""
    room, what = fill_memory_room(os.path.join(shm, "warmserve-no-such-dir"))
    assert isinstance(room, int) and room >= 0 and what
    assert fill_memory_room("/") == (None, "")


def test_the_over_budget_warning_names_the_budget_that_would_hold_the_file():
    """A 3 GiB file against a 1 GiB budget: "Fix: a budget of at least 3.00 GiB"; 1.5 GiB: 1.50 GiB."""
    assert "Fix: a budget of at least 3.00 GiB" in over_budget_warning("/m/x.safetensors", 3 << 30, 1 << 30)
    assert "at least 1.50 GiB" in over_budget_warning("/m/x.safetensors", 3 << 29, 1 << 30)


def test_a_mount_point_with_a_space_or_not_utf8_is_matched_and_the_others_still_read(tmp_path):
    """Found in the locale review: a mount point named in bytes that are not UTF-8 anywhere in the table raised
    UnicodeDecodeError (the host cache could not start). Such a point, with a space ("\\040" in the table), holds
    the cache's folder: a tmpfs is memory; the same folder under a disk's mount is not."""
    point = os.fsencode(tmp_path) + b"/shm caf\xe9"  # a Latin-1 "e acute": no UTF-8
    cache = os.path.join(os.fsdecode(point), "warmserve-ckpt")
    for fstype, memory in ((b"tmpfs", True), (b"ext4", False)):
        table = tmp_path / f"mounts-{fstype.decode()}"
        table.write_bytes(b"/dev/vda / ext4 rw 0 0\n/dev/sdb1 /media/caf\xe9 vfat rw 0 0\n"
                          + b"none " + point.replace(b" ", b"\\040") + b" " + fstype + b" rw 0 0\n")
        assert memory_backed(cache, str(table)) is memory, fstype
