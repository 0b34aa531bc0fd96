"""How long things take on a simulated GPU: prefill, decode steps, loading weights, starting an engine.

Defaults are the paper's latency model (prefill 35/70/100 ms, decode 15/20/30 ms per step for Llama-2
7B/13B/70B) on an H100 80 GB with 32 GB/s host-to-device bandwidth. A measured profile (JSON, written by the
calibration benchmark) overrides any part of it. Profile schema, version 1 (every key optional except
``schema``; sizes in bytes, times in seconds):

    {
      "schema": "warmserve.sim.profile/1",
      "gpu": {"name": "H100-80GB", "memory_bytes": 80e9, "pool_fraction": 0.9, "h2d_bytes_per_s": 32e9},
      "engine_start_s": 6.0,          # start an engine from scratch: process, imports, CUDA context, profiling
      "tp_init_s": 2.0,               # extra for building tensor-parallel communicators (tp > 1, cold engine)
      "activation_s": 0.1,            # turn a fully prewarmed replica into a serving instance
      "kv_map_s_per_gib": 0.02,       # map KV-cache pages (0.2 s per 10 GB, PAPER.md section 7)
      "models": {
        "<model name or size key, e.g. llama2-7b>": {
          "weight_bytes": 13.5e9, "tp": 1, "kv_bytes_per_token": 524288,
          "prefill_s": {"base_s": 0.0035, "per_token_s": 3.08e-5},    # linear in prompt tokens of the batch
          "decode_step_s": {"base_s": 0.015, "per_seq_s": 0.0},     # linear in running sequences
          # or measured tables, interpolated linearly (extrapolated from the last two points, never downward):
          "prefill_table": [[tokens, seconds], ...], "decode_table": [[batch, seconds], ...]
        }
      }
    }

A served model is matched to a profile entry by its own name first, then by its ``size`` key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np

from warmserve.errors import InvalidArgumentError

SCHEMA = "warmserve.sim.profile/1"
GB = 1e9


@dataclass(frozen=True)
class GpuType:
    #: marketing name, for reports
    name: str = "H100-80GB"
    #: device memory, bytes
    memory_bytes: float = 80 * GB
    #: share of memory the page pool takes at worker start (the rest: CUDA context, activations)
    pool_fraction: float = 0.9
    #: host-to-device copy bandwidth per GPU, bytes/s
    h2d_bytes_per_s: float = 32 * GB
    #: compute time relative to an H100 (prefill and decode times are multiplied by it)
    compute_scale: float = 1.0

    @property
    def pool_bytes(self) -> int:
        return int(self.memory_bytes * self.pool_fraction)


GPU_TYPES = {
    "H100-80GB": GpuType(),
    # A100: PCIe gen4 x16, and about 1.6x the H100's prefill/decode time for these models
    "A100-80GB": GpuType("A100-80GB", 80 * GB, 0.9, 25 * GB, 1.6),
}


@dataclass(frozen=True)
class ModelCost:
    """Latency and size of one model on the reference GPU (H100)."""

    #: bytes of all weights together
    weight_bytes: float
    #: tensor-parallel degree
    tp: int
    #: KV bytes one token takes over all layers and shards
    kv_bytes_per_token: int
    #: prefill: seconds = base + per_token x (prompt tokens of the batch)
    prefill_base_s: float
    prefill_per_token_s: float
    #: decode step: seconds = base + per_seq x (running sequences)
    decode_base_s: float
    decode_per_seq_s: float = 0.0
    #: measured tables (x, seconds), used instead of the linear forms when given
    prefill_table: tuple = ()
    decode_table: tuple = ()


def _paper(weight_gb, tp, kv_per_token, prefill_s, decode_s, ref_tokens=1024):
    # the paper quotes one prefill time (prompts are cut to 1024 tokens): 10% fixed, 90% linear in tokens
    return ModelCost(weight_gb * GB, tp, kv_per_token, 0.1 * prefill_s, 0.9 * prefill_s / ref_tokens, decode_s)


#: Llama-2 sizes of the paper: weights 13.5/26/138 GB; KV bytes/token = 2 (K,V) x layers x kv_heads x head_dim x 2 B
MODEL_COSTS = {
    "llama2-7b": _paper(13.5, 1, 2 * 32 * 4096 * 2, 0.035, 0.015),
    "llama2-13b": _paper(26.0, 2, 2 * 40 * 5120 * 2, 0.070, 0.020),
    "llama2-70b": _paper(138.0, 4, 2 * 80 * 1024 * 2, 0.100, 0.030),
}


def _interp(table, x):
    xs = [p[0] for p in table]
    ys = [p[1] for p in table]
    if len(xs) == 1:
        return ys[0]
    if x >= xs[-1]:
        # a noisy measured table can end on a dip: never extrapolate below its last point
        slope = max((ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-12), 0.0)
        return ys[-1] + slope * (x - xs[-1])
    return float(np.interp(x, xs, ys))


@dataclass(frozen=True)
class CostModel:
    gpu: GpuType = GpuType()
    models: dict = field(default_factory=lambda: dict(MODEL_COSTS))
    engine_start_s: float = 6.0
    tp_init_s: float = 2.0
    activation_s: float = 0.1
    kv_map_s_per_gib: float = 0.02

    def cost(self, name: str, size: str | None = None) -> ModelCost:
        c = self.models.get(name) or (self.models.get(size) if size else None)
        if c is None:
            raise InvalidArgumentError(f"no cost profile for model {name!r} (size {size!r}); known: "
                                       f"{sorted(self.models)}: add it to the profile JSON", model=name)
        return c

    def prefill_s(self, c: ModelCost, tokens: int) -> float:
        if c.prefill_table:
            t = _interp(c.prefill_table, tokens)
        else:
            t = c.prefill_base_s + c.prefill_per_token_s * tokens
        return t * self.gpu.compute_scale

    def decode_step_s(self, c: ModelCost, batch: int) -> float:
        if c.decode_table:
            t = _interp(c.decode_table, batch)
        else:
            t = c.decode_base_s + c.decode_per_seq_s * batch
        return t * self.gpu.compute_scale

    def load_s(self, c: ModelCost) -> float:
        """Copy one shard from host memory; the tp shards load in parallel over their own links."""
        return c.weight_bytes / c.tp / self.gpu.h2d_bytes_per_s

    def engine_s(self, c: ModelCost) -> float:
        return self.engine_start_s + (self.tp_init_s if c.tp > 1 else 0.0)

    def kv_map_s(self, kv_bytes_per_gpu: float) -> float:
        return kv_bytes_per_gpu / (1 << 30) * self.kv_map_s_per_gib

    @classmethod
    def for_gpu(cls, gpu: str = "H100-80GB") -> "CostModel":
        if gpu not in GPU_TYPES:
            raise InvalidArgumentError(f"unknown GPU type {gpu!r}: choose one of {sorted(GPU_TYPES)}", gpu=gpu)
        return cls(gpu=GPU_TYPES[gpu])

    @classmethod
    def from_profile(cls, path_or_dict, base: "CostModel | None" = None) -> "CostModel":
        """Defaults (or ``base``) overridden by a profile JSON (see the module doc for the schema)."""
        d = path_or_dict
        if not isinstance(d, dict):
            with open(d) as f:
                d = json.load(f)
        if d.get("schema") != SCHEMA:
            raise InvalidArgumentError(f"profile schema is {d.get('schema')!r}, expected {SCHEMA!r}",
                                       schema=d.get("schema"))
        cm = base or cls()
        if "gpu" in d:
            cm = replace(cm, gpu=replace(cm.gpu, **d["gpu"]))
        for k in ("engine_start_s", "tp_init_s", "activation_s", "kv_map_s_per_gib"):
            if k in d:
                cm = replace(cm, **{k: float(d[k])})
        models = dict(cm.models)
        for name, m in (d.get("models") or {}).items():
            old = models.get(name)
            kw = {}
            if "weight_bytes" in m:
                kw["weight_bytes"] = float(m["weight_bytes"])
            if "tp" in m:
                kw["tp"] = int(m["tp"])
            if "kv_bytes_per_token" in m:
                kw["kv_bytes_per_token"] = int(m["kv_bytes_per_token"])
            if "prefill_s" in m:
                kw["prefill_base_s"] = float(m["prefill_s"].get("base_s", 0.0))
                kw["prefill_per_token_s"] = float(m["prefill_s"].get("per_token_s", 0.0))
            if "decode_step_s" in m:
                kw["decode_base_s"] = float(m["decode_step_s"].get("base_s", 0.0))
                kw["decode_per_seq_s"] = float(m["decode_step_s"].get("per_seq_s", 0.0))
            if "prefill_table" in m:
                kw["prefill_table"] = tuple(tuple(map(float, p)) for p in m["prefill_table"])
            if "decode_table" in m:
                kw["decode_table"] = tuple(tuple(map(float, p)) for p in m["decode_table"])
            if old is None:
                missing = {"weight_bytes", "tp", "kv_bytes_per_token"} - kw.keys()
                if missing or not ({"prefill_base_s", "prefill_table"} & kw.keys()) \
                        or not ({"decode_base_s", "decode_table"} & kw.keys()):
                    raise InvalidArgumentError(f"profile model {name!r} is new and lacks {sorted(missing)} or "
                                               f"its prefill/decode times", model=name)
                kw.setdefault("prefill_base_s", 0.0)
                kw.setdefault("prefill_per_token_s", 0.0)
                kw.setdefault("decode_base_s", 0.0)
                models[name] = ModelCost(**kw)
            else:
                models[name] = replace(old, **kw)
        return replace(cm, models=models)

    def to_profile(self) -> dict:
        """This cost model as a profile dict (the schema above)."""
        g = self.gpu
        return {
            "schema": SCHEMA,
            "gpu": {"name": g.name, "memory_bytes": g.memory_bytes, "pool_fraction": g.pool_fraction,
                    "h2d_bytes_per_s": g.h2d_bytes_per_s, "compute_scale": g.compute_scale},
            "engine_start_s": self.engine_start_s, "tp_init_s": self.tp_init_s, "activation_s": self.activation_s,
            "kv_map_s_per_gib": self.kv_map_s_per_gib,
            "models": {n: {"weight_bytes": c.weight_bytes, "tp": c.tp, "kv_bytes_per_token": c.kv_bytes_per_token,
                           "prefill_s": {"base_s": c.prefill_base_s, "per_token_s": c.prefill_per_token_s},
                           "decode_step_s": {"base_s": c.decode_base_s, "per_seq_s": c.decode_per_seq_s},
                           **({"prefill_table": [list(p) for p in c.prefill_table]} if c.prefill_table else {}),
                           **({"decode_table": [list(p) for p in c.decode_table]} if c.decode_table else {})}
                       for n, c in self.models.items()},
        }
