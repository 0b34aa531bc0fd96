"""How the host pool's cgroup check reads a memory limit (csrc/cgroup_memory.cpp, ``memory.cgroup_memory``), on
made-up /proc and cgroup trees: cgroup v2 up the tree to the mount's top, a cgroup namespace's root, a bind-mounted
subtree, v1's hierarchical limit, "no limit" in both spellings, and nothing readable. This machine runs cgroup v1,
so the v2 walk runs nowhere else here; test_pool_cgroup_limit.py checks the pool against a real group."""

from __future__ import annotations

import os

from warmserve.memory import cgroup_memory

MiB = 1 << 20


def proc(tmp_path, cgroup: str, mounts: list[tuple[str, str, str, str]]) -> str:
    """A /proc/<pid> directory: its cgroup file, and a mountinfo of (root, mount point, fstype, super options)."""
    d = tmp_path / "proc"
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "mountinfo").write_text("".join(
        f"{30 + i} 23 0:{40 + i} {root} {point} rw,relatime - {fstype} {fstype} {opts}\n"
        for i, (root, point, fstype, opts) in enumerate(mounts)))
    return str(d)


def group(path, **files) -> None:
    os.makedirs(path, exist_ok=True)
    for name, text in files.items():
        (path / name.replace("_", ".", 1)).write_text(text)


def test_v2_takes_the_tightest_room_up_the_tree_less_the_file_cache(tmp_path):
    cg = tmp_path / "cg2"
    group(cg / "a", memory_max=str(1024 * MiB), memory_current=str(700 * MiB),
          memory_stat=f"anon {500 * MiB}\nactive_file {64 * MiB}\ninactive_file {36 * MiB}\nshmem {100 * MiB}\n")
    group(cg / "a" / "b", memory_max="max", memory_current=str(300 * MiB), memory_stat="active_file 0\n")
    group(cg, memory_stat="")  # the top: no memory.max, as the real root has none
    p = proc(tmp_path, "0::/a/b\n", [("/", str(tmp_path / "other"), "tmpfs", "rw"), ("/", str(cg), "cgroup2", "rw")])
    got = cgroup_memory(p)
    assert (got.limit_bytes, got.room_bytes) == (1024 * MiB, (1024 - 600) * MiB), got
    assert got.file == str(cg / "a" / "memory.max")

    (cg / "a" / "b" / "memory.max").write_text(str(512 * MiB))  # now the group's own is tighter: 512 - 300
    got = cgroup_memory(p)
    assert (got.limit_bytes, got.room_bytes, got.file) == (512 * MiB, 212 * MiB, str(cg / "a" / "b" / "memory.max"))


def test_v2_in_a_cgroup_namespace_reads_the_mount_top_and_a_full_group_has_no_room(tmp_path):
    cg = tmp_path / "cg2"
    group(cg, memory_max=str(256 * MiB), memory_current=str(300 * MiB), memory_stat="active_file 0\n")
    got = cgroup_memory(proc(tmp_path, "0::/\n", [("/", str(cg), "cgroup2", "rw,nsdelegate")]))
    assert (got.limit_bytes, got.room_bytes, got.file) == (256 * MiB, 0, str(cg / "memory.max"))


def test_v2_bind_mounted_subtree_strips_the_mount_root(tmp_path):
    cg = tmp_path / "cg2"
    group(cg / "sub", memory_max=str(128 * MiB), memory_current=str(28 * MiB), memory_stat="")
    got = cgroup_memory(proc(tmp_path, "0::/docker/abc/sub\n", [("/docker/abc", str(cg), "cgroup2", "rw")]))
    assert (got.limit_bytes, got.room_bytes, got.file) == (128 * MiB, 100 * MiB, str(cg / "sub" / "memory.max"))
    # a group whose path only begins with the root's characters is not under it: read where its path says
    group(cg / "docker" / "abcd", memory_max=str(64 * MiB), memory_current="0", memory_stat="")
    got = cgroup_memory(proc(tmp_path / "p2", "0::/docker/abcd\n", [("/docker/abc", str(cg), "cgroup2", "rw")]))
    assert (got.limit_bytes, got.file) == (64 * MiB, str(cg / "docker" / "abcd" / "memory.max")), got


def test_v1_reads_the_hierarchical_limit_of_the_memory_controller(tmp_path):
    v1 = tmp_path / "memory"
    stat = (f"cache {90 * MiB}\ntotal_active_file {50 * MiB}\ntotal_inactive_file {40 * MiB}\n"
            f"hierarchical_memory_limit {640 * MiB}\n")
    group(v1 / "job" / "x", memory_stat=stat, **{"memory_usage_in_bytes": str(200 * MiB)})
    p = proc(tmp_path, "5:cpu,cpuacct:/job/x\n4:memory:/job/x\n0::/\n",
             [("/", str(tmp_path / "cpu"), "cgroup", "rw,cpu,cpuacct"), ("/", str(v1), "cgroup", "rw,memory"),
              ("/", str(tmp_path / "unified"), "cgroup2", "rw")])
    got = cgroup_memory(p)
    assert (got.limit_bytes, got.room_bytes) == (640 * MiB, (640 - 110) * MiB), got
    assert got.file == str(v1 / "job" / "x" / "memory.stat") + " (hierarchical_memory_limit)"


def test_no_limit_in_either_spelling_and_nothing_readable_read_as_none(tmp_path):
    v1 = tmp_path / "memory"
    group(v1, memory_stat="hierarchical_memory_limit 9223372036854771712\n", **{"memory_usage_in_bytes": "1"})
    cg = tmp_path / "cg2"
    group(cg, memory_max="max", memory_current="1", memory_stat="")
    p = proc(tmp_path, "4:memory:/\n0::/\n", [("/", str(v1), "cgroup", "rw,memory"), ("/", str(cg), "cgroup2", "rw")])
    assert cgroup_memory(p).limit_bytes == 0
    none = cgroup_memory(str(tmp_path / "no-such-proc"))
    assert (none.limit_bytes, none.room_bytes, none.file) == (0, 0, "")
