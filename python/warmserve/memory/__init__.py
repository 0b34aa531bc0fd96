"""The memory core: a page pool, slots over it, zero-copy switching, pipelined loads, tensor views.

C++ (``warmserve._C``, imported only here) does the mechanism; this package is its Python face.

- ``PagePool(capacity_bytes, backend="host"|"cuda")`` creates every physical page (2 MiB by default) up front. The
  ``host`` backend keeps them as offsets of one memfd (huge pages when the kernel has some reserved, else normal
  pages; ``stats()["huge_pages"]`` says which) and commits them at creation: fallocate, so that a pool that cannot
  exist fails at once with the numbers rather than with SIGBUS in a later copy (as on the GPU, where cuMemCreate
  allocates up front; a pool past the machine's MemAvailable or past its container's memory cgroup limit,
  ``cgroup_memory()``, is refused with the numbers before the fallocate), and, with ``prefault=True`` (the default),
  every page touched once in a "park" mapping of the whole memfd. Map, unmap and move then carry pages *with their
  page tables* between the park and the slots (mremap), so none of them costs a page fault or a page-table teardown:
  about 0.2 ms per GiB each, where rebuilding 4 KiB page tables by faults costs hundreds of ms per GiB (kernels
  without mremap DONTUNMAP for shared mappings fall back to mmap from the memfd; ``stats()["moves_page_tables"]``).
  The ``cuda`` backend uses the driver's virtual memory API (a few 1 GiB cuMemCreate allocations carved into pages,
  one cuMemMap per run of adjacent pages, one cuMemSetAccess per map call) through a libcuda opened at run time, and
  ``warmserve.memory.kernels`` holds the CUDA kernels (csrc/kernels); on a machine without one it raises
  BackendUnavailableError saying why. Pages are not zeroed when mapped: they hold what they held before.
- ``pool.create_slot(reserve_bytes, tag)`` reserves a virtual range with nothing mapped (PROT_NONE on the host:
  reading an unmapped page is a clean fault, never stale data). ``map``/``unmap``/``grow``/``shrink`` edit page
  tables only; ``move_pages`` hands physical pages from one slot to another with their contents, no copy
  (``physical_pages`` shows the same page ids before and after). A multi-page operation that fails halfway is
  rolled back. If that rollback itself fails on the host in a way that leaves part of the slot's address range
  unreserved (the munmap fallback at vm.max_map_count), the slot raises SlotUnusableError on every use but
  ``close`` and never touches that range again.
- ``slot.load(sources)`` copies files (a safetensors checkpoint) or host buffers into a slot while a C++ thread
  maps the pages ahead of the copier threads (on a GPU: through pinned staging buffers and a stream); the GIL is
  released, progress is polled by the waiting thread, a failure or ``cancel`` unmaps what the load had mapped.

View policy. ``slot.tensor(byte_offset, shape, dtype, pinned=True)`` is a zero-copy torch tensor (DLPack) over
the slot. A pinned view pins the pages it covers for as long as any tensor sharing its storage lives (the pin is
dropped by the DLPack deleter when torch frees the storage, so slices and ``.view`` results count too): unmapping
or moving an overlapping range raises ViewsAliveError, and so does ``slot.close()`` (``close(force=True)``
unmaps anyway). A running load pins its destination the same way. A ``pinned=False`` view may cover unmapped
pages and does not block unmap: it is for a region the caller touches only where mapped, such as the engine's KV
cache (one tensor over the whole KV range; the engine checks ``is_mapped`` for the blocks a step uses). Every view
keeps the slot's reservation alive, so touching an unmapped or closed range through a stale view faults
(SIGSEGV on the host) instead of reading another slot's data. Closing the pool (or dropping it) never pulls a
page from under a live pinned view: those pages stay mapped, and their memory allocated, until the last view over
them goes; a failed or cancelled load likewise leaves mapped the pages that a view made meanwhile
pins (``job.pages_kept``). Pool and slot close cancel running loads and wait for their rollback, in C++.
``slot.tensors({name: (byte_offset, shape, dtype)})`` makes a model's many weight views under one pin
(microseconds per tensor).

Threads. One mutex per pool (in C++) guards the pool and its slots; map/unmap/move/load from several Python
threads are safe. The GIL policy is written down in csrc/bindings.cpp.
"""

from __future__ import annotations

from warmserve.memory.loader import LoadJob
from warmserve.memory.pool import PAGE_BYTES, CgroupMemory, PagePool, Slot, cgroup_memory, cuda_compiled

__all__ = ["PAGE_BYTES", "CgroupMemory", "LoadJob", "PagePool", "Slot", "cgroup_memory", "cuda_compiled"]
