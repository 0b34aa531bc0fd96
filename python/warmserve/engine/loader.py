"""Loading a checkpoint into a memory-manager slot: ``load_model(path, pool) -> ModelLoad -> LoadedModel``.

Slot layout (byte offsets from the slot's start):

    [ weights, packed in execution order ][ pad to a page ][ KV block 0 ][ KV block 1 ] ...

Each weight group starts 256-byte aligned; the members of a fused group (q, k, v; gate, up; their biases) sit
back to back so one view spans the group and the projection is one matmul with no copy. The weight region ends
on a page boundary so the KV cache that follows maps and unmaps in whole pages. The slot reserves address space
for the weights plus a KV cache as large as the whole pool (reserving costs no memory); only mapped pages use it.

Bytes move from the files straight into the slot through ``slot.load`` (C++ threads map pages ahead of the
copy; no intermediate copy in Python). A tensor whose checkpoint dtype differs from the requested dtype cannot
be copied byte for byte: it is converted per tensor after the copy phase, from a memory map of the file into
its slot view (one tensor at a time, so the extra memory is at most one tensor in the checkpoint's dtype).
"""

from __future__ import annotations

import gc
import json
import os
import weakref

import numpy as np
import torch

from warmserve.engine.checkpoint import CheckpointError, TensorInfo, read_tensors
from warmserve.engine.config import DTYPES, ModelConfig
from warmserve.engine.demo import hf_tensor_shapes
from warmserve.engine.kv_cache import block_layout
from warmserve.geometry import KV_BLOCK_TOKENS, align_up
from warmserve.engine.model import hf_groups
from warmserve.errors import (CancelledError, InvalidArgumentError, OutOfMemoryError, ViewsAliveError,
                              fmt_bytes)

ALIGN_BYTES = 256


def _esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def resolve_dtype(dtype, cfg: ModelConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InvalidArgumentError(f"dtype {dtype} is not supported: use one of {', '.join(DTYPES)}")
        return dtype
    name = cfg.torch_dtype if dtype in (None, "auto") else str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise InvalidArgumentError(f"dtype {dtype!r} is not supported: use auto or one of {', '.join(DTYPES)}", dtype=str(dtype))
    return DTYPES[name]


def plan_layout(cfg: ModelConfig, tensors: dict[str, TensorInfo], dtype: torch.dtype, page_bytes: int):
    """(fused name -> (byte offset, shape), [(hf tensor, slot byte offset)], weight bytes, weight region bytes)."""
    expected = hf_tensor_shapes(cfg)
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s) config.json calls for, e.g. {missing[:3]}",
                              missing=missing[:10])
    for n, shape in expected.items():
        if tensors[n].shape != shape:
            raise CheckpointError(f"tensor {n} has shape {list(tensors[n].shape)}, config.json implies {list(shape)}",
                                  tensor=n)
    es = _esize(dtype)
    layout: dict[str, tuple[int, tuple[int, ...]]] = {}
    placed: list[tuple[TensorInfo, int]] = []
    off = 0
    weight_bytes = 0
    for fused, names in hf_groups(cfg):
        off = -(-off // ALIGN_BYTES) * ALIGN_BYTES
        shapes = [expected[n] for n in names]
        rows = sum(s[0] for s in shapes)
        layout[fused] = (off, (rows,) + shapes[0][1:])
        for n, s in zip(names, shapes):
            placed.append((tensors[n], off))
            nb = int(np.prod(s)) * es
            off += nb
            weight_bytes += nb
    region = align_up(off, page_bytes)
    return layout, placed, weight_bytes, region


class LoadedModel:
    """A model whose weights sit in a slot: prewarmed, or activated by an Engine over the same pages."""

    def __init__(self, name, path, cfg, slot, dtype, layout, weight_bytes, weight_region_bytes, tokenizer,
                 generation_config, max_context: int | None = None):
        self.name = name
        self.path = path
        #: Parsed config; the raw HF dict is ``config.raw`` (also ``hf_config``).
        self.config: ModelConfig = cfg
        self.hf_config: dict = cfg.raw
        self.generation_config: dict = generation_config
        self.slot = slot
        self.dtype = dtype
        self.layout = layout
        #: Bytes of weights (sum of tensors) and of their page-rounded region (the KV cache starts after it).
        self.weight_bytes = weight_bytes
        self.weight_region_bytes = weight_region_bytes
        self.block_tokens = KV_BLOCK_TOKENS
        _, self.kv_bytes_per_block = block_layout(cfg, dtype, KV_BLOCK_TOKENS, slot.page_bytes)
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
        """KV blocks the slot's reservation can hold after the weights."""
        return (self.slot.reserved_bytes - self.weight_region_bytes) // self.kv_bytes_per_block

    @property
    def active(self) -> bool:
        return self._engine is not None and self._engine() is not None

    def weight_views(self) -> dict[str, torch.Tensor]:
        """Pinned zero-copy views over the weights (fused names, see model.py)."""
        params = {name: self.slot.tensor(off, shape, self.dtype, pinned=True) for name, (off, shape) in self.layout.items()}
        if self.config.tie_word_embeddings:
            params["lm_head"] = params["embed"]
        return params

    # called by Engine
    def _activate(self, engine) -> dict[str, torch.Tensor]:
        if self.closed:
            from warmserve.errors import ClosedError
            raise ClosedError(f"model {self.name!r} was evicted: load it again")
        if self.active:
            raise InvalidArgumentError(f"model {self.name!r} already has a running engine: close it first", model=self.name)
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
        cap = self.kv_capacity_blocks
        if kv_blocks is not None and not 1 <= kv_blocks <= cap:
            raise InvalidArgumentError(
                f"kv_blocks={kv_blocks}: this slot holds 1 to {cap} KV blocks of {fmt_bytes(self.kv_bytes_per_block)}",
                kv_blocks=kv_blocks, capacity_blocks=cap)
        total = cap if kv_blocks is None else kv_blocks
        elems = self.kv_bytes_per_block // _esize(self.dtype)
        region = self.slot.tensor(self.weight_region_bytes, (total, elems), self.dtype, pinned=False)
        return region, total, _SlotBlockMapper(self.slot, self.weight_region_bytes, self.kv_bytes_per_block)

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
        return f"LoadedModel({self.name!r}, {fmt_bytes(self.weight_bytes)}, {state})"


class _SlotBlockMapper:
    def __init__(self, slot, kv_offset_bytes: int, block_bytes: int):
        self.slot = slot
        self.first_page = kv_offset_bytes // slot.page_bytes
        self.pages = block_bytes // slot.page_bytes

    def map_block(self, b: int) -> None:
        self.slot.map(self.first_page + b * self.pages, self.pages)

    def unmap_block(self, b: int) -> None:
        self.slot.unmap(self.first_page + b * self.pages, self.pages)


class ModelLoad:
    """A load in flight: ``wait()`` returns the LoadedModel; ``cancel()`` stops it and frees its pages."""

    def __init__(self, name, path, cfg, slot, dtype, layout, placed, weight_bytes, region, progress):
        self.name, self.path, self.cfg, self.slot, self.dtype = name, path, cfg, slot, dtype
        self._layout, self._weight_bytes, self._region = layout, weight_bytes, region
        self._direct = [(ti, off) for ti, off in placed if ti.dtype == dtype]
        self._convert = [(ti, off) for ti, off in placed if ti.dtype != dtype]
        self._progress_cb = progress
        self._converted = 0
        self._convert_total = sum(ti.nbytes * _esize(dtype) // _esize(ti.dtype) for ti, _ in self._convert)
        self._result: LoadedModel | None = None
        self._cancelled = False
        sources = [(ti.path, ti.file_offset, off, ti.nbytes) for ti, off in self._direct]
        self._job = slot.load(sources, progress=self._on_progress) if sources else None

    def _on_progress(self, done: int, total: int) -> None:
        if self._progress_cb is not None:
            self._progress_cb(done + self._converted, total + self._convert_total)

    @property
    def progress(self) -> tuple[int, int]:
        """(bytes done, bytes total)."""
        d, t = self._job.progress if self._job is not None else (0, 0)
        return d + self._converted, t + self._convert_total

    @property
    def done(self) -> bool:
        return self._result is not None or self._cancelled

    def cancel(self) -> None:
        if self._result is not None or self._cancelled:
            return
        self._cancelled = True
        if self._job is not None:
            self._job.cancel()
            try:
                self._job.wait()
            except Exception:
                pass
        self.slot.close()

    def wait(self, timeout_s: float | None = None) -> LoadedModel:
        if self._result is not None:
            return self._result
        if self._cancelled:
            raise CancelledError(f"the load of {self.name!r} was cancelled", model=self.name)
        try:
            if self._job is not None:
                self._job.wait(timeout_s)
            self._convert_rest()
        except Exception as e:
            from warmserve.errors import TimeoutError_
            if not isinstance(e, TimeoutError_):
                self._cancelled = True
                self.slot.close(force=True)
            raise
        self._result = LoadedModel(self.name, self.path, self.cfg, self.slot, self.dtype, self._layout,
                                   self._weight_bytes, self._region, _tokenizer(self.path), _gen_config(self.path))
        return self._result

    def _convert_rest(self) -> None:
        if not self._convert:
            return
        # the copy phase mapped only the pages under its own tensors: fill the gaps of the weight region
        pb = self.slot.page_bytes
        need = self._region // pb
        page = 0
        for start, n in sorted(self.slot.mapped_ranges()) + [(need, 0)]:
            if start > page and page < need:
                self.slot.map(page, min(start, need) - page)
            page = max(page, start + n)
        for ti, off in self._convert:
            # copy-on-write: a writable buffer for torch that never touches the file
            mm = np.memmap(ti.path, dtype=np.uint8, mode="c", offset=ti.file_offset, shape=(ti.nbytes,))
            src = torch.frombuffer(memoryview(mm), dtype=ti.dtype).view(ti.shape)
            dst = self.slot.tensor(off, ti.shape, self.dtype)
            dst.copy_(src)
            del dst, src, mm
            self._converted += ti.nbytes * _esize(self.dtype) // _esize(ti.dtype)
            self._on_progress(*(self._job.progress if self._job is not None else (0, 0)))


def _tokenizer(path: str):
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    from warmserve.engine.tokenizer import Tokenizer
    return Tokenizer(path)


def _gen_config(path: str) -> dict:
    p = os.path.join(path, "generation_config.json")
    if not os.path.isfile(p):
        return {}
    with open(p) as f:
        return json.load(f)


def load_model(path: str, pool, dtype="auto", progress=None, name: str | None = None,
               kv_reserve_bytes: int | None = None) -> ModelLoad:
    """Start loading the checkpoint in directory `path` into a new slot of `pool`, tagged "prewarm:<name>".

    dtype: "auto" (the checkpoint's), "float32", "bfloat16", "float16" or a torch dtype. progress(done, total)
    is called with byte counts while waiting. kv_reserve_bytes: address space reserved for the KV cache after the
    weights (default: the pool's size). Raises OutOfMemoryError at once when the weights cannot fit the free pages.
    """
    path = os.fspath(path)
    cfg = ModelConfig.from_dir(path)
    name = name or os.path.basename(os.path.normpath(path))
    dt = resolve_dtype(dtype, cfg)
    tensors = read_tensors(path)
    layout, placed, weight_bytes, region = plan_layout(cfg, tensors, dt, pool.page_bytes)
    if region > pool.free_bytes:
        raise OutOfMemoryError(
            f"model {name!r} needs {fmt_bytes(region)} for its weights, {fmt_bytes(pool.free_bytes)} free of "
            f"{fmt_bytes(pool.total_bytes)}: evict a prewarmed model, shrink a KV cache or use a larger pool",
            asked_bytes=region, free_bytes=pool.free_bytes, total_bytes=pool.total_bytes, model=name)
    reserve = region + (pool.total_bytes if kv_reserve_bytes is None else int(kv_reserve_bytes))
    slot = pool.create_slot(reserve, f"prewarm:{name}")
    try:
        return ModelLoad(name, path, cfg, slot, dt, layout, placed, weight_bytes, region, progress)
    except BaseException:
        slot.close(force=True)
        raise
