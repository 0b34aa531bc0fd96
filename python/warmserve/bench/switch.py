"""`warmserve bench switch`: what zero-copy switching buys, measured side by side in one run.

1. activation_vs_cold_load. A prewarmed model's weights already sit in their slot. Activation makes them a
   serving instance: retag the slot, map the first KV pages after the weights, and create the tensor views
   (every weight and the KV cache). The cold alternative loads the same weights from a safetensors file in the
   page cache into fresh pages of a new slot (pipelined load), then does the same mapping and views. Sizes 0.25,
   1 and 4 GiB of weights by default.
2. move_vs_memcpy. Moving 1 GiB of pages from one slot to another vs memcpy of 1 GiB between two mapped slots.
3. load_vs_memcpy_bandwidth. Pipelined load of 1 GiB from a host buffer into unmapped pages vs one memcpy of the
   same buffer into mapped pages (the load from a file in the page cache is reported beside it).
4. Per-GiB milliseconds of map, unmap, move and the first touch of every 4 KiB after a map.
5. cache_vs_pinned_bandwidth (issue 13, goal >= 0.8): loading 1 GiB from the host checkpoint cache
   (memory/host_cache.py, an entry in /dev/shm) into unmapped slot pages vs the plain copy of 1 GiB from pinned
   host memory into mapped pages (GPU: a pinned tensor's host-to-device copy; host: memcpy), and the cold fill
   (file in the page cache -> cache entry -> slot, pipelined) beside them.
6. model_load (with --checkpoint DIR, part "model"): engine.load_model of a real checkpoint folder (e.g. the
   `warmserve models demo --size 1b` one) straight from its files (page cache) vs through the host checkpoint
   cache (the fill, then hits), in GB/s of weights.

Medians over repeats; how many each figure had is in its part's "repeats" (activation takes at least 15, cold
loads, fills and model loads at most 3, moves twice --repeats: both directions). The checkpoint is random bf16
weights in a Llama-like layout (hidden 2048, 9 tensors per layer), as many layers as the size asks for.
"""

from __future__ import annotations

import ctypes
import glob
import json
import math
import os
import platform
import shutil
import statistics
import struct
import tempfile
import time

import numpy as np

from warmserve.bench.switch_args import DeviceGiven, device_index
from warmserve.bench.switch_kv import kv_give_back, page_sizes
from warmserve.owned_dirs import owned_prefix, owned_temp_dir, sweep_dead_owners
from warmserve.bench.self_check import check

GiB = 1 << 30
MiB = 1 << 20
#: KV pages an activation maps right away (the instance's first KV blocks).
KV_FIRST_BYTES = 64 * MiB
#: Virtual room reserved for the KV cache after the weights (nothing is mapped until used).
KV_RESERVE_BYTES = 2 * GiB
HIDDEN, INTER, KV_DIM, VOCAB = 2048, 5632, 256, 32000
#: The run's folders, named by their owner (owned_dirs): the host cache's under --cache-root, the files' under --dir
CACHE_DIR_PREFIX, WORK_DIR_PREFIX = "warmserve-bench-cache-", "warmserve-bench-switch-"


def add_arguments(p) -> None:
    p.add_argument("--sizes-gib", default="0.25,1,4", help="weight sizes for activation vs cold load (GiB)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per measurement (median reported)")
    p.add_argument("--backend", default="host", choices=["host", "cuda"],
                   help="the page pool measured: host (memfd and mmap) or cuda (cuMemMap on --device)")
    p.add_argument("--device", type=device_index, default=0, action=DeviceGiven, metavar="N|cuda:N",
                   help="the GPU of --backend cuda (default 0)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="write a PNG of activation vs cold load here")
    p.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary folder)")
    p.add_argument("--parts", default="activation,move,load,cache",
                   help="comma-separated subset of: activation, move, load, cache, model (needs --checkpoint), kv")
    p.add_argument("--page-mib", default="2", help="comma-separated page sizes (MiB, powers of two 2-1024) for the "
                   "move and kv parts' per-GiB figures besides the pool's 2 MiB (e.g. 8,32)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder for the model part")
    p.add_argument("--cache-gib", type=float, default=1.0,
                   help="GiB loaded through the host checkpoint cache (at least one 2 MiB page)")
    p.add_argument("--cache-root", default="/dev/shm",
                   help="tmpfs under which the cache's folder is made (falls back to --dir when too small)")
    p.add_argument("--cache-threads", type=int, default=None,
                   help="loader threads (= streams on cuda) of cache loads (default: 4 on cuda, 2 on host)")


# ---------------------------------------------------------------- checkpoint
def layout_for(nbytes: int) -> list[tuple[str, tuple[int, ...]]]:
    """Llama-like bf16 tensors adding up to about nbytes: embeddings, then whole layers."""
    layer = [("self_attn.q_proj.weight", (HIDDEN, HIDDEN)), ("self_attn.k_proj.weight", (KV_DIM, HIDDEN)),
             ("self_attn.v_proj.weight", (KV_DIM, HIDDEN)), ("self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
             ("mlp.gate_proj.weight", (INTER, HIDDEN)), ("mlp.up_proj.weight", (INTER, HIDDEN)),
             ("mlp.down_proj.weight", (HIDDEN, INTER)), ("input_layernorm.weight", (HIDDEN,)),
             ("post_attention_layernorm.weight", (HIDDEN,))]
    per_layer = sum(2 * math.prod(s) for _, s in layer)
    embed = 2 * VOCAB * HIDDEN
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN)), ("model.norm.weight", (HIDDEN,))]
    for i in range(max(1, round((nbytes - embed) / per_layer))):
        out += [(f"model.layers.{i}.{n}", s) for n, s in layer]
    return out


def smallest_gib() -> float:
    """The size of the smallest checkpoint ``layout_for`` writes (the embeddings and one layer), in GiB."""
    return sum(2 * math.prod(s) for _, s in layout_for(0)) / GiB


def write_checkpoint(path: str, nbytes: int) -> None:
    """A safetensors file of random bf16 weights (written in 64 MiB blocks of one random pattern)."""
    header, off = {}, 0
    for name, shape in layout_for(nbytes):
        n = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    block = np.random.default_rng(0).integers(0, 256, 64 * MiB, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        left = off
        while left:
            k = min(left, len(block))
            f.write(block[:k])
            left -= k


def read_layout(path: str):
    """(data start, {name: (byte offset in the data, shape, dtype)}, data bytes) from a safetensors header."""
    import torch

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    layout = {name: (m["data_offsets"][0], tuple(m["shape"]), torch.bfloat16)
              for name, m in header.items() if name != "__metadata__"}
    end = max(m["data_offsets"][1] for name, m in header.items() if name != "__metadata__")
    return 8 + n, layout, end


def warm_page_cache(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(64 * MiB):
            pass


# ---------------------------------------------------------------- timing helpers
class Device:
    """What differs between host and GPU: waiting for the device and a plain copy between two slots."""

    def __init__(self, backend: str, device: int):
        import torch

        self.backend = backend
        self.torch = torch
        self.cuda = backend == "cuda"
        if self.cuda:
            torch.cuda.set_device(device)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def memcpy(self, dst_addr_or_t, src_addr_or_t, nbytes: int) -> None:
        if self.cuda:
            dst_addr_or_t.copy_(src_addr_or_t)
        else:
            ctypes.memmove(dst_addr_or_t, src_addr_or_t, nbytes)


def timed(fn, repeats: int, dev: Device, setup=None, teardown=None) -> list[float]:
    out = []
    for _ in range(repeats):
        if setup:
            setup()
        dev.sync()
        t = time.perf_counter()
        fn()
        dev.sync()
        out.append(time.perf_counter() - t)
        if teardown:
            teardown()
    return out


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def pages(nbytes: int, page_bytes: int) -> int:
    return -(-nbytes // page_bytes)


# ---------------------------------------------------------------- the measurements
def activation_vs_cold(size_gib: float, args, dev: Device, workdir: str) -> dict:
    from warmserve.memory import PagePool

    import torch

    path = os.path.join(workdir, f"weights-{size_gib:g}gib.safetensors")
    write_checkpoint(path, int(size_gib * GiB))
    warm_page_cache(path)
    data_start, layout, nbytes = read_layout(path)
    page = 2 * MiB
    w_pages, kv_first = pages(nbytes, page), pages(KV_FIRST_BYTES, page)
    kv_off = w_pages * page
    kv_shape = (KV_RESERVE_BYTES // (2 * HIDDEN), HIDDEN)
    with PagePool((w_pages + kv_first) * page, backend=args.backend, device=args.device) as pool:
        prewarm = pool.create_slot(kv_off + KV_RESERVE_BYTES, "prewarm:model")
        prewarm.load([(path, data_start, 0, nbytes)]).wait()
        views = {}
        parts = {"map": [], "views": []}

        def activate(slot):
            t0 = time.perf_counter()
            slot.tag = "instance:model"
            slot.map(w_pages, kv_first)
            t1 = time.perf_counter()
            views["w"] = slot.tensors(layout)
            views["kv"] = slot.tensor(kv_off, kv_shape, torch.bfloat16, pinned=False)
            parts["map"].append(t1 - t0)
            parts["views"].append(time.perf_counter() - t1)

        def deactivate(slot):
            views.clear()
            slot.unmap(w_pages, kv_first)
            slot.tag = "prewarm:model"

        # Activation is cheap: more repeats, so the median is not one scheduler hiccup on a busy machine.
        n_act, n_cold = max(15, args.repeats), max(2, min(args.repeats, 3))
        act = timed(lambda: activate(prewarm), n_act, dev, teardown=lambda: deactivate(prewarm))
        act_map, act_views = med_ms(parts["map"]), med_ms(parts["views"])
        # One check that the views really are the file's bytes (outside the timing).
        activate(prewarm)
        name = next(iter(layout))
        off, shape, _ = layout[name]
        with open(path, "rb") as f:
            f.seek(data_start + off)
            want = f.read(4096)
        got = views["w"][name].reshape(-1)[:2048].cpu().view(torch.uint8).numpy().tobytes()
        check(got == want, "activated weights differ from the checkpoint")
        deactivate(prewarm)
        prewarm.close()

        slots = {}

        def cold():
            s = pool.create_slot(kv_off + KV_RESERVE_BYTES, "instance:model")
            s.load([(path, data_start, 0, nbytes)]).wait()
            activate(s)
            slots["s"] = s

        def drop():
            views.clear()
            slots.pop("s").close()

        cold_s = timed(cold, n_cold, dev, teardown=drop)
    os.unlink(path)
    a, c = med_ms(act), med_ms(cold_s)
    # the size measured, not the size asked: whole layers, and at least the embeddings and one layer (found in
    # review: --sizes-gib 0.02 measured 0.204 GiB and recorded 0.02); the asked size beside it
    return {"size_gib": round(nbytes / GiB, 4), "asked_size_gib": size_gib, "weights_bytes": nbytes,
            "tensors": len(layout), "activation_ms": a,
            "activation_map_kv_ms": act_map, "activation_views_ms": act_views, "cold_load_ms": c, "ratio": c / a,
            "repeats": {"activation": n_act, "cold_load": n_cold}}


def move_and_primitives(args, dev: Device) -> dict:
    """Parts 2 and 4 at the pool's 2 MiB pages, then again at each larger --page-mib (by_page_bytes): on a GPU
    every page costs driver calls, so the per-GiB figures show what page size a millisecond target needs."""
    sizes = page_sizes(args.page_mib)
    out = _move_and_primitives(args, dev, 2 * MiB)
    if len(sizes) > 1:
        out["by_page_bytes"] = {str(p): out["per_gib"] if p == 2 * MiB else
                                _move_and_primitives(args, dev, p)["per_gib"] for p in sizes}
    return out


def _move_and_primitives(args, dev: Device, page_bytes: int) -> dict:
    from warmserve.memory import PagePool

    import torch

    n = GiB // page_bytes
    out = {}
    with PagePool(2 * GiB, backend=args.backend, device=args.device, page_bytes=page_bytes) as pool:
        a = pool.create_slot(GiB, "a")
        b = pool.create_slot(GiB, "b")
        a.map(0, n)
        b.map(0, n)
        if dev.cuda:
            ta, tb = a.tensor(0, (GiB,), torch.uint8), b.tensor(0, (GiB,), torch.uint8)
            ta.fill_(1)
            copy = timed(lambda: dev.memcpy(tb, ta, GiB), args.repeats, dev)
            del ta, tb
        else:
            ctypes.memset(a.base_address, 1, GiB)
            ctypes.memset(b.base_address, 2, GiB)
            copy = timed(lambda: dev.memcpy(b.base_address, a.base_address, GiB), args.repeats, dev)
        b.unmap(0, n)
        ids = a.physical_pages(0, n)
        moves = []
        for _ in range(args.repeats):  # back and forth, both directions timed
            moves += timed(lambda: a.move_pages(0, n, b, 0), 1, dev)
            moves += timed(lambda: b.move_pages(0, n, a, 0), 1, dev)
        check(a.physical_pages(0, n) == ids, "the pages moved back and forth are not the ones the slot had")
        out["move_vs_memcpy"] = {"bytes": GiB, "move_ms": med_ms(moves), "memcpy_ms": med_ms(copy),
                                 "ratio": med_ms(copy) / med_ms(moves),
                                 "repeats": {"move": len(moves), "memcpy": len(copy)}}
        a.unmap(0, n)
        per_gib = {"map_ms": med_ms(timed(lambda: a.map(0, n), args.repeats, dev, teardown=lambda: a.unmap(0, n)))}
        per_gib["unmap_ms"] = med_ms(timed(lambda: a.unmap(0, n), args.repeats, dev, setup=lambda: a.map(0, n)))
        per_gib["move_ms"] = out["move_vs_memcpy"]["move_ms"]
        if not dev.cuda:  # page faults are a host matter: on a GPU the page tables are filled by cuMemMap
            a.map(0, n)
            t = a.tensor(0, (GiB // 4096, 4096), torch.uint8)

            def touch():
                t[:, 0] = 3

            first = timed(touch, 1, dev)  # pages came from the pool: the first touch after a map
            again = timed(touch, args.repeats, dev)
            del t
            a.unmap(0, n)
            per_gib["first_touch_ms"] = med_ms(first)
            per_gib["touch_again_ms"] = med_ms(again)
        out["per_gib"] = per_gib
        out["per_gib_repeats"] = {"map": args.repeats, "unmap": args.repeats, "move": len(moves)}
        if not dev.cuda:
            out["per_gib_repeats"].update(first_touch=len(first), touch_again=len(again))
    return out


def load_bandwidth(args, dev: Device, workdir: str) -> dict:
    from warmserve.memory import PagePool

    import torch

    n = GiB // (2 * MiB)
    src = np.random.default_rng(1).integers(0, 256, GiB, dtype=np.uint8)
    path = os.path.join(workdir, "blob.bin")
    src.tofile(path)
    warm_page_cache(path)
    with PagePool(GiB, backend=args.backend, device=args.device) as pool:
        s = pool.create_slot(GiB, "load")
        s.map(0, n)
        if dev.cuda:
            t, h = s.tensor(0, (GiB,), torch.uint8), torch.from_numpy(src)
            copy = timed(lambda: t.copy_(h), args.repeats, dev)
            del t
        else:
            copy = timed(lambda: ctypes.memmove(s.base_address, src.ctypes.data, GiB), args.repeats, dev)
        s.unmap(0, n)
        unmap = lambda: s.unmap(0, n)  # noqa: E731
        buf = timed(lambda: s.load([(src, 0, 0, GiB)]).wait(), args.repeats, dev, teardown=unmap)
        fil = timed(lambda: s.load([(path, 0, 0, GiB)]).wait(), args.repeats, dev, teardown=unmap)
        s.load([(path, 0, 0, GiB)]).wait()
        tail = s.tensor(GiB - 4096, (4096,), torch.uint8).cpu().numpy()
        check(bool((tail == src[-4096:]).all()), "loaded bytes differ")
    os.unlink(path)
    gbs = lambda xs: GiB / statistics.median(xs) / 1e9  # noqa: E731
    return {"bytes": GiB, "memcpy_gbps": gbs(copy), "load_buffer_gbps": gbs(buf), "load_file_gbps": gbs(fil),
            "ratio": gbs(buf) / gbs(copy), "ratio_file": gbs(fil) / gbs(copy),
            "repeats": {"memcpy": len(copy), "load_buffer": len(buf), "load_file": len(fil)}}


def cache_threads(args, dev: Device) -> int:
    """--cache-threads, or its default when not given (None: check_args refuses 0, which once meant the default)."""
    if args.cache_threads is not None:
        return args.cache_threads
    return 4 if dev.cuda else 2


def cache_base(args, need: int, workdir: str) -> str:
    """--cache-root (``workdir`` where it has no room for ``need`` bytes), swept first: found in review, a SIGKILLed
    run (the OOM killer, a CI timeout) left its folder, up to twice --cache-gib of RAM in /dev/shm, for good."""
    sweep_dead_owners(args.cache_root, CACHE_DIR_PREFIX)
    return args.cache_root if shutil.disk_usage(args.cache_root).free > need else workdir


def cache_bandwidth(args, dev: Device, workdir: str) -> dict:
    """Load from the host checkpoint cache vs the plain pinned copy, same bytes, same run."""
    from warmserve.memory import PagePool
    from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

    import torch

    nbytes = int(args.cache_gib * GiB) // (2 * MiB) * (2 * MiB)
    n = nbytes // (2 * MiB)
    src = np.random.default_rng(2).integers(0, 256, nbytes, dtype=np.uint8)
    path = os.path.join(workdir, "cached.bin")
    src.tofile(path)
    warm_page_cache(path)
    base = cache_base(args, 2 * nbytes + GiB, workdir)
    threads = cache_threads(args, dev)
    root = None
    # The folder is made inside the try: whatever fails after it (a bad config, a load) removes it (found in
    # review: a HostCacheConfig error left a warmserve-bench-cache-* folder in /dev/shm).
    try:
        root = tempfile.mkdtemp(prefix=owned_prefix(CACHE_DIR_PREFIX), dir=base)
        cfg = HostCacheConfig(root=root, capacity_bytes=2 * nbytes, threads=threads)
        with PagePool(nbytes, backend=args.backend, device=args.device) as pool, HostCheckpointCache(cfg) as cache:
            s = pool.create_slot(nbytes, "cache")
            unmap = lambda: s.unmap(0, n)  # noqa: E731
            sources = [(path, 0, 0, nbytes)]

            def drop_entry():
                unmap()
                cache.close()
                os.unlink(cache.entry_path(path))

            fill = timed(lambda: cache.load(s, sources).wait(), max(1, min(args.repeats, 3)), dev, teardown=drop_entry)
            cache.load(s, sources).wait()  # the entry every hit below maps
            unmap()
            cache.close()  # as in a fresh worker: the first hit maps the entry (and on cuda registers it)
            t0 = time.perf_counter()
            cache.load(s, sources).wait()
            first_hit_s = time.perf_counter() - t0
            unmap()
            if dev.cuda:  # the reference: pinned host memory -> mapped device pages, one copy
                h = torch.from_numpy(src).pin_memory()
            copy, hit = [], []
            # Interleaved (copy, load, copy, load, ...): a busy machine slows both alike, the ratio stays fair.
            for _ in range(args.repeats):
                s.map(0, n)
                if dev.cuda:
                    t = s.tensor(0, (nbytes,), torch.uint8)
                    copy += timed(lambda: t.copy_(h, non_blocking=True), 1, dev)
                    del t
                else:
                    copy += timed(lambda: ctypes.memmove(s.base_address, src.ctypes.data, nbytes), 1, dev)
                unmap()
                hit += timed(lambda: cache.load(s, sources).wait(), 1, dev, teardown=unmap)
            if dev.cuda:
                del h
            cache.load(s, sources).wait()
            tail = s.tensor(nbytes - 4096, (4096,), torch.uint8).cpu().numpy()
            check(bool((tail == src[-4096:]).all()), "bytes loaded from the cache differ")
            stats = cache.stats()
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        os.unlink(path)
    gbs = lambda xs: nbytes / statistics.median(xs) / 1e9  # noqa: E731
    return {"bytes": nbytes, "cache_root": base, "threads": threads,
            "pinned_copy_gbps" if dev.cuda else "memcpy_gbps": gbs(copy), "load_from_cache_gbps": gbs(hit),
            "fill_from_file_gbps": gbs(fill), "first_hit_in_process_ms": first_hit_s * 1e3,
            "ratio": gbs(hit) / gbs(copy), "ratio_fill": gbs(fill) / gbs(copy),
            "hits": stats["hits"], "fills": stats["fills"], "bypassed": stats["bypassed"],
            "repeats": {"fill_from_file": len(fill), "first_hit_in_process": 1, "copy": len(copy),
                        "load_from_cache": len(hit)}}


def model_load(args, dev: Device, workdir: str) -> dict:
    """engine.load_model of --checkpoint: from its files vs through the host checkpoint cache (fill, hits)."""
    from warmserve.engine import load_model
    from warmserve.memory import PagePool
    from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

    files = sorted(glob.glob(os.path.join(args.checkpoint, "*.safetensors")))
    file_bytes = sum(os.path.getsize(f) for f in files)
    for f in files:
        warm_page_cache(f)
    base = cache_base(args, file_bytes + GiB, workdir)
    root = None
    out = {"checkpoint": os.path.basename(os.path.normpath(args.checkpoint)), "files": len(files), "cache_root": base}
    # The weights are the files' tensors (same dtype): their bytes, page-rounded, plus room for the 256-byte
    # alignment of each tensor group.
    pool_bytes = -(-file_bytes // (2 * MiB)) * (2 * MiB) + 64 * MiB
    try:  # the folder made inside the try, as in cache_bandwidth
        root = tempfile.mkdtemp(prefix=owned_prefix(CACHE_DIR_PREFIX), dir=base)
        cfg = HostCacheConfig(root=root, capacity_bytes=file_bytes + GiB, threads=cache_threads(args, dev))
        with PagePool(pool_bytes, backend=args.backend, device=args.device) as pool, \
                HostCheckpointCache(cfg) as cache:
            def once(**kw):
                dev.sync()
                t = time.perf_counter()
                lm = load_model(args.checkpoint, pool, kv_reserve_bytes=0, **kw).wait()
                dev.sync()
                dt = time.perf_counter() - t
                out["weight_bytes"], out["dtype"] = lm.weight_bytes, str(lm.dtype).replace("torch.", "")
                lm.close()
                return dt

            plain = [once() for _ in range(max(1, min(args.repeats, 3)))]
            fill = [once(host_cache=cache)]
            hits = [once(host_cache=cache) for _ in range(max(1, min(args.repeats, 3)))]
            st = cache.stats()
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    gbs = lambda xs: out["weight_bytes"] / statistics.median(xs) / 1e9  # noqa: E731
    out.update(plain_gbps=gbs(plain), fill_gbps=gbs(fill), hit_gbps=gbs(hits), plain_s=plain, fill_s=fill,
               hit_s=hits, cache_hits=st["hits"], cache_fills=st["fills"], cache_bypassed=st["bypassed"],
               repeats={"plain": len(plain), "fill": len(fill), "hit": len(hits)})
    return out


# ---------------------------------------------------------------- report
def machine(args) -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "backend": args.backend}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    if args.backend == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(args.device)
    return info


def main(args) -> int:
    from warmserve.bench.exit_signals import exit_on_signals

    # SIGTERM and SIGHUP end the run through its clean-up (found in review: a SIGTERM left the temporary folder,
    # with its checkpoint or blob of hundreds of MiB, and the warmserve-bench-cache-* folder in --cache-root)
    with exit_on_signals():
        return _main(args)


def _main(args) -> int:
    import sys

    from warmserve.bench import switch_print as say
    from warmserve.bench.switch_args import check_args
    from warmserve.memory.pool import host_memory_room
    from warmserve.outputs import write_json_atomic

    parts, sizes = check_args(args)  # every flag, before the first part runs (sizes in GiB)
    dev = Device(args.backend, args.device)
    room = host_memory_room()[0]  # MemAvailable, or less under a memory cgroup limit
    avail = math.inf if room is None else room
    res = {"machine": machine(args), "repeats": args.repeats, "activation_vs_cold_load": [], "skipped": []}
    # Each part's lines as soon as it is done (found in review: nothing showed until every part had run).
    say.header(res, args)
    with owned_temp_dir(WORK_DIR_PREFIX, args.dir) as workdir:  # a SIGKILLed run's (GiBs) swept first
        for size in sizes if "activation" in parts else []:
            need = 2 * size * GiB + KV_FIRST_BYTES + GiB  # file in the page cache + pool, with slack
            if args.backend == "host" and need > avail:
                res["skipped"].append(f"{size:g} GiB: needs about {need / GiB:.1f} GiB of host memory, "
                                      f"{avail / GiB:.1f} GiB available")
                say.skipped(res["skipped"][-1])
                continue
            res["activation_vs_cold_load"].append(activation_vs_cold(size, args, dev, workdir))
            if len(res["activation_vs_cold_load"]) == 1:
                say.activation_header()
            say.activation_row(res["activation_vs_cold_load"][-1])
            got = res["activation_vs_cold_load"][-1]["size_gib"]
            if abs(got - size) > 0.05 * size:  # rounding to whole layers moves a size by up to half a layer (44 MB)
                print(f"  note: --sizes-gib {size:g} measured {got:.3g} GiB (whole layers; the smallest checkpoint "
                      f"is the embeddings and one layer, {smallest_gib():.3g} GiB)", flush=True)
        if "activation" in parts and not res["activation_vs_cold_load"]:
            # found in review: an empty result, exit 0, as if measured; nothing else runs and nothing is written
            unwritten = [f"{f} {p} not {w}" for f, p, w in (("--json", args.json, "written"),
                                                              ("--plot", args.plot, "drawn")) if p]
            print(f"warmserve bench switch: no size of --sizes-gib {args.sizes_gib} was measured (each skipped "
                  f"above): give a smaller size" + "".join(f"; {u}" for u in unwritten), file=sys.stderr)
            return 1
        if "move" in parts:
            res.update(move_and_primitives(args, dev))
            say.move(res)
        if "load" in parts:
            res["load_vs_memcpy_bandwidth"] = load_bandwidth(args, dev, workdir)
            say.load(res["load_vs_memcpy_bandwidth"])
        if "cache" in parts:
            res["cache_vs_pinned_bandwidth"] = cache_bandwidth(args, dev, workdir)
            say.cache(res["cache_vs_pinned_bandwidth"], dev.cuda)
        if "model" in parts:
            res["model_load"] = model_load(args, dev, workdir)
            say.model(res["model_load"])
        if "kv" in parts:
            res["kv_give_back"] = kv_give_back(args, dev, timed, med_ms)
            for r in res["kv_give_back"].values():
                r["repeats"] = {"grow": args.repeats, "give_back": args.repeats}
            say.kv(res["kv_give_back"])
    res["goals"] = {"activation_vs_cold_load@1GiB": 100, "move_vs_memcpy": 30, "load_vs_memcpy_bandwidth": 0.8,
                    "cache_vs_pinned_bandwidth": 0.8}
    if args.json:
        write_json_atomic(args.json, res, indent=2)
    if args.plot:  # check_args refused --plot without the activation part, and _main a run with no size measured
        from warmserve.bench.switch_plot import plot

        plot(res, args.plot)
    return 0
