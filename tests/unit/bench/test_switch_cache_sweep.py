"""`warmserve bench switch --parts cache`: a run killed with SIGKILL (the OOM killer, a CI job's timeout) cannot
remove its cache folder from --cache-root (/dev/shm: RAM), so the next run removes the folders of runs that ended,
and nothing a live run, another pid namespace or anyone else owns. Found in review: each such kill left up to twice
--cache-gib in /dev/shm for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from warmserve.owned_dirs import pid_ns

#: The name users find in /dev/shm (bench.switch.CACHE_DIR_PREFIX), spelt out: a rename is a change they see.
CACHE_DIR_PREFIX = "warmserve-bench-cache-"
#: Its folder of files under --dir (bench.switch.WORK_DIR_PREFIX)
WORK_DIR_PREFIX = "warmserve-bench-switch-"


def _bench(cache_root, work, repeats: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "warmserve", "bench", "switch", "--parts", "cache",
                             "--cache-gib", "0.0625", "--repeats", str(repeats), "--cache-root", str(cache_root),
                             "--dir", str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _cache_dirs(root) -> set[str]:
    return {p.name for p in root.iterdir() if p.name.startswith(CACHE_DIR_PREFIX)}


def test_the_next_run_sweeps_the_cache_folder_a_sigkilled_run_left_and_nothing_else(tmp_path):
    shm, work, outside = tmp_path / "shm", tmp_path / "work", tmp_path / "outside"
    for d in (shm, work, outside):
        d.mkdir()
    killed = _bench(shm, work, repeats=100_000)  # measures until killed
    try:
        deadline = time.monotonic() + 60
        while not _cache_dirs(shm) and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert killed.poll() is None and _cache_dirs(shm), killed.communicate(timeout=5)[0].decode(errors="replace")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
    left = _cache_dirs(shm)
    assert len(left) == 1  # the kill left it, its entry in it
    # and its folder of files under --dir (the cache part's source file; GiBs in the activation part's)
    assert [p.name.startswith(WORK_DIR_PREFIX) for p in work.iterdir()] == [True]
    ns = pid_ns()
    assert ns, "no /proc/self/ns/pid here: the sweep would spare everything"
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid runs nothing now
    dead, live = gone.pid, os.getpid()
    spared = {f"{CACHE_DIR_PREFIX}{ns}-{live}-a1b2",  # a run still measuring
              f"{CACHE_DIR_PREFIX}{ns + 1}-{dead}-c3d4",  # another pid namespace's: its pids mean nothing here
              f"{CACHE_DIR_PREFIX}e5f6g7h8",  # the naming before owners were named: no owner to ask
              f"warmserve-other-{ns}-{dead}-i9j0"}  # not the bench's
    for name in spared | {f"{CACHE_DIR_PREFIX}{ns}-{dead}-k1m2"}:
        (shm / name).mkdir()
        (shm / name / "entry").write_bytes(b"x")
    (outside / "keep").write_bytes(b"x")
    os.symlink(outside, shm / f"{CACHE_DIR_PREFIX}{ns}-{dead}-link")  # never followed, nor removed
    (shm / f"{CACHE_DIR_PREFIX}{ns}-{dead}-file").write_bytes(b"")  # not a dir: not one of ours
    spared |= {f"{CACHE_DIR_PREFIX}{ns}-{dead}-link", f"{CACHE_DIR_PREFIX}{ns}-{dead}-file"}

    out = _bench(shm, work, repeats=1).communicate(timeout=120)[0].decode(errors="replace")
    assert "host cache: load" in out, out
    # Before: the killed run's folder (and the dead owner's) stayed, every later run leaving them.
    assert {p.name for p in shm.iterdir()} == spared
    assert (outside / "keep").exists()
    assert not list(work.iterdir())  # the killed run's files went too, and the new run removed its own
