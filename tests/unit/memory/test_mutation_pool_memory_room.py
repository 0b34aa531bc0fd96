"""A gap found by mutation testing of memory/pool.py: ``host_memory_room`` reports MemAvailable of /proc/meminfo in
bytes (kB times 1024), the room every host pool and tmpfs cache fill is checked against."""

from __future__ import annotations

import pytest

from warmserve.memory.pool import cgroup_memory, host_memory_room


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable:")) * 1024


def test_host_memory_room_is_mem_available_in_bytes_without_a_cgroup_limit():
    """Without a memory cgroup limit the room is MemAvailable (kB) times 1024: a whole number of KiB, between the
    values read just before and just after (give or take what other processes took meanwhile)."""
    if cgroup_memory().limit_bytes:
        pytest.skip("this process has a memory cgroup limit: the room is bounded by it, not by MemAvailable")
    before = _mem_available_bytes()
    room, what = host_memory_room()
    after = _mem_available_bytes()
    assert what == "MemAvailable of /proc/meminfo"
    assert room % 1024 == 0
    slack = 64 << 20
    assert min(before, after) - slack <= room <= max(before, after) + slack
