"""A host pool made where its prefault threads cannot all be started (a pids limit, or an address-space limit
with no room for another thread's stack): the pool is made all the same, prefaulted by the calling thread, and
the process neither aborts (std::terminate on a joinable std::thread) nor gets an untyped RuntimeError."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys

import pytest

#: Runs under an RLIMIT_AS that leaves room for FITS thread stacks beside the pool, then tells how many fit.
SCRIPT = r"""
import resource, sys, threading
from warmserve.memory import PagePool
CAP, STACK, fits = 64 << 20, 8 << 20, int(sys.argv[1])
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
# the pool's range is reserved 2 MiB larger (for alignment) and trimmed; 4 MiB of margin stays under a stack
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + CAP + (2 << 20) + fits * STACK + (4 << 20),
                                        resource.RLIM_INFINITY))
pool = PagePool(CAP, prefault=True)
print("pool made, prefaulted", status("RssShmem") >= CAP, flush=True)
stop, started = threading.Event(), []
try:
    for _ in range(fits + 1):
        t = threading.Thread(target=stop.wait)
        t.start()
        started.append(t)
except RuntimeError:
    pass
stop.set()
for t in started:
    t.join()
print("threads that fit", len(started), flush=True)
"""

#: std::thread::hardware_concurrency() is get_nprocs(): four CPUs, so the pool asks for three prefault threads
#: however many this machine has.
NPROCS4 = "int get_nprocs(void) { return 4; }\nint get_nprocs_conf(void) { return 4; }\n"


@pytest.mark.parametrize("fits", [0, 1], ids=["no-thread-fits", "one-of-three-fits"])
def test_a_pool_whose_prefault_threads_cannot_start_is_made_by_the_calling_thread(tmp_path, fits):
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler for the get_nprocs preload")
    (tmp_path / "nprocs4.c").write_text(NPROCS4)
    lib = tmp_path / "libnprocs4.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(tmp_path / "nprocs4.c"), "-o", str(lib)], check=True)
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    stack = 8 << 20 if hard == resource.RLIM_INFINITY else min(8 << 20, hard)

    def eight_mib_thread_stacks():  # glibc sizes thread stacks from RLIMIT_STACK at start
        resource.setrlimit(resource.RLIMIT_STACK, (stack, hard))

    r = subprocess.run([sys.executable, "-c", SCRIPT, str(fits)], env=dict(os.environ, LD_PRELOAD=str(lib)),
                       preexec_fn=eight_mib_thread_stacks, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr[-1500:]
    assert r.returncode == 0, f"rc={r.returncode} (-6: abort)\n{out}"
    assert "pool made, prefaulted True" in r.stdout, out
    # the limit did bind as meant: at most `fits` more threads could start beside the pool
    assert f"threads that fit {fits}" in r.stdout, out
