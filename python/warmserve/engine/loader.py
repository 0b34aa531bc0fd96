"""Loading a checkpoint into a memory-manager slot: ``load_model(path, pool) -> ModelLoad -> LoadedModel``.

Slot layout (byte offsets from the slot's start):

    [ weights, packed in execution order ][ pad to a page ][ KV block 0 ][ KV block 1 ] ...

Each weight group starts 256-byte aligned; the members of a fused group (q, k, v; gate, up; their biases) sit
back to back so one view spans the group and the projection is one matmul with no copy. The weight region ends
on a page boundary so the KV cache that follows maps and unmaps in whole pages. The slot reserves address space
for the weights plus a KV cache as large as the whole pool (reserving costs no memory); only mapped pages use it.

Bytes move from the files straight into the slot through ``slot.load`` (C++ threads map pages ahead of the
copy; no intermediate copy in Python). A tensor whose checkpoint dtype differs from the requested dtype cannot
be copied byte for byte: it is converted per tensor after the copy phase, read from the file (readinto, a chunk
of whole rows at a time, so the extra memory is at most 16 MiB or one row) and copied into its slot view. Not
through a memory map: a file truncated during the load made that a SIGBUS of the whole worker.

That finishing work (conversions, strided slices, the tokenizer) runs on the load's own Python thread, never in
``wait``: a worker polls its loads with ``wait(0.0)`` on the thread that steps its other models, and converting
a large checkpoint there stopped every engine for seconds (found in review).

Tensor parallelism (``load_model(..., tp=, rank=)``): each rank's slot holds only its shard, laid out the same way
(fused groups of the rank's slices, page-aligned weight region, then the rank's own KV blocks); engine/parallel.py
has the rules. Only the rank's slice of each tensor is read. A slice along dim 0 (column-parallel q/k/v and
gate/up, vocabulary rows) is one contiguous byte range of the file and goes through ``slot.load`` like a whole
tensor; a slice along dim 1 (row-parallel o and down) is strided in the file, so it is read after the copy phase
like a conversion (whole rows, the slice's columns copied into its slot view). Rows padding the last vocabulary
shard are zeroed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
import traceback
import weakref

import numpy as np
import torch

from warmserve.engine.attention import kernels_usable
from warmserve.engine.arch import check_tensors, warn_if_tied_head_differs
from warmserve.engine.checkpoint import CheckpointError, TensorInfo, checkpoint_dtype, read_tensors
from warmserve.engine.config import DTYPES, ModelConfig, json_object
from warmserve.engine.kv_cache import KVPageMapper, block_layout
from warmserve.geometry import KV_BLOCK_TOKENS, align_up
from warmserve.engine.model import hf_groups
from warmserve.engine.parallel import ParallelGroup, Shard, shard_config, shard_of
from warmserve.errors import (CancelledError, InvalidArgumentError, OutOfMemoryError, TimeoutError_,
                              ViewsAliveError, fmt_bytes)

ALIGN_BYTES = 256
#: How often ModelLoad.wait wakes to report progress (and let Ctrl-C through).
_POLL_S = 0.05


def _esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def resolve_dtype(dtype, cfg: ModelConfig, tensors: dict[str, TensorInfo] | None = None) -> torch.dtype:
    """The dtype a load of `dtype` ("auto"/None: the checkpoint's) runs in. A config.json that names no dtype
    takes the checkpoint's (`tensors`, from read_tensors), as transformers does; float32 without them."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InvalidArgumentError(f"dtype {dtype} is not supported: use one of {', '.join(DTYPES)}")
        return dtype
    if dtype in (None, "auto"):
        name = cfg.torch_dtype or checkpoint_dtype(tensors or {})
    else:
        name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        if dtype in (None, "auto"):  # config.json names none, and the checkpoint's tensors are float64
            raise InvalidArgumentError(
                f"the checkpoint's dtype is {name} (config.json names none), which the engine does not run: pass "
                f"dtype as one of {', '.join(DTYPES)}", dtype=name)
        raise InvalidArgumentError(f"dtype {dtype!r} is not supported: use auto or one of {', '.join(DTYPES)}",
                                   dtype=str(dtype))
    return DTYPES[name]


def plan_layout(cfg: ModelConfig, tensors: dict[str, TensorInfo], dtype: torch.dtype, page_bytes: int, tp: int = 1,
                rank: int = 0):
    """(fused name -> (byte offset, shape), [(hf tensor, slot byte offset, Shard or None for all of it)], weight
    bytes, weight region bytes) of rank `rank` of a `tp`-way split; cfg is the model's own config."""
    expected = check_tensors(cfg, tensors)
    es = _esize(dtype)
    layout: dict[str, tuple[int, tuple[int, ...]]] = {}
    placed: list[tuple[TensorInfo, int]] = []
    off = 0
    weight_bytes = 0
    for fused, names in hf_groups(cfg):
        off = -(-off // ALIGN_BYTES) * ALIGN_BYTES
        shards = [shard_of(n, cfg, tp, rank) for n in names]
        shapes = [expected[n] if sh is None else sh.shape(expected[n]) for n, sh in zip(names, shards)]
        rows = sum(s[0] for s in shapes)
        layout[fused] = (off, (rows,) + shapes[0][1:])
        for n, s, sh in zip(names, shapes, shards):
            placed.append((tensors[n], off, sh))
            nb = int(np.prod(s)) * es
            off += nb
            weight_bytes += nb
    region = align_up(off, page_bytes)
    return layout, placed, weight_bytes, region


class LoadedModel:
    """A model whose weights sit in a slot: prewarmed, or activated by an Engine over the same pages."""

    def __init__(self, name, path, cfg, slot, dtype, layout, weight_bytes, weight_region_bytes, tokenizer,
                 generation_config, max_context: int | None = None, tp_rank: int = 0):
        self.name = name
        self.path = path
        #: Parsed config (of this rank's shard when config.tp > 1); the raw HF dict is ``config.raw``.
        self.config: ModelConfig = cfg
        #: The shard this slot holds, of config.tp.
        self.tp_rank = tp_rank
        #: The tensor-parallel group the shard runs in once activated (bind_group); None at tp = 1.
        self.parallel: ParallelGroup | None = None
        self.generation_config: dict = generation_config
        self.slot = slot
        self.dtype = dtype
        #: Run each layer's small operations as fused CUDA kernels (Model.fused_kernels) in the engines and decode
        #: graphs of this model (set before activating or capturing). On wherever the kernels can run: on an H200
        #: the 1b demo's decode step with graphs took 1.49 ms fused against 1.89 unfused at batch 1, 1.67 against
        #: 2.37 at batch 16 (bench/gpu_graphs.py, 2026-11-28; tests/gpu/test_layer_kernels.py checks the numerics).
        self.fused_kernels = kernels_usable(self.device, dtype, cfg.head_dim)
        #: Run matmuls of 1 to 4 rows (batch-1 to 4 decode steps) with the gemv kernel instead of cuBLAS (Model.gemv).
        #: On wherever the kernels can run: on an H200 a batch-1 decode step with graphs took 1.20 ms against 1.37
        #: with cuBLAS on the 1b demo and 4.85 against 5.37 on the 7b (bench/gpu_graphs.py part 7, 2026-12-04; no
        #: split-K reduce kernels); tests/gpu/test_gemv.py checks the numerics.
        self.gemv_kernel = self.fused_kernels
        #: With both of the above, take each norm and activation into the gemv after it (Model.gemv_prologues). Off
        #: until measured: written without a GPU (2026-12-04); tests/gpu/test_gemv.py checks it and
        #: bench/gpu_graphs.py part 12 times it.
        self.gemv_prologues = False
        #: With fused_kernels: decode steps rotate their keys straight into the KV cache (Model.rope_writes_kv), one
        #: launch a layer fewer. Off until measured, like gemv_prologues (tests/gpu/test_layer_kernels.py, part 12).
        self.rope_writes_kv = False
        self.layout = layout
        #: Bytes of weights (sum of tensors) and of their page-rounded region (the KV cache starts after it).
        self.weight_bytes = weight_bytes
        self.weight_region_bytes = weight_region_bytes
        self.block_tokens = KV_BLOCK_TOKENS
        # Blocks are whole 2 MiB units whatever the pool's page (KVPageMapper shares larger pages between blocks).
        _, self.kv_bytes_per_block = block_layout(cfg, dtype, KV_BLOCK_TOKENS)
        #: Longest prompt + output (tokens).
        self.max_context = max_context or cfg.max_position_embeddings
        self.tokenizer = tokenizer
        self._engine = None
        self.closed = False

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.slot.pool.device) if self.slot.pool.backend == "cuda" else torch.device("cpu")

    @property
    def kv_capacity_blocks(self) -> int:
        """KV blocks this model can ever have: what the slot's reservation holds after the weights, and no more than
        the pool's pages hold after them. The reservation alone counts the whole pool (load_model's default), so a
        request admitted on it could need blocks that never exist and wait forever (found in review)."""
        reserved = (self.slot.reserved_bytes - self.weight_region_bytes) // self.kv_bytes_per_block
        return min(reserved, self.kv_pool_blocks)

    @property
    def kv_pool_blocks(self) -> int:
        """KV blocks the pool's pages hold after this model's weights (the cap no KV share can pass)."""
        return (self.slot.pool.total_bytes - self.weight_region_bytes) // self.kv_bytes_per_block

    @property
    def tp(self) -> int:
        return self.config.tp

    def bind_group(self, group: ParallelGroup) -> None:
        """Set the process group a tensor-parallel shard runs in (before activation; the group is the caller's and
        outlives the engine)."""
        if self.active:
            raise InvalidArgumentError(f"model {self.name!r} is running: close its engine before binding a group",
                                       model=self.name)
        if group.world_size != self.tp or group.rank != self.tp_rank:
            raise InvalidArgumentError(
                f"model {self.name!r} holds shard {self.tp_rank} of {self.tp}; the group is rank {group.rank} of "
                f"{group.world_size}: bind the group whose rank and size match the shard",
                model=self.name, tp=self.tp, tp_rank=self.tp_rank, group_rank=group.rank,
                group_size=group.world_size)
        self.parallel = group

    @property
    def active(self) -> bool:
        return self._engine is not None and self._engine() is not None

    def weight_views(self) -> dict[str, torch.Tensor]:
        """Pinned zero-copy views over the weights (fused names, see model.py)."""
        params = {name: self.slot.tensor(off, shape, self.dtype, pinned=True)
                  for name, (off, shape) in self.layout.items()}
        if self.config.tie_word_embeddings:
            params["lm_head"] = params["embed"]
        return params

    # called by Engine
    def _activate(self, engine) -> dict[str, torch.Tensor]:
        if self.closed:
            from warmserve.errors import ClosedError
            raise ClosedError(f"model {self.name!r} was evicted: load it again")
        if self.active:
            raise InvalidArgumentError(f"model {self.name!r} already has a running engine: close it first",
                                       model=self.name)
        self._engine = weakref.ref(engine)
        self.slot.tag = f"instance:{self.name}"
        return self.weight_views()

    def _deactivate(self, engine) -> None:
        self._deactivate_id(id(engine))

    def _deactivate_id(self, engine_id: int) -> None:
        self._engine = None
        if not self.closed:
            self.slot.tag = f"prewarm:{self.name}"

    def _kv_region(self, kv_blocks: int | None):
        """(region, blocks, mapper) of a KV cache of ``kv_blocks`` (None: all the model can have). A share may
        pass what the pool holds after the weights (the slot's range has room for it); the engine then admits no
        request larger than what the pool holds (Engine.add_request)."""
        reserved = (self.slot.reserved_bytes - self.weight_region_bytes) // self.kv_bytes_per_block
        if kv_blocks is not None and not 1 <= kv_blocks <= reserved:
            raise InvalidArgumentError(
                f"kv_blocks={kv_blocks}: this slot holds 1 to {reserved} KV blocks of "
                f"{fmt_bytes(self.kv_bytes_per_block)}", kv_blocks=kv_blocks, capacity_blocks=reserved)
        total = self.kv_capacity_blocks if kv_blocks is None else kv_blocks
        if total < 1:
            raise OutOfMemoryError(
                f"model {self.name!r} has room for no KV block of {fmt_bytes(self.kv_bytes_per_block)}: its pool of "
                f"{fmt_bytes(self.slot.pool.total_bytes)} holds its {fmt_bytes(self.weight_region_bytes)} of weights "
                "and less than a block more: use a larger pool", model=self.name,
                asked_bytes=self.kv_bytes_per_block, total_bytes=self.slot.pool.total_bytes)
        elems = self.kv_bytes_per_block // _esize(self.dtype)
        region = self.slot.tensor(self.weight_region_bytes, (total, elems), self.dtype, pinned=False)
        return region, total, KVPageMapper(self.slot, self.weight_region_bytes, self.kv_bytes_per_block)

    def close(self) -> None:
        """Evict: stop a running engine, unmap every page of the slot at once (back to the pool)."""
        if self.closed:
            return
        eng = self._engine() if self._engine is not None else None
        if eng is not None:
            eng.close()
        try:
            self.slot.close()
        except ViewsAliveError:
            gc.collect()  # views caught in a reference cycle
            self.slot.close()
        self.closed = True

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("active" if self.active else "prewarmed")
        shard = f", shard {self.tp_rank} of {self.tp}" if self.tp > 1 else ""
        return f"LoadedModel({self.name!r}, {fmt_bytes(self.weight_bytes)}{shard}, {state})"


class ModelLoad:
    """A load in flight: ``wait()`` returns the LoadedModel; ``cancel()`` stops it and frees its pages.

    The copies run in the memory manager's C++ threads; a Python thread of the load's own waits for them, then
    converts, slices and zeroes what they could not copy and reads the tokenizer. ``wait`` only waits for that
    thread (``wait(0.0)`` costs a check) and reports progress on the caller's thread, as before."""

    def __init__(self, name, path, cfg, slot, dtype, layout, placed, weight_bytes, region, progress, tp_rank=0,
                 host_cache=None, tied_head=None):
        """cfg: the config the loaded model runs (the rank's shard config when tp > 1). host_cache: a
        memory.host_cache.HostCheckpointCache the bytes are loaded through (None: straight from the files).
        tied_head: (embedding, lm_head.weight) TensorInfos of a tied config whose files hold both, compared on
        this load's thread (arch.warn_if_tied_head_differs)."""
        self.name, self.path, self.cfg, self.slot, self.dtype = name, path, cfg, slot, dtype
        self._tied_head = tied_head
        self._layout, self._weight_bytes, self._region = layout, weight_bytes, region
        self._tp_rank = tp_rank
        sources = []
        self._convert: list[tuple[TensorInfo, int, Shard | None]] = []
        #: (slot byte offset, bytes) of vocabulary padding to zero.
        self._pads: list[tuple[int, int]] = []
        for ti, off, sh in placed:
            src = _file_range(ti, sh)
            if src is not None and ti.dtype == dtype:
                if src[1]:
                    sources.append((ti.path, src[0], off, src[1]))
            else:
                self._convert.append((ti, off, sh))
            if sh is not None and sh.pad:
                data = _shard_numel(ti.shape, sh, padded=False) * _esize(dtype)
                self._pads.append((off + data, _shard_numel(ti.shape, sh, padded=True) * _esize(dtype) - data))
        self._progress_cb = progress
        self._reported = -1
        #: Bytes converted so far (written by the finishing thread, read by ``progress``).
        self._converted = 0
        self._convert_total = sum(_shard_numel(ti.shape, sh, padded=False) * _esize(dtype)
                                  for ti, _, sh in self._convert)
        self._result: LoadedModel | None = None
        self._cancelled = False
        #: Set by cancel(): the finishing thread stops at its next chunk of a tensor (_CONVERT_CHUNK_BYTES).
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._extras: tuple | None = None  # (tokenizer, generation config)
        # A cached load starts on the load's thread: the cache may wait for another worker's fill of the same file
        # (up to its lock_timeout_s) and maps its entries, never on the caller's (found in review: a worker's loop
        # froze, its other models' streams with it). cancel() stops that wait (_stop).
        self._cached = (host_cache, sources) if sources and host_cache is not None else None
        self._job = slot.load(sources) if sources and self._cached is None else None
        # Not a daemon: an interpreter exiting mid-load waits for it rather than unmap the pool under a copy. It is
        # told to stop first (_stop_live_loads), so the wait is the tensor it is on, not the rest of the checkpoint.
        self._finisher = threading.Thread(target=self._finish, name=f"load:{name}", daemon=False)
        with _LIVE_LOCK:
            _LIVE_LOADS.add(self)
        try:
            self._finisher.start()
        except BaseException:
            with _LIVE_LOCK:
                _LIVE_LOADS.discard(self)
            if self._job is not None:
                self._job.cancel()
            raise

    @property
    def progress(self) -> tuple[int, int]:
        """(bytes done, bytes total)."""
        d, t = self._job.progress if self._job is not None else (0, 0)
        return d + self._converted, t + self._convert_total

    @property
    def done(self) -> bool:
        return self._result is not None or self._cancelled

    def _report(self) -> None:
        done, total = self.progress
        if self._progress_cb is not None and done != self._reported:
            self._reported = done
            self._progress_cb(done, total)

    def cancel(self) -> None:
        if self._result is not None or self._cancelled:
            return
        self._cancelled = True
        self._stop.set()
        if self._job is not None:
            self._job.cancel()
        # Bounded, whatever the tensors' size: the copies roll back after the piece they are on (LOAD_CHUNK_BYTES of
        # memory/pool.py), a conversion stops after its chunk of rows. Only then may the slot close: the thread
        # writes into views of it.
        self._finisher.join()
        self.slot.close()

    def wait(self, timeout_s: float | None = None) -> LoadedModel:
        """The LoadedModel once the load has ended. Raises CancelledError, the load's own error (the slot is then
        closed), or TimeoutError_ after timeout_s (the load goes on); ``wait(0.0)`` never blocks."""
        if self._result is not None:
            return self._result
        if self._cancelled:
            raise CancelledError(f"the load of {self.name!r} was cancelled", model=self.name)
        try:
            self._await_finisher(timeout_s)
        except TimeoutError_:
            raise
        except Exception:  # a progress callback that raised: stop the thread before closing what it writes into
            self._cancelled = True
            self._stop.set()
            if self._job is not None:
                self._job.cancel()
            self._finisher.join()
            self.slot.close(force=True)
            raise
        if self._error is not None:
            self._cancelled = True
            self.slot.close(force=True)
            raise self._error
        tokenizer, gen_config = self._extras
        self._result = LoadedModel(self.name, self.path, self.cfg, self.slot, self.dtype, self._layout,
                                   self._weight_bytes, self._region, tokenizer, gen_config, tp_rank=self._tp_rank)
        return self._result

    def _await_finisher(self, timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            step = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
            finished = self._finished.wait(step) if step > 0 else self._finished.is_set()
            self._report()
            if finished:
                return
            if deadline is not None and time.monotonic() >= deadline:
                done, total = self.progress
                raise TimeoutError_(
                    f"load of {self.name!r} not finished after {timeout_s} s ({done} of {total} bytes): wait "
                    "longer or cancel()", timeout_s=timeout_s, done_bytes=done, total_bytes=total)

    def _finish(self) -> None:
        """The load's thread: wait for the copies, then do what they could not (its errors go to wait)."""
        try:
            if self._cached is not None:
                self._check_stop()
                self._job = self._cached[0].load(self.slot, self._cached[1], stop=self._stop)
                if self._stop.is_set():  # cancel() set it before reading _job: either it saw the job or this sees it
                    self._job.cancel()
            if self._job is not None:
                self._job.wait()
            self._convert_rest()
            if self._tied_head is not None:
                warn_if_tied_head_differs(self.path, *self._tied_head)
            self._extras = (_tokenizer(self.path), _gen_config(self.path))
        except BaseException as e:
            # The frames the error passed through hold their locals, a slot view among them when a copy into it
            # failed: kept with the error, it made cancel()'s close raise ViewsAliveError. Their lines stay.
            _clear_frames(e)
            self._error = e
        finally:
            with _LIVE_LOCK:
                _LIVE_LOADS.discard(self)
            self._finished.set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise CancelledError(f"the load of {self.name!r} was cancelled", model=self.name)

    def _convert_rest(self) -> None:
        if not self._convert and not self._pads:
            return
        self._check_stop()
        # the copy phase mapped only the pages under its own tensors: fill the gaps of the weight region
        pb = self.slot.page_bytes
        need = self._region // pb
        page = 0
        for start, n in sorted(self.slot.mapped_ranges()) + [(need, 0)]:
            if start > page and page < need:
                self.slot.map(page, min(start, need) - page)
            page = max(page, start + n)
        with contextlib.ExitStack() as files:
            opened = {}  # path -> file, read with readinto
            buf = None  # one chunk of file bytes, reused
            for ti, off, sh in self._convert:
                self._check_stop()
                if ti.path not in opened:
                    opened[ti.path] = files.enter_context(open(ti.path, "rb", buffering=0))
                buf = self._convert_one(opened[ti.path], ti, off, sh, buf)
                self._converted += _shard_numel(ti.shape, sh, padded=False) * _esize(self.dtype)
            del buf
        for off, nbytes in self._pads:
            pad = self.slot.tensor(off, (nbytes,), torch.uint8)
            pad.zero_()
            del pad


    def _convert_one(self, f, ti: TensorInfo, off: int, sh: Shard | None, buf: torch.Tensor | None) -> torch.Tensor:
        """Read the rank's part of `ti` from file `f` a chunk of whole rows at a time and copy it, converted, into
        its slot view. Read into memory with readinto, not through a memory map of the file: a file truncated or
        rewritten meanwhile (an in-place re-save opens it "wb") is then a short read and a CheckpointError, where
        a mapping's access past the new end killed the process with SIGBUS (found in review). Returns the chunk
        buffer for the next tensor."""
        shape = ti.shape or (1,)
        rows = shape[0]
        row_bytes = ti.nbytes // rows if rows else 0
        lo, hi = (sh.start, sh.stop) if sh is not None and sh.dim == 0 else (0, rows)
        part = list(shape)
        part[0] = hi - lo
        if sh is not None and sh.dim == 1:
            part[1] = sh.stop - sh.start
        dst = self.slot.tensor(off, tuple(part), self.dtype)
        if not row_bytes or hi <= lo:
            return buf
        step = max(1, min(hi - lo, _CONVERT_CHUNK_BYTES // row_bytes))
        if buf is None or buf.numel() < step * row_bytes:
            buf = torch.empty(step * row_bytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        for r in range(lo, hi, step):
            self._check_stop()
            k = min(step, hi - r)
            n = k * row_bytes
            at, got = ti.file_offset + r * row_bytes, 0
            while got < n:
                f.seek(at + got)
                m = f.readinto(view[got:n])
                if not m:
                    raise CheckpointError(
                        f"{ti.path} ended at byte {at + got}, inside tensor {ti.name} (bytes [{ti.file_offset}, "
                        f"{ti.file_offset + ti.nbytes})): the file changed or was truncated during the load; load "
                        "it again once it is complete", path=ti.path, tensor=ti.name, offset=at + got)
                got += m
            src = buf[:n].view(ti.dtype).view((k,) + tuple(shape[1:]))
            if sh is not None and sh.dim == 1:
                src = src[:, sh.start:sh.stop]
            dst[r - lo:r - lo + k].copy_(src)
            del src
        del view, dst
        return buf


#: Bytes of the file a conversion reads at a time (whole rows; one row when a row is larger): its extra memory.
_CONVERT_CHUNK_BYTES = 16 << 20

#: Loads whose finishing thread runs (ModelLoad._finish): told to stop when the interpreter exits.
_LIVE_LOADS: weakref.WeakSet = weakref.WeakSet()
#: Guards _LIVE_LOADS: a finishing thread leaves it while the exit handler walks it.
_LIVE_LOCK = threading.Lock()


def _stop_live_loads() -> None:
    """Before the interpreter joins its non-daemon threads (a Ctrl-C in wait(), any exit without cancel()): each
    load's copies are cancelled and its thread stops after the tensor it is on (found in review: the exit waited
    until the whole checkpoint was copied and converted). The slots are not closed here: the threads may still
    write into them until they end, and the pool's own finalizer frees the pages after."""
    with _LIVE_LOCK:
        loads = list(_LIVE_LOADS)
    for load in loads:
        load._stop.set()
        if load._job is not None:
            load._job.cancel()


# Run by threading._shutdown before it joins non-daemon threads; atexit handlers would run only after that join.
threading._register_atexit(_stop_live_loads)


def _clear_frames(e: BaseException) -> None:
    """Drop the locals of the finished frames of ``e``'s traceback, and of the errors chained to it."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__


def _file_range(ti: TensorInfo, sh: Shard | None) -> tuple[int, int] | None:
    """(file offset, bytes) of the part of ti a rank holds, when those bytes are contiguous in the file."""
    if sh is None:
        return ti.file_offset, ti.nbytes
    if sh.dim != 0:
        return None
    row = ti.nbytes // ti.shape[0]
    return ti.file_offset + sh.start * row, (sh.stop - sh.start) * row


def _shard_numel(shape: tuple[int, ...], sh: Shard | None, padded: bool) -> int:
    if sh is None:
        return int(np.prod(shape))
    return int(np.prod(sh.shape(shape))) // sh.size * (sh.size if padded else sh.stop - sh.start)


def _tokenizer(path: str):
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    from warmserve.engine.tokenizer import Tokenizer
    return Tokenizer(path)


def _gen_config(path: str) -> dict:
    p = os.path.join(path, "generation_config.json")
    return json_object(p) if os.path.isfile(p) else {}


def load_model(path: str, pool, dtype="auto", progress=None, name: str | None = None,
               kv_reserve_bytes: int | None = None, tp: int = 1, rank: int = 0, host_cache=None) -> ModelLoad:
    """Start loading the checkpoint in directory `path` into a new slot of `pool`, tagged "prewarm:<name>".

    dtype: "auto" (the checkpoint's), "float32", "bfloat16", "float16" or a torch dtype. progress(done, total)
    is called with byte counts while waiting. kv_reserve_bytes: address space reserved for the KV cache after the
    weights (default: the pool's size). tp, rank: load only shard `rank` of a `tp`-way tensor-parallel split
    (TensorParallelError when the model does not split tp ways); the result then runs with a ParallelGroup
    (``LoadedModel.bind_group``). host_cache: a HostCheckpointCache (memory/host_cache.py) shared by the workers
    of the machine; the files are then read once per machine and copied into the slot from host memory by DMA.
    Raises OutOfMemoryError at once when the weights cannot fit the free pages.
    """
    path = os.fspath(path)
    cfg = ModelConfig.from_dir(path)
    run_cfg = shard_config(cfg, tp)
    if not 0 <= rank < tp:
        raise InvalidArgumentError(f"rank {rank} is outside a {tp}-way split: use 0..{tp - 1}", rank=rank, tp=tp)
    name = name or os.path.basename(os.path.normpath(path))
    tensors = read_tensors(path)
    dt = resolve_dtype(dtype, cfg, tensors)
    layout, placed, weight_bytes, region = plan_layout(cfg, tensors, dt, pool.page_bytes, tp, rank)
    if region > pool.free_bytes:
        raise OutOfMemoryError(
            f"model {name!r} needs {fmt_bytes(region)} for its weights, {fmt_bytes(pool.free_bytes)} free of "
            f"{fmt_bytes(pool.total_bytes)}: evict a prewarmed model, shrink a KV cache or use a larger pool",
            asked_bytes=region, free_bytes=pool.free_bytes, total_bytes=pool.total_bytes, model=name)
    reserve = region + (pool.total_bytes if kv_reserve_bytes is None else int(kv_reserve_bytes))
    slot = pool.create_slot(reserve, f"prewarm:{name}")
    try:
        # rank 0 alone compares a tied config's head: one warning per load, not one per rank
        tied = cfg.tie_word_embeddings and rank == 0 and "lm_head.weight" in tensors
        return ModelLoad(name, path, run_cfg, slot, dt, layout, placed, weight_bytes, region, progress, rank,
                         host_cache=host_cache,
                         tied_head=(tensors["model.embed_tokens.weight"], tensors["lm_head.weight"]) if tied else None)
    except BaseException:
        slot.close(force=True)
        raise
