"""CUDA graphs of the decode step (issue 13, item 2), captured while a model is prewarmed.

Why: a decode step of a small model is bound by kernel launches from Python, not by the GPU (about 10 ms for 16
tokens of the 20M demo on an H200, bench/engine/README.md). A graph replays the step's few hundred kernels with
one launch.

What one graph holds: ``Model.forward`` on the kernel path (write_kv + paged_attention, engine/attention.py) and
``Model.logits``, for a batch of B decode rows, B a bucket (1, 2, 4, ..., max_num_seqs; decode_buckets). A batch
of n runs the graph of the smallest bucket >= n; a batch larger than every bucket, and every step that is not
decode-only, runs eagerly. Sampling stays outside: it runs per request with its own generator and penalties.

Inputs: one static int32 device buffer ``packed`` [MAX_GRAPH_BATCH, 4 + W]: per row the token id, its position,
the cache row its K/V goes to (layer 0, K), its number of visible keys, then its block table (W blocks: the
longest context). A bucket-b graph reads rows 0..b-1. The engine fills a pinned host copy (pack_decode_inputs)
and copies the first b rows up with one cudaMemcpyAsync before the replay. Rows n..b-1 are padding: token 0 at
position 0, write row -1 (write_kv skips negative rows), one visible key in the first block of row 0: they read
mapped memory and write nothing, and their logits are not looked at.

Why a graph stays valid while the KV cache grows and shrinks: a graph bakes device addresses in. The weights are
views over the slot, and the KV cache is one tensor over the slot's reserved address range after the weights
(LoadedModel._kv_region; its base does not depend on kv_blocks, only its length). The memory manager maps and
unmaps a block's pages in place inside that reserved range (cuMemMap into a range reserved once), so a block's
virtual address never changes when its pages come and go, and which blocks a step reads is data (the block tables
in ``packed``), not a baked address. A graph captured before any KV page is mapped therefore replays correctly
after blocks are mapped, unmapped and mapped again; it is wrong only if the weights move to another address
(another slot), which ``matches`` checks at every activation (the graphs are then captured again).

Why capture can happen while the model is prewarmed: all a graph bakes in is known once the weights are in the
slot: the weight addresses, the KV range's address, the block-table width (max_context and the slot's KV
capacity), and the attention kernel's split (fixed per bucket for the longest context). Capturing executes
nothing, so the unmapped KV pages are never touched; the warm-up run before it (which does execute: cuBLAS
initialises its handle and workspace for the capture stream there) runs on a one-block scratch cache of torch
memory. So ``capture_decode_graphs(lm, max_num_seqs)`` (or ``prewarm_decode_graphs``, which takes Engine's
``cuda_graphs`` option) runs right after a load, before any Engine exists;
``Engine(lm)`` finds the graphs (graphs_for) and starts with them ready; they outlive the engine (deactivation
returns the model to prewarmed, graphs included) and go with the model (release_decode_graphs at eviction, or when
the LoadedModel is garbage: the registry holds models weakly, and a DecodeGraphs holds its model weakly).

Capture runs in cudaStreamCaptureModeThreadLocal: the loader's C++ threads (other models' loads) keep calling
CUDA while a worker captures, and the global mode would make those calls fail.

Memory: the graphs' intermediates and outputs come from one torch private pool shared by all buckets (captured
largest first, so the smaller ones reuse its blocks): torch's caching allocator, outside the memory manager's
pages. ``stats`` records the capture time and the memory (torch's reserved bytes and the driver's free bytes
before and after), for bench/gpu_graphs.py.

Limits: tensor parallelism (tp > 1) runs eagerly: its collectives inside a graph are not done. Graphs need the
CUDA kernels (csrc/kernels).
"""

from __future__ import annotations

import bisect
import gc
import logging
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from warmserve import _C
from warmserve.engine.attention import AttnMeta, PagedMeta, PrefillChunk, kernels_usable, paged_meta
from warmserve.engine.kv_cache import layer_offsets
from warmserve.engine.model import Model
from warmserve.errors import BackendUnavailableError, ClosedError, InvalidArgumentError
from warmserve.memory import kernels

log = logging.getLogger(__name__)

#: Largest batch (sequences) a graph is captured for; larger decode batches run eagerly.
MAX_GRAPH_BATCH = 256
#: Columns of ``packed`` before the block table: token id, position, write row, visible keys.
HEAD_COLUMNS = 4


def decode_buckets(max_num_seqs: int, max_batch: int | None = None) -> tuple[int, ...]:
    """Batch sizes captured: powers of two below min(max_num_seqs, max_batch), then that bound itself
    (max_batch None: MAX_GRAPH_BATCH)."""
    if isinstance(max_num_seqs, bool) or not isinstance(max_num_seqs, int) or max_num_seqs < 1:
        raise InvalidArgumentError(f"max_num_seqs must be an integer >= 1, got {max_num_seqs!r}",
                                   max_num_seqs=max_num_seqs)
    top = min(max_num_seqs, MAX_GRAPH_BATCH if max_batch is None else max_batch)
    out, b = [], 1
    while b < top:
        out.append(b)
        b *= 2
    out.append(top)
    return tuple(out)


def covers(buckets: tuple[int, ...], max_num_seqs: int) -> bool:
    """Whether graphs captured for ``buckets`` serve an engine of ``max_num_seqs`` sequences as they are: every
    batch it can run up to MAX_GRAPH_BATCH has a bucket (a larger one pads; decode_buckets of a smaller
    max_num_seqs, e.g. 24 after a prewarm for 32, need not be captured again)."""
    return bool(buckets) and buckets[-1] >= min(max_num_seqs, MAX_GRAPH_BATCH)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket >= n (buckets ascending), or None when n exceeds them all (the step runs eagerly)."""
    if n < 1:
        raise InvalidArgumentError(f"a decode batch has at least one sequence, got {n}", batch=n)
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else None


def table_width(max_context: int, kv_blocks: int, block_tokens: int) -> int:
    """Block-table entries a graph reads per row: blocks of the longest context a sequence can have."""
    return max(1, min(kv_blocks, -(-max_context // block_tokens)))


def resolve_cuda_graphs(option, *, device, kernels_ok: bool, tp: int) -> tuple[bool, str | None]:
    """Whether an engine uses CUDA graphs, and if not, why. option: None = where they can run, False = never,
    True = required (BackendUnavailableError where they cannot run)."""
    if option is not None and not isinstance(option, bool):
        raise InvalidArgumentError(f"cuda_graphs must be None (auto), True or False, got {option!r}",
                                   cuda_graphs=repr(option))
    if option is False:
        return False, "cuda_graphs=False"
    reason = None
    if torch.device(device).type != "cuda":
        reason = f"the model runs on {device}; CUDA graphs need a CUDA device"
    elif not kernels_ok:
        reason = ("the engine's CUDA kernels cannot run this model here (built without nvcc, or a dtype or "
                  "head_dim they do not take: engine/attention.py kernels_usable)")
    elif tp > 1:
        reason = f"a {tp}-way tensor-parallel shard runs eagerly (its collectives are not captured)"
    if reason is None:
        return True, None
    if option is True:
        raise BackendUnavailableError(f"cuda_graphs=True but {reason}. Fix: pass cuda_graphs=None (use them where "
                                      "they can run) or False", device=str(device), tp=tp)
    return False, reason


def pack_decode_inputs(host: np.ndarray, decodes, bucket: int, block_tokens: int, rows_per_block: int) -> None:
    """Fill rows 0..bucket-1 of ``host`` (int32 [rows, HEAD_COLUMNS + W]) for a batch of decodes
    (token id, position, block ids of the sequence); rows len(decodes)..bucket-1 become padding (module doc).
    Only the block-table entries a row reads (up to its position's block) are written."""
    n = len(decodes)
    if not 1 <= n <= bucket <= host.shape[0]:
        raise InvalidArgumentError(f"{n} decodes for a bucket of {bucket} in a buffer of {host.shape[0]} rows",
                                   batch=n, bucket=bucket)
    width = host.shape[1] - HEAD_COLUMNS
    T = block_tokens
    toks, pos, wrows = [], [], []
    for i, (tok, p, blocks) in enumerate(decodes):
        nb = p // T + 1
        if nb > width or nb > len(blocks):
            raise InvalidArgumentError(f"position {p} needs {nb} KV blocks; the sequence has {len(blocks)} and a "
                                       f"graph reads at most {width}", position=p, blocks=len(blocks), width=width)
        toks.append(tok)
        pos.append(p)
        wrows.append(blocks[p // T] * rows_per_block + p % T)
        host[i, HEAD_COLUMNS:HEAD_COLUMNS + nb] = blocks[:nb]
    host[:n, 0] = toks
    host[:n, 1] = pos
    host[:n, 2] = wrows
    host[:n, 3] = np.asarray(pos) + 1
    if bucket > n:
        host[n:bucket, :HEAD_COLUMNS] = (0, 0, -1, 1)
        host[n:bucket, HEAD_COLUMNS] = decodes[0][2][0]


def decode_body(model: Model, packed: torch.Tensor, cache: torch.Tensor, layer_offsets, *, max_len: int,
                rows_per_block: int, block_tokens: int, arange: torch.Tensor | None = None,
                row_seq: torch.Tensor | None = None, split_counters: torch.Tensor | None = None) -> torch.Tensor:
    """What a graph runs: float32 logits [b, vocab] of the decode rows in ``packed`` (int32 [b, HEAD_COLUMNS + W],
    as pack_decode_inputs fills it), K/V written to the cache, attention on the kernel path with the split fixed
    for max_len. arange/row_seq: static int64/int32 [b] 0..b-1 (made here when not given). split_counters: the
    attention kernel's (kernels.paged_attention), b x heads zeros or more; None: a zeroed one per layer."""
    b = packed.shape[0]
    if arange is None:
        arange = torch.arange(b, device=packed.device)
    if row_seq is None:
        row_seq = arange.to(torch.int32)
    cfg = model.cfg
    meta = AttnMeta(packed[:, 2].long().contiguous(), [], None, PagedMeta(
        arange, packed[:, HEAD_COLUMNS:].contiguous(), row_seq, packed[:, 3].contiguous(), max_len, rows_per_block,
        block_tokens, cfg.sliding_window or 0, kernels.default_split_tokens(
            b, kernels.split_heads(b, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), max_len),
        split_counters=split_counters))
    hidden = model.forward(packed[:, 0].long(), packed[:, 1].long(), meta, cache, layer_offsets)
    return model.logits(hidden)


def warm_prefill(model: Model, cache: torch.Tensor, layer_offs, block_tokens: int, rows_per_block: int,
                 tokens: int = 16) -> None:
    """One fresh prefill of ``tokens`` tokens through ``model`` on the kernel path, as Engine._run builds it, with
    every K/V write row -1 (write_kv skips it), so ``cache`` is left as it was. Why: a prefill runs kernels the
    decode graphs never touch (SDPA over the prompt), and their first use in a process pays a one-time setup. On an
    H200 the 7b demo's first prewarm-hit TTFT in a process was >= 925 ms, the ones after 14.5 ms
    (bench/engine/README.md); run at prewarm, this moves that cost off the first request, if that is its cause (not
    yet measured on a GPU)."""
    dev = cache.device
    window = model.cfg.sliding_window or 0
    tokens = min(tokens, window) if window else tokens  # a fresh chunk (Engine._run): no longer than the window
    meta = AttnMeta(torch.full((tokens,), -1, dtype=torch.int64, device=dev), [PrefillChunk(0, tokens, 0)], None,
                    paged_meta([], block_tokens, rows_per_block, window, dev))
    hidden = model.forward(torch.zeros(tokens, dtype=torch.long, device=dev), torch.arange(tokens, device=dev), meta,
                           cache, layer_offs)
    model.logits(hidden[-1:])


@dataclass
class GraphStats:
    """What capturing cost, summed over every capture of one DecodeGraphs."""

    #: Buckets captured so far (ascending).
    buckets: tuple[int, ...] = ()
    #: Wall time of the captures (seconds), the warm-up runs before them included.
    capture_s: float = 0.0
    #: Wall time of the warm-up runs alone (seconds).
    warmup_s: float = 0.0
    #: Capture and instantiation time of each bucket's graph (seconds).
    bucket_capture_s: dict[int, float] = field(default_factory=dict)
    #: Growth of torch's reserved CUDA memory over the captures (bytes): the graphs' private pool.
    pool_reserved_bytes: int = 0
    #: Drop of the driver's free device memory over the captures (bytes): the pool plus what CUDA keeps for the
    #: instantiated graphs. Another thread allocating at the same time shows up here too.
    device_bytes: int = 0
    #: The static input buffer on the device and its pinned host copy (bytes each).
    static_input_bytes: int = 0


class DecodeGraphs:
    """The decode-step graphs of one prewarmed model (module doc). Use through capture_decode_graphs/graphs_for."""

    def __init__(self, lm):
        cfg = lm.config
        if lm.closed:
            raise ClosedError(f"model {lm.name!r} was evicted: load it again")
        resolve_cuda_graphs(True, device=lm.device, kernels_ok=kernels_usable(lm.device, lm.dtype, cfg.head_dim),
                            tp=cfg.tp)
        cap = lm.kv_capacity_blocks
        if cap < 1:
            raise InvalidArgumentError(f"model {lm.name!r}: its slot has no room for a KV block after the weights",
                                       model=lm.name)
        self._lm = weakref.ref(lm)
        self.name = lm.name
        self.slot = lm.slot
        self.device = lm.device
        # Unpinned views: they do not block evicting or moving the model (matches() catches a move).
        params = lm.slot.tensors({n: (off, shape, lm.dtype) for n, (off, shape) in lm.layout.items()}, pinned=False)
        if cfg.tie_word_embeddings:
            params["lm_head"] = params["embed"]
        self.model = Model.of(lm, params)
        region, total, _ = lm._kv_region(None)
        row = cfg.num_kv_heads * cfg.head_dim
        self.cache = region.view(-1, row)
        if self.cache.shape[0] >= 2 ** 31:
            raise InvalidArgumentError(f"the KV range has {self.cache.shape[0]} rows; graph inputs are int32",
                                       rows=self.cache.shape[0])
        self.rows_per_block = region.shape[1] // row
        self.block_tokens = lm.block_tokens
        self.layer_offsets = layer_offsets(cfg.num_layers, lm.block_tokens)
        self.width = table_width(lm.max_context, total, lm.block_tokens)
        self.max_len = self.width * lm.block_tokens
        self.buckets: tuple[int, ...] = ()
        self.stats = GraphStats()
        #: Replays per bucket.
        self.replays: dict[int, int] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._logits: dict[int, torch.Tensor] = {}
        with torch.cuda.device(self.device), torch.inference_mode():
            self.packed = torch.zeros(MAX_GRAPH_BATCH, HEAD_COLUMNS + self.width, dtype=torch.int32,
                                      device=self.device)
            self._arange = torch.arange(MAX_GRAPH_BATCH, device=self.device)
            self._row_seq = self._arange.to(torch.int32)
            # The attention kernels' split counters, one set for every layer and bucket: a stream runs its graph's
            # kernels one after another, and each call leaves the counters zero (kernels.paged_attention).
            self._counters = torch.zeros(MAX_GRAPH_BATCH * cfg.num_heads, dtype=torch.int32, device=self.device)
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream(self.device)
            self._copied = torch.cuda.Event()
        self.host = torch.zeros(self.packed.shape, dtype=torch.int32, pin_memory=True)
        self._host = self.host.numpy()
        self.stats.static_input_bytes = self.packed.numel() * 4
        self.closed = False

    @property
    def max_batch(self) -> int:
        return self.buckets[-1] if self.buckets else 0

    # ---- capture -------------------------------------------------------------------------------------------------
    def _body(self, b: int, cache: torch.Tensor) -> torch.Tensor:
        return decode_body(self.model, self.packed[:b], cache, self.layer_offsets, max_len=self.max_len,
                           rows_per_block=self.rows_per_block, block_tokens=self.block_tokens,
                           arange=self._arange[:b], row_seq=self._row_seq[:b], split_counters=self._counters)

    def capture(self, buckets) -> None:
        """Capture the graphs of the buckets not captured yet (largest first)."""
        self._check_open()
        new = sorted({int(b) for b in buckets} - set(self._graphs), reverse=True)
        if not new:
            return
        if new[0] > self.packed.shape[0]:  # the input buffer's rows, sized when these graphs were made
            raise InvalidArgumentError(f"bucket {new[0]} exceeds the {self.packed.shape[0]} rows these graphs were "
                                       f"made for (MAX_GRAPH_BATCH then)", bucket=new[0])
        dev = self.device
        st = self.stats
        t0 = time.perf_counter()
        with torch.cuda.device(dev), torch.inference_mode():
            cur = torch.cuda.current_stream(dev)
            # Warm-up rows: padding only (write nothing, read block 0), over a scratch cache of one block.
            self.packed.zero_()
            self.packed[:, :HEAD_COLUMNS] = torch.tensor([0, 0, -1, 1], dtype=torch.int32, device=dev)
            scratch = torch.zeros(self.rows_per_block, self.cache.shape[1], dtype=self.cache.dtype, device=dev)
            self._stream.wait_stream(cur)
            with torch.cuda.stream(self._stream):
                # every bucket: with lazy module loading a kernel instantiation first used inside a capture
                # (gemv_kernel's per batch size) would load there, which older drivers reject
                for b in new:
                    self._body(b, scratch)
                if not self._graphs:  # the model's first capture (at prewarm, or at activation when the prewarm
                    # captured none, where it adds one 16-token prefill to the activation): its prefill's kernels
                    warm_prefill(self.model, scratch, self.layer_offsets, self.block_tokens, self.rows_per_block)
            self._stream.synchronize()
            del scratch
            st.warmup_s += time.perf_counter() - t0
            free0 = torch.cuda.mem_get_info(dev)[0]
            reserved0 = torch.cuda.memory_reserved(dev)
            # Nothing may synchronize the context while a stream captures (it invalidates the capture): pool drains
            # on other threads wait for _C.cuda_capture_exit, and the garbage collector, whose finalizers close
            # engines (an unmap, so a drain) on this very thread, is off meanwhile.
            gc.collect()
            gc_on = gc.isenabled()
            gc.disable()
            _C.cuda_capture_enter()
            try:
                for b in new:
                    t = time.perf_counter()
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.stream(self._stream):
                        g.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                        try:
                            out = self._body(b, self.cache)
                        finally:
                            g.capture_end()
                    self._graphs[b] = g
                    self._logits[b] = out
                    st.bucket_capture_s[b] = time.perf_counter() - t
            finally:
                _C.cuda_capture_exit()
                if gc_on:
                    gc.enable()
            cur.wait_stream(self._stream)
            torch.cuda.synchronize(dev)
            st.pool_reserved_bytes += torch.cuda.memory_reserved(dev) - reserved0
            st.device_bytes += free0 - torch.cuda.mem_get_info(dev)[0]
        self.buckets = tuple(sorted(self._graphs))
        st.buckets = self.buckets
        st.capture_s += time.perf_counter() - t0

    # ---- use -----------------------------------------------------------------------------------------------------
    def matches(self, model: Model, kv) -> str | None:
        """None when these graphs are right for an engine's model and KV cache, else why not."""
        if self.closed:
            return "the graphs were released"
        lm = self._lm()
        if lm is None or lm.closed or lm.slot is not self.slot:
            return "the model was evicted or reloaded since the capture"
        if (kv.rows.data_ptr() != self.cache.data_ptr() or kv.rows.shape[1] != self.cache.shape[1]
                or kv.rows.dtype != self.cache.dtype or kv.rows_per_block != self.rows_per_block
                or kv.block_tokens != self.block_tokens or kv.rows.shape[0] > self.cache.shape[0]):
            return "the engine's KV cache is not the range the graphs were captured over"
        for flag in ("fused_kernels", "gemv", "gemv_prologues", "rope_writes_kv"):
            if getattr(model, flag) != getattr(self.model, flag):
                return f"{flag} is {getattr(model, flag)}, the graphs were captured with {getattr(self.model, flag)}"
        mine = self.model.params
        for name, t in model.params.items():
            if name not in mine or mine[name].data_ptr() != t.data_ptr() or mine[name].shape != t.shape:
                return f"weight {name} is not where it was at capture"
        return None

    def run(self, decodes) -> torch.Tensor:
        """Replay the graph of the smallest bucket that holds the decodes (token id, position, block ids);
        returns their float32 logits [len(decodes), vocab], a view of the graph's output, valid until the next
        replay."""
        return self.output(self.launch(decodes))[:len(decodes)]

    def launch(self, decodes, tokens: torch.Tensor | None = None) -> int:
        """run() without taking the logits: returns the bucket replayed (``output``). tokens: the rows' token ids
        as a device tensor, written over those of ``decodes`` on the device after the upload (a step's argmax not
        yet read back: engine/lookahead.py)."""
        self._check_open()
        n = len(decodes)
        b = bucket_for(n, self.buckets) if self.buckets else None
        if b is None:
            raise InvalidArgumentError(f"a batch of {n} exceeds the largest captured bucket ({self.max_batch}): run "
                                       "it eagerly", batch=n, max_bucket=self.max_batch)
        self._copied.synchronize()  # the previous step's upload has read the host buffer
        pack_decode_inputs(self._host, decodes, b, self.block_tokens, self.rows_per_block)
        with torch.cuda.device(self.device), torch.inference_mode():
            self.packed[:b].copy_(self.host[:b], non_blocking=True)
            self._copied.record()
            if tokens is not None:  # in stream order: after the upload, before the replay
                self.packed[:n, 0].copy_(tokens)
            self._graphs[b].replay()
        self.replays[b] = self.replays.get(b, 0) + 1
        return b

    def output(self, bucket: int) -> torch.Tensor:
        """The float32 logits [bucket, vocab] the bucket's graph writes (rows past the batch are padding)."""
        return self._logits[bucket]

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"the decode graphs of {self.name!r} were released: capture them again")

    def close(self) -> None:
        """Drop the graphs, their pool and every view over the slot (idempotent)."""
        self.closed = True
        self._graphs = {}
        self._logits = {}
        self.model = None
        self.cache = None
        self.buckets = ()

    def __repr__(self) -> str:
        return (f"DecodeGraphs({self.name!r}, buckets {list(self.buckets)}, "
                f"{self.stats.capture_s * 1e3:.1f} ms, {self.stats.pool_reserved_bytes >> 20} MiB pool)")


#: Graphs of prewarmed models, by model (weakly: an evicted, dropped LoadedModel takes its graphs with it).
_REGISTRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def graphs_for(lm) -> DecodeGraphs | None:
    """The graphs captured for this model, if any are still usable."""
    g = _REGISTRY.get(lm)
    if g is not None and (g.closed or lm.closed or lm.slot is not g.slot):
        release_decode_graphs(lm)
        return None
    return g


def capture_decode_graphs(lm, max_num_seqs: int) -> DecodeGraphs:
    """The prewarm hook: capture (or extend) the decode graphs of a loaded model for batches up to max_num_seqs,
    so that Engine(lm) starts with them. Raises BackendUnavailableError where graphs cannot run (CPU, no kernels,
    tp > 1). Costs GraphStats (returned object's .stats)."""
    buckets = decode_buckets(max_num_seqs)
    g = graphs_for(lm)
    if g is None:
        g = DecodeGraphs(lm)
        _REGISTRY[lm] = g
    try:
        g.capture(buckets)
    except BaseException:
        release_decode_graphs(lm)  # a half-captured set is not kept
        raise
    return g


def prewarm_decode_graphs(lm, max_num_seqs: int, cuda_graphs: bool | None = None) -> DecodeGraphs | None:
    """The worker's prewarm hook, with Engine's option: capture where graphs can run (None), never (False), or
    required (True: raises where they cannot). Returns None where they are off; in the auto mode a failed capture
    is logged and returns None (the engine then runs eagerly, or tries again at activation)."""
    use, _ = resolve_cuda_graphs(cuda_graphs, device=lm.device, tp=lm.config.tp,
                                 kernels_ok=kernels_usable(lm.device, lm.dtype, lm.config.head_dim))
    if not use:
        return None
    try:
        return capture_decode_graphs(lm, max_num_seqs)
    except Exception as e:
        if cuda_graphs:
            raise
        log.warning("decode graphs of %r not captured at prewarm: %s: %s", lm.name, type(e).__name__, e)
        return None


def release_decode_graphs(lm) -> bool:
    """Drop a model's graphs (at eviction, before or after LoadedModel.close); False if it had none."""
    g = _REGISTRY.pop(lm, None)
    if g is None:
        return False
    g.close()
    return True


def activate_decode_graphs(lm, model: Model, kv, max_num_seqs: int) -> tuple[DecodeGraphs, float]:
    """For Engine activation: the model's graphs, captured now for what the prewarm did not cover (or again if the
    weights moved). Returns (graphs, seconds spent capturing now: 0.0 when the prewarm had captured them all)."""
    g = graphs_for(lm)
    if g is not None and g.matches(model, kv) is not None:
        release_decode_graphs(lm)
        g = None
    if g is not None and covers(g.buckets, max_num_seqs):
        return g, 0.0
    t0 = time.perf_counter()
    g = capture_decode_graphs(lm, max_num_seqs)
    why = g.matches(model, kv)
    if why is not None:
        release_decode_graphs(lm)
        raise InvalidArgumentError(f"decode graphs of {lm.name!r} do not fit its engine: {why}", model=lm.name)
    return g, time.perf_counter() - t0
