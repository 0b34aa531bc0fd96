"""PagePool and Slot: the Python face of the C++ page pool (see the package docstring for the policies)."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Callable, Iterable

from warmserve import _C
from warmserve.errors import ClosedError, InvalidArgumentError, fmt_bytes
from warmserve.geometry import PAGE_BYTES  # 2 MiB: a huge page on the host, cuMemCreate's usual granularity
from warmserve.memory.loader import LoadJob

#: A load is cut into pieces of this many bytes that copier threads take in slot order.
LOAD_CHUNK_BYTES = 8 << 20
#: The smallest piece a load accepts (csrc/loader.h kMinChunkBytes): every piece has its own bookkeeping, and a
#: few-byte chunk asked for more of it than host memory holds (found in review: chunk_bytes=1).
MIN_LOAD_CHUNK_BYTES = 1 << 10


def cuda_compiled() -> bool:
    """Whether this build of warmserve contains the cuda backend (it still needs a driver to run)."""
    return _C.cuda_compiled()


@dataclasses.dataclass(frozen=True)
class CgroupMemory:
    """The memory a process's cgroup lets it take (csrc/cgroup_memory.h): what a host pool is checked against
    beside the machine's MemAvailable, which a container's limit does not lower."""

    #: The tightest memory limit over the process's cgroup and its ancestors, bytes; 0: none (or none readable).
    limit_bytes: int
    #: That limit less what the groups hold and cannot give back (their usage less their file cache), bytes.
    room_bytes: int
    #: The file the limit was read from ("" without a limit).
    file: str


def cgroup_memory(proc_dir: str = "/proc/self") -> CgroupMemory:
    """The memory cgroup limit of the process whose /proc directory is ``proc_dir`` (cgroup v1 or v2)."""
    return CgroupMemory(*_C.cgroup_memory(os.fspath(proc_dir)))


def host_memory_room() -> tuple[int | None, str]:
    """Host memory new pools can take now, bytes, and what bounds it: the smaller of the machine's MemAvailable and
    the room under this process's memory cgroup limit (what each host pool is checked against as it is made,
    csrc/host_backend.cpp). (None, "") where neither says."""
    room, what = None, ""
    try:
        with open("/proc/meminfo") as f:
            room = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
            what = "MemAvailable of /proc/meminfo"
    except (OSError, StopIteration, ValueError):
        pass
    cg = cgroup_memory()
    if cg.limit_bytes and (room is None or cg.room_bytes < room):
        room, what = cg.room_bytes, f"under the memory cgroup limit of {fmt_bytes(cg.limit_bytes)}, {cg.file}"
    return room, what


#: Copier threads one load may ask for (an int in the C++ core).
MAX_THREADS = (1 << 31) - 1
#: The largest device index (an int in the C++ core; found in review: 2**31 came back as a bare TypeError).
MAX_DEVICE = (1 << 31) - 1
#: Counts (bytes, pages, offsets) travel to the C++ core as uint64: anything larger is refused here, typed (found in
#: review: 2**64 came back from pybind as a bare TypeError).
MAX_COUNT = (1 << 64) - 1


def _count(name: str, value, *, positive: bool = False, limit: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0 or (positive and value == 0):
        raise InvalidArgumentError(f"{name} must be {'positive' if positive else 'non-negative'}, not {value}")
    if value > limit:
        raise InvalidArgumentError(f"{name} is {value}, past the largest this takes ({limit})")
    return value


class PagePool:
    """All physical pages of one device (or of a slice of host memory), created up front."""

    def __init__(self, capacity_bytes: int, backend: str = "host", page_bytes: int = PAGE_BYTES, device: int = 0,
                 prefault: bool = True):
        """prefault (host): touch every page once now and keep its page tables, so no map, load or first touch
        pays page faults later (1.6 s per GiB on the 2-core VM of bench/switch, 0.8 s of it fallocate); False
        for short-lived pools that use little of their capacity (pages then fault in on first touch)."""
        _count("capacity_bytes", capacity_bytes, positive=True)
        _count("page_bytes", page_bytes, positive=True)
        _count("device", device, limit=MAX_DEVICE)
        if backend not in ("host", "cuda"):
            raise InvalidArgumentError(f"backend must be 'host' or 'cuda', not {backend!r}")
        self._pool = _C.Pool(capacity_bytes, backend, page_bytes, device, bool(prefault))
        # C++ close cancels and joins running loads itself; pages under live pinned views outlive it (below).
        self._finalizer = weakref.finalize(self, self._pool.close)

    backend = property(lambda self: self._pool.backend, doc="'host' or 'cuda'")
    page_bytes = property(lambda self: self._pool.page_bytes, doc="bytes per page")
    total_pages = property(lambda self: self._pool.total_pages)
    free_pages = property(lambda self: self._pool.free_pages)
    total_bytes = property(lambda self: self._pool.total_pages * self._pool.page_bytes)
    free_bytes = property(lambda self: self._pool.free_pages * self._pool.page_bytes)
    huge_pages = property(lambda self: self._pool.huge_pages, doc="host pages are 2 MiB huge pages")
    device = property(lambda self: self._pool.device)
    closed = property(lambda self: self._pool.closed)

    def pages_by_tag(self) -> dict[str, int]:
        """Mapped pages per slot tag, and "free" (a tag no slot may take) for the unmapped ones. ClosedError after
        close(), as create_slot: a closed pool has dropped its slots, so pages still mapped under live pinned views
        were counted under no tag and "free" named pages no slot can take (found in review: {"free": 15} of 16)."""
        by_tag = dict(self._pool.pages_by_tag())
        # Checked after the call: not closed then means the whole count was taken before any close began.
        if self._pool.closed:
            raise ClosedError("the page pool is closed: pages_by_tag() has no slots to count. Fix: call it "
                              "before pool.close(); stats() still gives the counters")
        return by_tag

    def stats(self) -> dict:
        """Accounting and counters: total/free pages and bytes, huge_pages, moves_page_tables (host: pages travel
        with their page tables), map/unmap/move operations and pages, backend_calls (mmap/mremap or driver calls),
        bytes_loaded (bytes written into pages by finished loads), slots."""
        return dict(self._pool.stats())

    def create_slot(self, reserve_bytes: int, tag: str) -> Slot:
        """Reserve a virtual range of reserve_bytes (rounded up to whole pages); nothing is mapped yet."""
        _count("reserve_bytes", reserve_bytes, positive=True)
        return Slot(self, self._pool.create_slot(reserve_bytes, _tag(tag)))

    def close(self) -> None:
        """Cancel running loads (waiting for their rollback), close every slot and return its pages. Pages that
        live pinned views cover stay mapped, and their memory allocated, until the last such view is gone: a view
        never outlives its memory. Idempotent, and every call returns only once the pool is closed: a close()
        while another thread's is under way waits for it (found in review: the finalizer runs its callback for the
        first caller only, so a second close() returned with the first's load still running)."""
        self._finalizer()  # the first caller closes here; the finalizer then has nothing left for gc to run
        self._pool.close()  # the C++ close is idempotent and waits for a close under way in another thread

    def __enter__(self) -> PagePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"PagePool({self.backend}, closed)"
        return (f"PagePool({self.backend}, {fmt_bytes(self.free_bytes)} free of {fmt_bytes(self.total_bytes)}, "
                f"pages of {fmt_bytes(self.page_bytes)})")


class Slot:
    """A reserved virtual range over a pool; pages are mapped into it at page offsets."""

    def __init__(self, pool: PagePool, cslot):
        self._pool = pool  # the pool stays open while any of its slots is referenced
        self._slot = cslot
        self._load_bytes = 0
        self._load_bytes_lock = threading.Lock()

    @property
    def tag(self) -> str:
        """Owner tag used in pool.pages_by_tag(); writable (a prewarmed model becoming a running instance)."""
        return self._slot.tag

    @tag.setter
    def tag(self, value: str) -> None:
        self._slot.tag = _tag(value)

    pool = property(lambda self: self._pool)
    page_bytes = property(lambda self: self._slot.page_bytes)
    reserved_pages = property(lambda self: self._slot.reserved_pages)
    reserved_bytes = property(lambda self: self._slot.reserved_pages * self._slot.page_bytes)
    mapped_pages = property(lambda self: self._slot.mapped_pages)
    mapped_bytes = property(lambda self: self._slot.mapped_pages * self._slot.page_bytes)
    base_address = property(lambda self: self._slot.base_address, doc="virtual address of page 0")
    closed = property(lambda self: self._slot.closed)

    @property
    def load_bytes(self) -> int:
        """Bytes of every load started into this slot (Slot.load and the host cache's), counted as each starts.
        Per slot, unlike the pool's bytes_loaded: what a step on one model copied into it, whatever other slots'
        loads finish meanwhile (a worker's Activated.copied_bytes)."""
        return self._load_bytes

    def _start_load(self, specs: list, threads: int, chunk_bytes: int):
        """The C++ load of `specs` ((path, address, keep-alive, src_offset, slot_offset, nbytes[, fill address,
        pinned]) tuples), counted in load_bytes."""
        job = self._slot.load(specs, threads, chunk_bytes)
        nbytes = sum(int(spec[5]) for spec in specs)
        with self._load_bytes_lock:  # loads start on several threads (found in review: += lost updates)
            self._load_bytes += nbytes
        return job

    def map(self, page_offset: int, n_pages: int) -> None:
        """Map n_pages free pool pages at page_offset. OutOfMemoryError when the pool has fewer free;
        InvalidArgumentError when the range leaves the slot or overlaps a mapped page."""
        self._slot.map(_count("page_offset", page_offset), _count("n_pages", n_pages, positive=True))

    def unmap(self, page_offset: int, n_pages: int) -> None:
        """Return the pages to the pool. InvalidArgumentError if one is not mapped (double unmap),
        ViewsAliveError if a live pinned view or a running load covers one."""
        self._slot.unmap(_count("page_offset", page_offset), _count("n_pages", n_pages, positive=True))

    def grow(self, n_pages: int) -> int:
        """Map n_pages right after the last mapped page; returns their page offset."""
        return self._slot.grow(_count("n_pages", n_pages, positive=True))

    def shrink(self, n_pages: int) -> None:
        """Unmap the n_pages highest mapped pages."""
        self._slot.shrink(_count("n_pages", n_pages, positive=True))

    def is_mapped(self, page_offset: int, n_pages: int = 1) -> bool:
        return self._slot.is_mapped(_count("page_offset", page_offset), _count("n_pages", n_pages, positive=True))

    def mapped_ranges(self) -> list[tuple[int, int]]:
        """Maximal runs of mapped pages as (page_offset, n_pages)."""
        return [tuple(r) for r in self._slot.mapped_ranges()]

    def physical_pages(self, page_offset: int, n_pages: int) -> list[int]:
        """Pool page ids behind the range (-1 where unmapped): equal ids before and after a move prove no copy."""
        return list(self._slot.physical_pages(_count("page_offset", page_offset),
                                              _count("n_pages", n_pages, positive=True)))

    def move_pages(self, src_page_offset: int, n_pages: int, dst: Slot, dst_page_offset: int) -> None:
        """Hand mapped pages [src, src+n) to dst at dst_page_offset (which must be unmapped), contents intact."""
        if not isinstance(dst, Slot):
            raise InvalidArgumentError(f"dst must be a Slot, not {type(dst).__name__}")
        self._slot.move_pages(_count("src_page_offset", src_page_offset), _count("n_pages", n_pages, positive=True),
                              dst._slot, _count("dst_page_offset", dst_page_offset))

    def tensor(self, byte_offset: int, shape, dtype, pinned: bool = True):
        """A zero-copy torch tensor over bytes [byte_offset, byte_offset + numel * itemsize) of the slot.

        pinned=True: the pages must be mapped and stay mapped while the tensor (or any tensor sharing its
        storage) lives. pinned=False: no such promise, see the package docstring."""
        import torch

        _count("byte_offset", byte_offset)
        shape = _shape("shape", shape)
        itemsize = _dtype("dtype", dtype).itemsize
        if byte_offset % itemsize:
            raise InvalidArgumentError(f"byte_offset={byte_offset} is not a multiple of the "
                                       f"{dtype} item size {itemsize}")
        nbytes = _view_bytes("the view", shape, itemsize)
        raw = torch.from_dlpack(self._slot.dlpack(byte_offset, nbytes, bool(pinned)))
        return raw.view(dtype).view(shape)

    def tensors(self, layout: dict, pinned: bool = True) -> dict:
        """Many views at once: layout maps name -> (byte_offset, shape, dtype). One view covers the whole span and
        each tensor is carved from it, so a model's hundreds of weights cost one pin, not hundreds; the pages stay
        pinned while any of the returned tensors lives."""
        import torch

        if not isinstance(layout, Mapping):
            raise InvalidArgumentError(f"layout must be a dict of name -> (byte_offset, shape, dtype), not "
                                       f"{type(layout).__name__}")
        if not layout:
            return {}
        spans = []
        for name, entry in layout.items():
            # found in review: a 2-item entry came back as a bare ValueError from the unpacking
            if not isinstance(entry, (tuple, list)) or len(entry) != 3:
                raise InvalidArgumentError(f"layout entry {name!r} is {entry!r}; each must be (byte_offset, shape, "
                                           f"dtype). Fix: e.g. {{{name!r}: (0, (4096, 11008), torch.bfloat16)}}")
            byte_offset, shape, dtype = entry
            _count(f"{name} byte_offset", byte_offset)
            shape = _shape(f"{name} shape", shape)
            itemsize = _dtype(f"layout entry {name!r} dtype", dtype).itemsize
            if byte_offset % itemsize:
                raise InvalidArgumentError(f"{name}: byte_offset={byte_offset} is not a multiple of "
                                           f"its item size {itemsize}")
            spans.append((name, byte_offset, shape, dtype, _view_bytes(name, shape, itemsize)))
        # The span starts on a multiple of every item size in the layout (item sizes are powers of two; rounding
        # down stays on the page of the first tensor, so no other page is pinned): each tensor's offset inside it
        # is then a whole number of its items. A span starting on an odd byte could not be viewed as wider items
        # at all (found in review: a uint8 at 1 beside a float32 at 4 raised).
        align = max(s[3].itemsize for s in spans)
        lo = min(s[1] for s in spans) // align * align
        hi = max(s[1] + s[4] for s in spans)
        if hi - lo > MAX_COUNT:  # found in review: the span's byte count reached dlpack() and came back a TypeError
            name, off, _, _, nbytes = max(spans, key=lambda s: s[1] + s[4])
            raise InvalidArgumentError(
                f"layout entry {name!r}: view of bytes [{off}, {off + nbytes}) is outside slot {self.tag!r} "
                f"({self.reserved_bytes} bytes reserved). Fix: offsets and shapes within the slot",
                byte_offset=off, nbytes=nbytes)
        raw = torch.from_dlpack(self._slot.dlpack(lo, hi - lo, bool(pinned)))
        by_dtype = {}  # one typed view of the whole span per dtype, then one as_strided per tensor
        out = {}
        for name, off, shape, dtype, nbytes in spans:
            itemsize = dtype.itemsize
            if dtype not in by_dtype:
                usable = (hi - lo) // itemsize * itemsize
                by_dtype[dtype] = (raw[:usable].view(dtype),)
            out[name] = by_dtype[dtype][0].as_strided(shape, _contiguous_strides(shape), (off - lo) // itemsize)
        return out

    def load(self, sources: Iterable[tuple], *, progress: Callable[[int, int], None] | None = None,
             threads: int | None = None, chunk_bytes: int = LOAD_CHUNK_BYTES) -> LoadJob:
        """Start copying sources into the slot; returns at once.

        sources: (path_or_buffer, src_offset, slot_byte_offset, nbytes) tuples; path_or_buffer is a file path,
        a CPU torch tensor, or any object with the buffer protocol (bytes, numpy arrays, memoryview). Pages of the
        destination that are not mapped are mapped (and populated) by a C++ thread ahead of the copier threads;
        the destination is pinned until the load ends. If it fails or is cancelled, the pages it mapped are unmapped
        again, except those a pinned view made meanwhile covers (``job.pages_kept``) and those an overlapping load
        still running covers (they become that load's, undone if it fails too). progress(done_bytes,
        total_bytes) is called from the thread that waits. chunk_bytes: the largest piece a copier thread takes, at
        least MIN_LOAD_CHUNK_BYTES, and at most 2**20 pieces a load (InvalidArgumentError otherwise)."""
        specs = []
        for i, src in enumerate(sources):
            if not isinstance(src, tuple) or len(src) != 4:
                raise InvalidArgumentError(f"load source {i} must be (path_or_buffer, src_offset, "
                                           "slot_byte_offset, nbytes)")
            obj, src_offset, slot_offset, nbytes = src
            _count(f"source {i} src_offset", src_offset)
            _count(f"source {i} slot_byte_offset", slot_offset)
            _count(f"source {i} nbytes", nbytes)
            if isinstance(obj, (str, os.PathLike)):
                path = os.fspath(obj)
                # open() would stop at the NUL and read another file, the one its prefix names (found in review)
                if ("\0" if isinstance(path, str) else b"\0") in path:
                    raise InvalidArgumentError(f"load source {i}: the path {path!r} has a NUL byte and names no file. "
                                               f"Fix: the file's path without the NUL", path=repr(path))
                # as bytes, the name as the file system has it: a name that is not UTF-8 (surrogate escapes, as
                # os.listdir gives it) does not cast to the core's std::string from a str (found in review)
                try:
                    path = os.fsencode(path)
                except UnicodeEncodeError:  # a lone surrogate that no name's bytes give (found in review)
                    raise InvalidArgumentError(f"load source {i}: the path {path!r} names no file: it holds a "
                                               f"character no file name's bytes decode to", path=repr(path)) from None
                specs.append((path, 0, None, src_offset, slot_offset, nbytes))
                continue
            address, length, keep = _buffer_address(obj)
            if src_offset + nbytes > length:
                raise InvalidArgumentError(
                    f"load source {i}: bytes [{src_offset}, {src_offset + nbytes}) are outside its "
                    f"{length}-byte buffer")
            specs.append((None, address, keep, src_offset, slot_offset, nbytes))
        if threads is None:
            threads = 1 if self._pool.backend == "cuda" else 2
        _count("threads", threads, positive=True, limit=MAX_THREADS)
        _count("chunk_bytes", chunk_bytes, positive=True)
        if chunk_bytes < MIN_LOAD_CHUNK_BYTES:
            raise InvalidArgumentError(
                f"chunk_bytes={chunk_bytes} is below the minimum of {MIN_LOAD_CHUNK_BYTES} bytes. Fix: chunk_bytes >= "
                f"{MIN_LOAD_CHUNK_BYTES}; the default is {fmt_bytes(LOAD_CHUNK_BYTES)}")
        return LoadJob(self._start_load(specs, threads, chunk_bytes), progress)

    def close(self, force: bool = False) -> None:
        """Cancel this slot's running loads (C++ waits for their rollback) and unmap everything (pages back to the
        pool). ViewsAliveError while pinned views are alive unless force (stale views then fault on access); a close
        refused so changes nothing, its loads go on. On a closed pool it unmaps what no live pinned view covers (pages
        under live views stay until the last view over them goes, then go by themselves).
        The one operation a slot that raised SlotUnusableError still accepts. Idempotent. On a thread capturing a
        CUDA graph it raises InvalidArgumentError and changes nothing, as unmap does there."""
        self._slot.close(force=bool(force))

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"Slot({self.tag!r}, closed)"
        return f"Slot({self.tag!r}, {self.mapped_pages}/{self.reserved_pages} pages mapped)"


def _tag(tag) -> str:
    """tag, when it is a str the core can hold (UTF-8): one with a lone surrogate (a file name's surrogate escape)
    came back from pybind as a bare TypeError (found in review), and not "free", pages_by_tag()'s key for the
    unmapped pages (found in review: a slot tagged so had its pages dropped from the count)."""
    if not isinstance(tag, str):
        raise InvalidArgumentError(f"tag must be a str, not {type(tag).__name__}")
    try:
        tag.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"tag {tag!r} has a lone surrogate at {e.start} and is not text. Fix: a tag "
                                   f"without it (a name from os.fsdecode: os.fsencode(name).decode(errors='replace'))",
                                   tag=repr(tag)) from None
    if tag == "free":
        raise InvalidArgumentError("tag 'free' is reserved: pool.pages_by_tag() counts the pool's unmapped pages "
                                   "under it, where a slot's pages would vanish. Fix: any other tag",
                                   tag=repr(tag))
    return tag


def _shape(name: str, shape) -> tuple[int, ...]:
    """A view's shape as a tuple of dimensions, each a non-negative int (found in review: tensors() checked none, and
    a negative or float dimension came back untyped from pybind or torch)."""
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise InvalidArgumentError(f"{name} {shape!r} must be an int or a sequence of ints. Fix: e.g. (4096, 11008)",
                                   shape=shape) from None
    for i, d in enumerate(shape):
        _count(f"{name} dimension {i}", d)
    return shape


def _dtype(name: str, dtype):
    """dtype, when it is a torch.dtype (found in review: the string 'float32', as configs spell it, or None came back
    as AttributeError "'str' object has no attribute 'itemsize'")."""
    import torch

    if not isinstance(dtype, torch.dtype):
        named = isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype)
        hint = f" Fix: torch.{dtype}" if named else " Fix: e.g. torch.bfloat16"
        raise InvalidArgumentError(f"{name} must be a torch.dtype, not {dtype!r} ({type(dtype).__name__}).{hint}",
                                   dtype=repr(dtype))
    return dtype


def _view_bytes(name: str, shape: tuple[int, ...], itemsize: int) -> int:
    """The bytes a view of `shape` covers; InvalidArgumentError past MAX_COUNT (found in review: a bare TypeError
    from pybind, which takes the byte count as a uint64)."""
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_COUNT:
        raise InvalidArgumentError(f"{name}: shape {shape} of {itemsize}-byte items covers {nbytes} bytes, past the "
                                   f"largest view ({MAX_COUNT} bytes). Fix: a shape within the slot's reserved bytes",
                                   shape=shape, nbytes=nbytes)
    return nbytes


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def _buffer_address(obj) -> tuple[int, int, object]:
    """(address, length in bytes, object to keep alive) of a CPU buffer."""
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            if obj.device.type != "cpu" or not obj.is_contiguous():
                raise InvalidArgumentError(
                    f"a tensor load source must be a contiguous CPU tensor, got one on {obj.device} "
                    f"({'contiguous' if obj.is_contiguous() else 'not contiguous'}, shape {tuple(obj.shape)}): "
                    "fix: pass t.contiguous().cpu()", device=str(obj.device))
            return obj.data_ptr(), obj.numel() * obj.element_size(), obj
    except ImportError:
        pass
    import numpy as np

    try:
        view = memoryview(obj)
    except TypeError as e:
        raise InvalidArgumentError(f"load source must be a path, a CPU tensor or a buffer, not "
                                   f"{type(obj).__name__}") from e
    if not view.c_contiguous:  # found in review: a memoryview slice escaped as a bare BufferError
        raise InvalidArgumentError(f"a {type(obj).__name__} load source must be a C-contiguous buffer, not one of "
                                   f"shape {view.shape} with strides {view.strides}. Fix: a contiguous copy "
                                   "(bytes(src), numpy.ascontiguousarray(src))", shape=view.shape, strides=view.strides)
    try:
        arr = np.frombuffer(obj, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as e:
        raise InvalidArgumentError(f"load source must be a path, a CPU tensor or a buffer, not "
                                   f"{type(obj).__name__}") from e
    return arr.ctypes.data, arr.nbytes, arr
