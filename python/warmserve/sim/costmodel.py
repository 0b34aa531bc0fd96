"""How long things take on a simulated GPU: prefill, decode steps, loading weights, starting an engine.

Defaults are the paper's latency model (prefill 35/70/100 ms, decode 15/20/30 ms per step for Llama-2
7B/13B/70B) on an H100 80 GB with 32 GB/s host-to-device bandwidth. A measured profile (JSON, written by the
calibration benchmark) overrides any part of it. Every constant below carries its source beside it; the table of
all of them is ``bench/simulate/CONSTANTS.md``. Profile schema, version 1 (every key optional except ``schema``;
sizes in bytes, times in seconds; the keys marked "added" came after the first profiles were written: a profile
that lacks them keeps the defaults, so every earlier profile loads unchanged; every value is checked as it is read,
``sim.profile_check``: times and per-token/per-sequence slopes >= 0, sizes, bandwidths and compute_scale > 0,
fractions in (0, 1], counts whole, tables ascending [x, seconds] points; keys outside the schema are refused, at the
top level too, where only calibrate's records sit beside it: "measured", "machine", "measured_fresh_engine",
"skipped", "parallel", ``PROFILE_RECORD_KEYS``):

    {
      "schema": "warmserve.sim.profile/1",
      "gpu": {"name": "H100-80GB", "memory_bytes": 80e9, "pool_fraction": 0.9, "h2d_bytes_per_s": 32e9,
              "compute_scale": 1.0,
              "hbm_bytes_per_s": 3.35e12, "hbm_achievable_fraction": 0.68,    # added: decode's KV-read term
              "host_cores": 0,                # added: cores a server's CPU workers share (0: GPUs, none)
              "weight_read_bytes_per_s": 0},  # added: the decode weight floor's rate (0: the HBM one above)
      "engine_start_s": 6.0,          # start an engine from scratch: process, imports, CUDA context, profiling
      "tp_init_s": 0.0,               # extra for building tensor-parallel communicators (tp > 1, cold engine)
      "activation_s": 0.1,            # turn a fully prewarmed replica into a serving instance
      "kv_map_s_per_gib": 0.02,       # map KV-cache pages (0.2 s per 10 GB, PAPER.md section 7)
      "engine_init_s": 14.0,          # added: vLLM engine initialisation (profiling, KV cache, graph capture)
      "fast_load_bytes_per_s": 0,     # added: a fast loader from host memory, per GPU (0: at h2d_bytes_per_s)
      "load_fixed_s": 0.0,            # added: what a load into a prewarmed engine pays besides its bytes
      "engine_limits": {"max_running_seqs": 256, "block_size_tokens": 256, "max_model_len_tokens": 2048,
                        "max_batched_tokens": 100000},    # added: vLLM's engine limits (block size: 256 only)
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

Cold starts in ``warmserve simulate``: a policy without prewarmed engines (``autoscale``) pays
``vllm_cold_start_s``, a fresh vanilla vLLM engine with a fast checkpoint loader, from published figures:
``engine_init_s`` (14-35 s, ``ENGINE_INIT_RANGE_S``) + ``tp_init_s`` (0) + weights at ``fast_load_bytes_per_s``
(the host-to-device link, as warmserve's loads); a
prewarmed engine loading weights cold pays ``load_s`` + ``activation_s``. ``engine_s`` (``engine_start_s``, 6 s,
an earlier uncited assumption) is no longer charged by the simulator; ``with_cold_start_s`` sets the engine part
of both (``--cold-start-s``).

A served model is matched to a profile entry by its own name first, then by its ``size`` key.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, replace

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.geometry import KV_BLOCK_TOKENS
from warmserve.sim.profile_check import (COST_RULES, GPU_RULES, check_fields, check_interference, check_value,
                                         gpu_section, limits_section, models_section)

SCHEMA = "warmserve.sim.profile/1"
#: the top-level keys ``CostModel.from_profile`` reads
PROFILE_KEYS = ("schema", "gpu", *COST_RULES, "engine_limits", "colocation_interference", "models")
#: the top-level records `warmserve calibrate` writes beside them, for people, never read by the simulator
#: (``bench.calibrate.build_profile``: measured, machine, measured_fresh_engine, skipped; its ``--parallel``:
#: parallel)
PROFILE_RECORD_KEYS = ("measured", "machine", "measured_fresh_engine", "skipped", "parallel")
GB = 1e9
GIB = 1 << 30

# --- GPU memory bandwidth ---------------------------------------------------------------------------------------
#: H100 SXM 80 GB peak HBM3 bandwidth: 3.35 TB/s (NVIDIA H100 Tensor Core GPU datasheet, "GPU memory bandwidth",
#: SXM column; PAPER.md "Published engine figures")
H100_SXM_HBM_BYTES_PER_S = 3.35e12
#: A100 80 GB SXM peak HBM2e bandwidth: 2,039 GB/s (NVIDIA A100 Tensor Core GPU datasheet, "GPU memory
#: bandwidth", A100 80GB SXM column)
A100_SXM_HBM_BYTES_PER_S = 2.039e12
#: H200 peak HBM3e bandwidth: 4.8 TB/s (NVIDIA H200 Tensor Core GPU datasheet); only used to turn this project's
#: H200 measurement below into a fraction of peak
H200_HBM_BYTES_PER_S = 4.8e12
#: share of peak HBM bandwidth a memory-bound decode step achieves. Measured by `warmserve bench switch` on an
#: H200 (bench/switch/results-cuda-h200.json, move_vs_memcpy.memcpy_ms): a 1 GiB device-to-device memcpy took
#: 0.661 ms, i.e. 2 x 1.074e9 B (read + write) / 0.661 ms = 3.25 TB/s = 0.676 of the 4.8 TB/s peak, rounded to
#: 0.68. A streaming copy is the best case; show results across ``HBM_ACHIEVABLE_FRACTION_RANGE``.
HBM_ACHIEVABLE_FRACTION = 0.68
#: low end: the measured 0.68 / 1.26, because vLLM's paged attention kernel runs 20-26% slower than
#: FasterTransformer's contiguous-KV kernel (Kwon et al., "Efficient Memory Management for Large Language Model
#: Serving with PagedAttention", SOSP 2023, section 7.1, Figure 18a); high end: the datasheet peak (a bound)
HBM_ACHIEVABLE_FRACTION_RANGE = (0.54, 1.0)

# --- cold-start parts --------------------------------------------------------------------------------------------
#: vLLM engine initialisation of an 8B-class model before it serves (memory-profiling pass, KV cache allocation,
#: CUDA graph capture), weight loading excluded: 14-35 s (PAPER.md, "Published engine figures"; e.g. vLLM issue
#: #20264 logs "init engine (profile, create kv cache, warmup model) took 34.11 seconds" for a 3.4 GiB Llama-3.2
#: model with torch.compile and graph capture). The default is the published low end, which favours the
#: autoscaling baseline. No published figure for an eager start (no graph capture, as the paper's artifact runs
#: vLLM) was found: it may be shorter, so results are also shown down to 0 s of engine initialisation (weights
#: only), the bound no vanilla engine start can beat (bench/simulate/README.md).
ENGINE_INIT_RANGE_S = (14.0, 35.0)
ENGINE_INIT_S = ENGINE_INIT_RANGE_S[0]
#: the engine start ``warmserve simulate`` has charged so far (process, imports, CUDA context, profiling). No
#: published source: an earlier assumption below the published range above, kept only so today's results stay
#: reproducible until the engine model switches to ``vllm_cold_start_s``
LEGACY_ENGINE_START_S = 6.0
#: building tensor-parallel communicators for a cold engine with tp > 1. No published measurement of this part
#: on its own was found, so it is 0 (an audit found the earlier, unsourced 2 s charged to `autoscale` alone):
#: in the baseline's favour, as warmserve's prewarmed communicators get no credit in the simulator either. A
#: profile or `warmserve calibrate` sets it (calibrate writes 0 for CPU workers, which have no communicators).
TP_INIT_S = 0.0
#: host-to-device copy bandwidth the paper uses for its cold-start cost c_m (PAPER.md section 2: "32 GB/s
#: host-to-device bandwidth")
PAPER_H2D_BYTES_PER_S = 32 * GB
#: Llama-3.1-8B's bf16 weights: 8.03e9 parameters (the meta-llama/Llama-3.1-8B checkpoint) x 2 bytes
LLAMA31_8B_WEIGHT_BYTES = 16.06e9
#: ServerlessLLM loads Llama-3.1-8B from host memory in 0.7 s on H100 machines (PAPER.md, "Published engine
#: figures")
SERVERLESSLLM_8B_LOAD_S = 0.7
#: the effective per-GPU load bandwidth that implies: 16.06 GB / 0.7 s = 22.9 GB/s (below the 32 GB/s link
#: figure: it is end-to-end, checkpoint format and loader overheads included). Not the default: an audit found
#: `autoscale` loading at it while warmserve's own loads ran at the link figure, so both now load at the link
#: (``CostModel.fast_load_bytes_per_s`` 0), which favours the baseline; a profile can set this figure instead.
FAST_LOAD_BYTES_PER_S = LLAMA31_8B_WEIGHT_BYTES / SERVERLESSLLM_8B_LOAD_S
#: naive remapping with the CUDA VMM API: 0.2 s per 10 GB (PAPER.md section 7), i.e. 0.0215 s per GiB.
#: ``CostModel.kv_map_s_per_gib`` defaults to 0.02 (that figure read per GiB, 7% low), kept for today's numbers
PAPER_REMAP_S_PER_GIB = 0.2 / (10 * GB) * GIB
#: activation of a prewarmed replica: 6.51 ms for 9.97 GiB of weights in 1082 tensors, measured by `warmserve
#: bench switch --backend cuda` on an H200 (bench/switch/README.md, "Results (cuda backend)"); the paper's goal
#: is under 20 ms per 10 GB (ACTIVATION_GOAL_S_PER_10GB, as quoted in bench/switch/README.md). The default
#: ``activation_s`` of 0.1 s is an earlier, 15x more conservative assumption, kept for today's numbers.
ACTIVATION_MEASURED_H200_S = 6.51e-3
ACTIVATION_GOAL_S_PER_10GB = 0.020
LEGACY_ACTIVATION_S = 0.1


@dataclass(frozen=True)
class GpuType:
    #: marketing name, for reports
    name: str = "H100-80GB"
    #: device memory, bytes (H100 SXM: 80 GB, NVIDIA H100 datasheet)
    memory_bytes: float = 80 * GB
    #: share of memory the page pool takes at worker start (the rest: CUDA context, activations); PAPER.md
    #: section 7 ("about 90% of free GPU memory"), also vLLM's default --gpu-memory-utilization 0.9
    pool_fraction: float = 0.9
    #: host-to-device copy bandwidth per GPU, bytes/s (PAPER_H2D_BYTES_PER_S)
    h2d_bytes_per_s: float = PAPER_H2D_BYTES_PER_S
    #: compute time relative to an H100 (prefill and decode times are multiplied by it)
    compute_scale: float = 1.0
    #: peak device-memory (HBM) bandwidth, bytes/s: what a decode step's weight and KV reads are bound by
    hbm_bytes_per_s: float = H100_SXM_HBM_BYTES_PER_S
    #: share of ``hbm_bytes_per_s`` a memory-bound decode step achieves (HBM_ACHIEVABLE_FRACTION), 0 < x <= 1
    hbm_achievable_fraction: float = HBM_ACHIEVABLE_FRACTION
    #: how many busy devices one server's shared cores run at full speed at once, for CPU workers (`warmserve
    #: calibrate` writes its cores / each worker's torch threads, at least 1); a step on a server with n busy
    #: devices takes max(1, n / host_cores) times as long. 0: the devices share no compute (GPUs), no such term
    host_cores: float = 0.0
    #: bytes/s the weight floor of a decode step reads the weights at; 0: ``decode_read_bytes_per_s``. CPU profiles
    #: (`warmserve calibrate`) set it apart: their context read is measured far slower than a weight read, which
    #: their decode table already holds, so the floor at the context rate would take over every step
    weight_read_bytes_per_s: float = 0.0

    def __post_init__(self):
        # every numeric field (found in review: h2d_bytes_per_s 0 divided by zero at the first load, and only the
        # HBM fields and host_cores were checked); the HBM fraction's range shown in results is
        # HBM_ACHIEVABLE_FRACTION_RANGE
        check_fields("GpuType", {k: getattr(self, k) for k in GPU_RULES}, GPU_RULES,
                     f"give GPU {self.name!r} a value in that range")

    @property
    def pool_bytes(self) -> int:
        return int(self.memory_bytes * self.pool_fraction)

    def host_slowdown(self, busy: int) -> float:
        """How many times longer compute takes on a server with ``busy`` devices computing at once: their one
        torch thread each shares ``host_cores`` cores evenly (processor sharing), max(1, busy / host_cores); 1
        where devices share no compute (``host_cores`` 0)."""
        return max(1.0, busy / self.host_cores) if self.host_cores else 1.0

    @property
    def decode_read_bytes_per_s(self) -> float:
        """Bytes/s a decode step reads device memory at: peak x achievable fraction."""
        return self.hbm_bytes_per_s * self.hbm_achievable_fraction


GPU_TYPES = {
    "H100-80GB": GpuType(),
    # A100 80 GB SXM (80 GB: NVIDIA A100 datasheet; pool share 0.9 as the H100's): PCIe gen4 x16 host link (31.5
    # GB/s per direction by the PCIe 4.0 spec; 25 GB/s an earlier assumption for what a copy achieves), and 1.6x
    # the H100's prefill/decode time: about the HBM bandwidth ratio 3.35 / 2.039 = 1.64 (datasheets), the right
    # scale for memory-bound decode (prefill, compute-bound, would scale by more: dense bf16 989 / 312 TFLOPS =
    # 3.2x by the same datasheets)
    "A100-80GB": GpuType("A100-80GB", 80 * GB, 0.9, 25 * GB, 1.6, hbm_bytes_per_s=A100_SXM_HBM_BYTES_PER_S),
}


@dataclass(frozen=True)
class EngineLimits:
    """vLLM's engine limits as the paper's artifact runs them (PAPER.md, "What the authors' released code runs":
    max-num-seqs 256, block size 256, max-model-len 2048, max-num-batched-tokens 100000, enforce-eager).

    Not the manager's B = 32 in-flight requests per engine: that is a policy choice (``policy``), not an engine
    limit."""

    #: most sequences running in one engine at once (vLLM --max-num-seqs)
    max_running_seqs: int = 256
    #: tokens per KV-cache block (vLLM --block-size; one block covers all layers, PAPER.md section 6); fixed at
    #: ``geometry.KV_BLOCK_TOKENS``, the block the simulator's admission, the policy and the engine all size by
    block_size_tokens: int = KV_BLOCK_TOKENS
    #: longest prompt + output of one sequence (vLLM --max-model-len)
    max_model_len_tokens: int = 2048
    #: most tokens one engine step processes, prefill and decode together (vLLM --max-num-batched-tokens)
    max_batched_tokens: int = 100_000

    def __post_init__(self):
        for k in ("max_running_seqs", "block_size_tokens", "max_model_len_tokens", "max_batched_tokens"):
            if int(getattr(self, k)) < 1:
                raise InvalidArgumentError(f"engine limit {k} is {getattr(self, k)}: it must be at least 1",
                                           **{k: getattr(self, k)})
        if int(self.block_size_tokens) != KV_BLOCK_TOKENS:
            # found in review: a profile's other block size was taken and ignored, admission kept reserving
            # 256-token blocks (geometry's, which the policy's KV accounting and the engine's mapping share)
            raise InvalidArgumentError(
                f"engine limit block_size_tokens is {self.block_size_tokens}: the simulator sizes KV blocks at "
                f"geometry.KV_BLOCK_TOKENS = {KV_BLOCK_TOKENS} tokens everywhere; remove the key from the profile's "
                f"engine_limits or set it to {KV_BLOCK_TOKENS}", block_size_tokens=self.block_size_tokens,
                expected=KV_BLOCK_TOKENS)


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


#: share of the paper's single prefill figure that is fixed per step; the rest is linear in prompt tokens. The
#: paper gives one point per model (prompts cut to 1024 tokens), so the split is an assumption, a parameter:
#: at 1024 tokens any split reproduces the paper's figure exactly
PREFILL_FIXED_SHARE = 0.1
#: prompt length the paper's prefill figures are for (PAPER.md "The evaluation in the paper": cut to 1024 tokens)
PAPER_PROMPT_TOKENS = 1024


def _paper(weight_gb, tp, kv_per_token, prefill_s, decode_s, ref_tokens=PAPER_PROMPT_TOKENS):
    return ModelCost(weight_gb * GB, tp, kv_per_token, PREFILL_FIXED_SHARE * prefill_s,
                     (1 - PREFILL_FIXED_SHARE) * prefill_s / ref_tokens, decode_s)


#: The paper's models (PAPER.md "The evaluation in the paper"): Llama-2 7B/13B/70B at tp 1/2/4, weights
#: 13.5/26.0/138 GB, prefill 35/70/100 ms and decode 15/20/30 ms per step (its latency model for prewarm
#: planning). KV bytes/token = 2 (K and V) x layers x KV heads x head dim x 2 bytes (bf16), shapes from "Llama 2:
#: Open Foundation and Fine-Tuned Chat Models" (Touvron et al. 2023, Table 1 and section 2.2: 7B 32 layers x
#: 4096, 13B 40 x 5120, both full multi-head attention; 70B 80 layers with grouped-query attention, 8 KV heads
#: x 128 = 1024)
MODEL_COSTS = {
    "llama2-7b": _paper(13.5, 1, 2 * 32 * 4096 * 2, 0.035, 0.015),
    "llama2-13b": _paper(26.0, 2, 2 * 40 * 5120 * 2, 0.070, 0.020),
    "llama2-70b": _paper(138.0, 4, 2 * 80 * 1024 * 2, 0.100, 0.030),
}


def prefill_fixed_s(table) -> float:
    """The part of a measured prefill step (seconds by prompt tokens of one sequence) that does not grow with the
    prompt: the line through the table's two shortest prompts, at 0 tokens, kept within [0, the shortest's time]."""
    if len(table) < 2:
        return 0.0
    (x0, y0), (x1, y1) = table[0], table[1]
    return min(max(y0 - x0 * (y1 - y0) / max(x1 - x0, 1e-12), 0.0), y0)


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
    #: the simulated GPU (every GPU of the cluster is one type)
    gpu: GpuType = GpuType()
    #: ModelCost by model name or size key
    models: dict = field(default_factory=lambda: dict(MODEL_COSTS))
    #: seconds ``engine_s`` charges to start an engine from scratch (LEGACY_ENGINE_START_S; profiles written by
    #: `warmserve calibrate` before 2026-11-30 hold the fixed part of their measured load here, uncharged)
    engine_start_s: float = LEGACY_ENGINE_START_S
    #: seconds to build tensor-parallel communicators for a cold engine with tp > 1 (TP_INIT_S)
    tp_init_s: float = TP_INIT_S
    #: seconds to turn a fully prewarmed replica into a serving instance (LEGACY_ACTIVATION_S; measured:
    #: ACTIVATION_MEASURED_H200_S)
    activation_s: float = LEGACY_ACTIVATION_S
    #: seconds to map one GiB of KV-cache pages through the VMM API: 0.02, PAPER.md section 7's 0.2 s per 10 GB read
    #: per GiB (PAPER_REMAP_S_PER_GIB, 7% more, is the exact reading), kept for today's numbers
    kv_map_s_per_gib: float = 0.02
    #: seconds of vLLM engine initialisation in ``vllm_cold_start_s`` (ENGINE_INIT_S, range ENGINE_INIT_RANGE_S)
    engine_init_s: float = ENGINE_INIT_S
    #: bytes/s per GPU a fast checkpoint loader reads weights from host memory at; 0: the GPU's host-to-device
    #: link (``gpu.h2d_bytes_per_s``), the rate warmserve's own loads get (FAST_LOAD_BYTES_PER_S: the published
    #: end-to-end ServerlessLLM figure, slower)
    fast_load_bytes_per_s: float = 0.0
    #: seconds every load into a prewarmed engine pays besides its bytes (``load_s``: opening the files, reading
    #: their headers, making the tensors): `warmserve calibrate`'s load-fit intercept. 0 in the GPU presets: no
    #: published figure separates it, and there a load is GBs at tens of GB/s (found in review: a calibrated
    #: profile's intercept went into the uncharged ``engine_start_s``, so the replay twin's warm loads were 0.53-0.88x
    #: the measured ones, while the baseline's fresh engine paid its loads' fixed part inside ``engine_init_s``)
    load_fixed_s: float = 0.0
    #: the vLLM engine limits an engine model admits and batches under
    limits: EngineLimits = EngineLimits()
    #: how instances colocated on one GPU slow each other (COLOCATION_INTERFERENCE; no published measurement of
    #: the paper's models, so the rule is a choice shown as a range): "time-share" (default) an iteration takes n
    #: times longer while n instances on its busiest GPU iterate; "phase" only those in the same phase share it (a
    #: prefill, compute-bound, overlaps another model's decode, memory-bound: MuxServe's premise); "none" they never
    #: slow each other, a bound no GPU reaches
    colocation_interference: str = "time-share"

    def __post_init__(self):
        # a negative time ran the simulated clock backwards (found in review: engine_init_s -30, TTFT -1.5 s)
        check_fields("CostModel", {k: getattr(self, k) for k in COST_RULES}, COST_RULES,
                     "give the cost model a value in that range")
        check_interference(self.colocation_interference)

    def cost(self, name: str, size: str | None = None) -> ModelCost:
        c = self.models.get(name) or (self.models.get(size) if size else None)
        if c is None:
            raise InvalidArgumentError(f"no cost profile for model {name!r} (size {size!r}); known: "
                                       f"{sorted(self.models)}: add it to the profile JSON", model=name)
        return c

    def prefill_s(self, c: ModelCost, tokens: int) -> float:
        """Seconds of a prefill step of one sequence of ``tokens`` prompt tokens."""
        if c.prefill_table:
            t = _interp(c.prefill_table, tokens)
        else:
            t = c.prefill_base_s + c.prefill_per_token_s * tokens
        return t * self.gpu.compute_scale

    def prefill_batch_s(self, c: ModelCost, lengths) -> float:
        """Seconds of one prefill step over sequences of ``lengths`` prompt tokens each. The engine runs a step's
        matmuls over all its tokens at once, but each sequence attends over its own tokens only, so a measured
        table (one sequence per step, superlinear from attention) would overstate a batch of short prompts read
        at their total. Each sequence costs its own length's time, and the step's fixed part is paid once:

            sum of prefill_s(l) over the sequences - (n - 1) x ``prefill_fixed_s(prefill_table)``

        Measured on this 2-core VM (1 torch thread, one engine step, medians of 5): llama-20m 10 x 128 tokens
        287 ms, this form 313 ms, prefill_s(1280) 389 ms; 8 x 128: 225 / 252 / 299 ms; qwen2-30m 10 x 128: 524 /
        535 / 662 ms (bench/replay/README.md, "Simulated prefill of a batch"). With the paper's linear form (no
        table) it equals prefill_s of the total."""
        lengths = list(lengths)
        if not c.prefill_table or not lengths:
            return self.prefill_s(c, sum(lengths))
        return sum(self.prefill_s(c, n) for n in lengths) - (len(lengths) - 1) * self.prefill_fixed_part_s(c)

    def prefill_chunks_s(self, c: ModelCost, chunks) -> float:
        """Seconds of one prefill step over prompt chunks ``(offset, tokens)``: a chunk starting past a prompt's
        first token attends over the cached tokens before it too, so it costs the growth of ``prefill_s`` from its
        offset to its end; a first chunk costs its own length's prefill less the fixed part; the step pays the
        fixed part once:

            fixed + sum of (prefill_s(o + k) - prefill_s(o), or prefill_s(k) - fixed at o = 0)

        At offset 0 throughout this is ``prefill_batch_s``; with the paper's linear form every chunk costs its own
        per-token part. Found in review: a chunk was charged ``prefill_s(k)`` at its own length, as if it had no
        cached context (a 2000-token prompt in 256-token chunks cost 4.99 s against 8.25 s unchunked on the
        replay's measured profile)."""
        fixed = self.prefill_fixed_part_s(c)
        return fixed + sum(self.prefill_s(c, o + k) - (self.prefill_s(c, o) if o else fixed) for o, k in chunks)

    def prefill_fixed_part_s(self, c: ModelCost) -> float:
        """The part of a prefill step that does not grow with its tokens (the table's, ``prefill_fixed_s``, or
        ``prefill_base_s``), times ``gpu.compute_scale``: what a chunk beside a decode batch does not pay again."""
        fixed = prefill_fixed_s(c.prefill_table) if c.prefill_table else c.prefill_base_s
        return fixed * self.gpu.compute_scale

    def decode_step_s(self, c: ModelCost, batch: int, context_tokens: int | None = None) -> float:
        """Seconds of one decode step of ``batch`` running sequences.

        Without ``context_tokens``: the step time as measured or as the paper gives it (the table, or
        base + per_seq x batch), times ``gpu.compute_scale``; it does not depend on how long the sequences are.

        With ``context_tokens`` (the tokens of KV cache the batch reads in this step, summed over its sequences:
        prompt + tokens generated so far, each), a memory-bound step on ``tp`` GPUs in parallel:

            step = max(small-batch step, weight floor) + KV read
            weight floor = (weight_bytes / tp) / R
            KV read      = (context_tokens x kv_bytes_per_token / tp) / R
            R            = gpu.hbm_bytes_per_s x gpu.hbm_achievable_fraction

        Why: a decode step reads every weight once (shared by the whole batch) and, in attention, every KV
        entry of every running sequence once. Each GPU holds 1/tp of both and reads its share at the same time
        as the others, so per-GPU bytes over the per-GPU bandwidth is the step's memory time. The paper's per-step
        figures (15/20/30 ms for 7B/13B/70B, its planning model) are taken as the step at small batch and short
        context: they contain the weight read plus the engine's fixed per-step overhead (kernel launches,
        sampling, the scheduler; the artifact runs enforce-eager), the context-free part. The weight floor takes
        over only where such a figure is below what reading the weights takes (H100: 13.5 GB / 2.28 TB/s =
        5.9 ms for Llama-2 7B, under the paper's 15 ms). The KV term is counted in full, so whatever KV the
        paper's figure already read is counted twice (a few ms at small batch: 16 x 1000 tokens of 7B is 3.7 ms).
        Compute is not modelled: with bf16 weights a step does about ``batch`` FLOPs per weight byte read, and an
        H100 turns compute-bound at about 989 TFLOPS / 3.35 TB/s = 295 FLOPs per byte (datasheet), above
        ``limits.max_running_seqs`` = 256.
        """
        if c.decode_table:
            t = _interp(c.decode_table, batch)
        else:
            t = c.decode_base_s + c.decode_per_seq_s * batch
        t *= self.gpu.compute_scale
        if context_tokens is None:
            return t
        if context_tokens < 0:
            raise InvalidArgumentError(f"context_tokens is {context_tokens}: the KV tokens a decode step reads "
                                       f"cannot be negative", context_tokens=context_tokens)
        read_bps = self.gpu.decode_read_bytes_per_s
        weight_floor_s = c.weight_bytes / c.tp / (self.gpu.weight_read_bytes_per_s or read_bps)
        kv_read_s = context_tokens * c.kv_bytes_per_token / c.tp / read_bps
        return max(t, weight_floor_s) + kv_read_s

    def kv_capacity_tokens(self, c: ModelCost) -> int:
        """Tokens of KV cache one instance of ``c`` holds: per GPU, the pool (``gpu.pool_bytes``) less its weight
        shard, over its share of a token's KV (kv_bytes_per_token / tp), rounded down to whole blocks of
        ``limits.block_size_tokens``; 0 when the shard does not fit. vLLM also keeps the activation peak of its
        profiling pass out of the KV cache; that is not subtracted here, so this is an upper bound."""
        free_per_gpu = self.gpu.pool_bytes - c.weight_bytes / c.tp
        if free_per_gpu <= 0:
            return 0
        block = self.limits.block_size_tokens
        tokens = int(free_per_gpu // (c.kv_bytes_per_token / c.tp))
        return tokens // block * block

    def load_s(self, c: ModelCost) -> float:
        """Load one shard from host memory into a prewarmed engine: the fixed part, then the bytes over the link;
        the tp shards load in parallel over their own links."""
        return self.load_fixed_s + c.weight_bytes / c.tp / self.gpu.h2d_bytes_per_s

    def engine_s(self, c: ModelCost) -> float:
        """The earlier engine-start figure (``engine_start_s``, + ``tp_init_s`` for tp > 1); the simulator charges
        ``vllm_cold_start_s`` instead."""
        return self.engine_start_s + (self.tp_init_s if c.tp > 1 else 0.0)

    def fast_load_s(self, c: ModelCost) -> float:
        """Load one shard from host memory with a fast checkpoint loader (ServerlessLLM); shards in parallel."""
        return c.weight_bytes / c.tp / (self.fast_load_bytes_per_s or self.gpu.h2d_bytes_per_s)

    def vllm_cold_start_s(self, c: ModelCost) -> float:
        """A fresh vanilla vLLM engine with a fast loader, from request to ready: engine initialisation, the
        tensor-parallel communicators (tp > 1), and the weights from host memory. vLLM allocates its KV cache
        once, inside engine initialisation, so no page mapping is charged (that is warmserve's own VMM path)."""
        return self.engine_init_s + (self.tp_init_s if c.tp > 1 else 0.0) + self.fast_load_s(c)

    def with_cold_start_s(self, seconds: float) -> "CostModel":
        """This cost model with the engine part of a cold start set to ``seconds`` (``--cold-start-s``): both
        ``engine_start_s`` (what ``engine_s`` charges today) and ``engine_init_s`` (``vllm_cold_start_s``), so the
        override means the same whichever cold-start formula the simulator runs. Weight loading and the
        tensor-parallel set-up stay as they are."""
        seconds = float(seconds)
        if not seconds >= 0.0:
            raise InvalidArgumentError(f"cold start of {seconds} s: it must be a number of seconds >= 0 (the "
                                       f"published vLLM range is {ENGINE_INIT_RANGE_S[0]:g}-"
                                       f"{ENGINE_INIT_RANGE_S[1]:g} s)", cold_start_s=seconds)
        return replace(self, engine_start_s=seconds, engine_init_s=seconds)

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
            try:
                with open(d, encoding="utf-8") as f:
                    d = json.load(f)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InvalidArgumentError(f"profile {path_or_dict}: not valid JSON ({e}); write it with `warmserve "
                                           f"calibrate --out`", path=str(path_or_dict)) from None
            except OSError as e:  # found in review: a missing file was a bare FileNotFoundError, exit 1
                raise InvalidArgumentError(f"profile {path_or_dict}: cannot read it ({e.strerror or e}); give the "
                                           f"path of one `warmserve calibrate --out` wrote", path=str(path_or_dict),
                                           errno=e.errno) from None
            if not isinstance(d, dict):  # found in review: a list was an AttributeError traceback
                raise InvalidArgumentError(f"profile {path_or_dict}: JSON {type(d).__name__}, not the object (schema "
                                           f"{SCHEMA!r}) that `warmserve calibrate --out` writes",
                                           path=str(path_or_dict))
        if d.get("schema") != SCHEMA:
            raise InvalidArgumentError(f"profile schema is {d.get('schema')!r}, expected {SCHEMA!r}",
                                       schema=d.get("schema"))
        unknown = sorted(set(d) - set(PROFILE_KEYS) - set(PROFILE_RECORD_KEYS), key=str)
        if unknown:  # found in review: a misspelled key was taken and ignored, the run the default's
            near = {k: difflib.get_close_matches(str(k), PROFILE_KEYS, n=1) for k in unknown}
            hint = "".join(f"; {k!r}: did you mean {m[0]!r}?" for k, m in near.items() if m)
            where = f"profile {path_or_dict}" if not isinstance(path_or_dict, dict) else "profile"
            raise InvalidArgumentError(f"{where} has unknown top-level keys {unknown}{hint}; the simulator reads "
                                       f"{list(PROFILE_KEYS)}, and `warmserve calibrate` records "
                                       f"{list(PROFILE_RECORD_KEYS)} beside them", keys=unknown)
        cm = base or cls()
        # each section and value checked before it is read (profile_check; found in review: malformed ones were bare
        # TypeErrors, AttributeErrors and IndexErrors, negative times were taken)
        if "gpu" in d:
            cm = replace(cm, gpu=replace(cm.gpu, **gpu_section(d["gpu"])))
        for k, rule in COST_RULES.items():
            if k in d:
                cm = replace(cm, **{k: float(check_value(f"profile {k}", d[k], rule))})
        if "engine_limits" in d:
            cm = replace(cm, limits=replace(cm.limits, **limits_section(d["engine_limits"])))
        if "colocation_interference" in d:
            cm = replace(cm, colocation_interference=check_interference(d["colocation_interference"]))
        models = dict(cm.models)
        for name, kw in models_section(d.get("models")).items():
            old = models.get(name)
            if old is None:
                # the keys in the file's words, and the fix (found in review: "lacks [] or its prefill/decode times")
                lacks = sorted({"weight_bytes", "tp", "kv_bytes_per_token"} - kw.keys())
                if not {"prefill_base_s", "prefill_per_token_s", "prefill_table"} & kw.keys():
                    lacks.append("prefill_s (or prefill_table)")
                if not {"decode_base_s", "decode_per_seq_s", "decode_table"} & kw.keys():
                    lacks.append("decode_step_s (or decode_table)")
                if lacks:
                    raise InvalidArgumentError(
                        f"profile model {name!r} is new and lacks {', '.join(lacks)}: add them to models.{name}, or "
                        f"name a model the cost model knows ({', '.join(sorted(models))})", model=name, missing=lacks)
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
                    "h2d_bytes_per_s": g.h2d_bytes_per_s, "compute_scale": g.compute_scale,
                    "hbm_bytes_per_s": g.hbm_bytes_per_s, "hbm_achievable_fraction": g.hbm_achievable_fraction,
                    "host_cores": g.host_cores, "weight_read_bytes_per_s": g.weight_read_bytes_per_s},
            "engine_start_s": self.engine_start_s, "tp_init_s": self.tp_init_s, "activation_s": self.activation_s,
            "kv_map_s_per_gib": self.kv_map_s_per_gib, "engine_init_s": self.engine_init_s,
            "fast_load_bytes_per_s": self.fast_load_bytes_per_s, "load_fixed_s": self.load_fixed_s,
            "colocation_interference": self.colocation_interference,
            "engine_limits": {"max_running_seqs": self.limits.max_running_seqs,
                              "block_size_tokens": self.limits.block_size_tokens,
                              "max_model_len_tokens": self.limits.max_model_len_tokens,
                              "max_batched_tokens": self.limits.max_batched_tokens},
            "models": {n: {"weight_bytes": c.weight_bytes, "tp": c.tp, "kv_bytes_per_token": c.kv_bytes_per_token,
                           "prefill_s": {"base_s": c.prefill_base_s, "per_token_s": c.prefill_per_token_s},
                           "decode_step_s": {"base_s": c.decode_base_s, "per_seq_s": c.decode_per_seq_s},
                           **({"prefill_table": [list(p) for p in c.prefill_table]} if c.prefill_table else {}),
                           **({"decode_table": [list(p) for p in c.decode_table]} if c.decode_table else {})}
                       for n, c in self.models.items()},
        }
