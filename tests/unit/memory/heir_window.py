"""Not a test module: run by test_mem_review_loads.py in a subprocess under LD_PRELOAD=failthr.so (argv: rounds,
the shim's path). A load whose driver thread cannot start (the shim's pthread_create fails with EAGAIN after
20 ms, which widens the window) stands in pool.jobs for that long; an overlapping load cancelled meanwhile may hand
it pages at its rollback. Prints CLEAN when no page stays mapped with no load running and no view."""
import ctypes
import sys
import time

import numpy as np
from warmserve.errors import CancelledError
from warmserve.memory import PagePool

ctl = ctypes.c_int.in_dll(ctypes.CDLL(sys.argv[2]), "fail_threads")
PAGE = 4096
n_pages = 16384
a = np.ones(n_pages * PAGE, dtype=np.uint8)
spec = [(a, 0, 0, a.nbytes)]
leaked = []
with PagePool(2 * n_pages * PAGE, page_bytes=PAGE, prefault=False) as pool:
    for rnd in range(int(sys.argv[1])):
        slot = pool.create_slot(n_pages * PAGE, "s")
        j1 = slot.load(spec, threads=1, chunk_bytes=1024)
        while j1.progress[0] == 0:
            pass
        fails = 0
        errs = set()
        ctl.value = 1
        try:
            j1.cancel()
            t0 = time.monotonic()
            while not j1.done and time.monotonic() - t0 < 5:
                try:
                    slot.load(spec, threads=1, chunk_bytes=1 << 20)
                    raise AssertionError("a thread started")
                except AssertionError:
                    raise
                except Exception as e:
                    fails += 1
                    errs.add(f"{type(e).__name__}: {str(e)[:80]}")
        finally:
            ctl.value = 0
        try:
            j1.wait()
            outcome = "done"
        except CancelledError:
            outcome = "cancelled"
        mapped = slot.mapped_pages
        print(f"round {rnd}: j1 {outcome}, failed starts {fails}, j1 pages_mapped {j1.pages_mapped} "
              f"pages_kept {j1.pages_kept}, slot pages mapped with no load running and no view {mapped} {errs}",
              flush=True)
        if mapped and outcome == 'cancelled':
            leaked.append(mapped)
        slot.close()
print("LEAKED" if leaked else "CLEAN", leaked)
