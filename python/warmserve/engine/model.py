"""The Llama-family decoder (Llama, Qwen2, Mistral) over weight tensors it does not own.

The weights are views: over a memory-manager slot (the loader lays q/k/v and gate/up out back to back so one
view spans each group and the projections run as one matmul, with no copy), or over plain tensors in tests.
Parameter names (per layer ``layers.{i}.``): ``qkv.weight`` [(H+2*KVH)*D, hidden], ``qkv.bias``, ``o.weight``,
``o.bias``, ``gate_up.weight`` [2*I, hidden], ``gate_up.bias``, ``down.weight``, ``down.bias``, ``ln1``, ``ln2``;
and ``embed`` [V, hidden], ``norm``, ``lm_head`` (the embed tensor when tied).

One rank of a tensor-parallel instance runs the same code over its shard (``cfg`` is then the rank's config, from
engine/parallel.py shard_config, and ``embed``/``lm_head`` hold a vocabulary shard), with a ParallelGroup that
sums the embedding and the row-parallel o and down projections and gathers the logits (the rules are in
parallel.py). With no group (tp = 1) no collective runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from warmserve.engine.attention import AttnMeta, attend, kernels_usable
from warmserve.engine.config import ModelConfig
from warmserve.engine.parallel import ParallelGroup, vocab_range
from warmserve.engine.rope import Rope, apply_rope
from warmserve.errors import BackendUnavailableError, InvalidArgumentError
from warmserve.memory import kernels

# HF name suffixes of each fused group, in the order they are laid out back to back.
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")


def hf_groups(cfg: ModelConfig) -> list[tuple[str, list[str]]]:
    """Fused parameter name -> HF tensor names laid out contiguously in that order."""
    out: list[tuple[str, list[str]]] = [("embed", ["model.embed_tokens.weight"])]
    for i in range(cfg.num_layers):
        p, hp = f"layers.{i}.", f"model.layers.{i}."
        out.append((p + "ln1", [hp + "input_layernorm.weight"]))
        out.append((p + "qkv.weight", [hp + n + ".weight" for n in QKV]))
        if cfg.qkv_bias:
            out.append((p + "qkv.bias", [hp + n + ".bias" for n in QKV]))
        out.append((p + "o.weight", [hp + "self_attn.o_proj.weight"]))
        if cfg.o_bias:
            out.append((p + "o.bias", [hp + "self_attn.o_proj.bias"]))
        out.append((p + "ln2", [hp + "post_attention_layernorm.weight"]))
        out.append((p + "gate_up.weight", [hp + n + ".weight" for n in GATE_UP]))
        if cfg.mlp_bias:
            out.append((p + "gate_up.bias", [hp + n + ".bias" for n in GATE_UP]))
        out.append((p + "down.weight", [hp + "mlp.down_proj.weight"]))
        if cfg.mlp_bias:
            out.append((p + "down.bias", [hp + "mlp.down_proj.bias"]))
    out.append(("norm", ["model.norm.weight"]))
    if not cfg.tie_word_embeddings:
        out.append(("lm_head", ["lm_head.weight"]))
    return out


class Model:
    def __init__(self, cfg: ModelConfig, params: dict[str, torch.Tensor], parallel: ParallelGroup | None = None,
                 fused_kernels: bool = False, gemv: bool = False, gemv_prologues: bool = False,
                 rope_writes_kv: bool = False):
        """parallel: the group of a tensor-parallel rank: required when cfg.tp > 1, None at tp = 1.
        fused_kernels, gemv, gemv_prologues, rope_writes_kv: see the attributes (LoadedModel's attributes of these
        names, gemv_kernel for gemv, pass them: Model.of)."""
        if cfg.tp != (parallel.world_size if parallel is not None else 1):
            raise InvalidArgumentError(
                f"a {cfg.tp}-way shard runs with a process group of {cfg.tp} ranks, got "
                f"{parallel.world_size if parallel is not None else 'none'}: bind the instance's group first",
                tp=cfg.tp)
        self.cfg = cfg
        self.params = params
        self.parallel = parallel if cfg.tp > 1 else None
        self.embed = params["embed"]
        self.norm = params["norm"]
        self.lm_head = params["lm_head"]
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        self.layers = [
            tuple(params.get(f"layers.{i}.{n}") for n in
                  ("ln1", "qkv.weight", "qkv.bias", "o.weight", "o.bias", "ln2", "gate_up.weight", "gate_up.bias",
                   "down.weight", "down.bias"))
            for i in range(cfg.num_layers)
        ]
        if self.parallel is not None:
            # Row-parallel biases are added once: by rank 0, into its partial sum before the all-reduce.
            if self.parallel.rank != 0:
                self.layers = [(ln1, qkv_w, qkv_b, o_w, None, ln2, gu_w, gu_b, down_w, None)
                               for ln1, qkv_w, qkv_b, o_w, _, ln2, gu_w, gu_b, down_w, _ in self.layers]
            self.vocab_start, self.vocab_stop, _ = vocab_range(cfg.vocab_size, cfg.tp, self.parallel.rank)
        self.rope = Rope(cfg, self.dtype, self.device)
        self.scale = cfg.head_dim ** -0.5
        #: The small operations of a layer (residual add + norm, rotary + head split, silu * up) as one fused CUDA
        #: kernel each (memory/kernels.py, csrc/kernels/layer_kernels.cu) instead of about 20 torch kernels a
        #: layer.
        self.fused_kernels = fused_kernels
        #: Matmuls of 1 to kernels.GEMV_MAX_ROWS rows as one warp-per-feature kernel each (memory/kernels.py gemv)
        #: instead of cuBLAS's, which at batch 1 splits some over K and adds a reduce kernel (LoadedModel.gemv_kernel:
        #: on where the kernels run, since an H200 measured it).
        self.gemv = gemv and self.device.type == "cuda"
        #: With gemv and fused_kernels: the norm before qkv and gate_up and the silu * up before down computed inside
        #: their gemv (kernels.gemv_norm, gemv_silu), one launch fewer each, wherever the matmul's input fits the
        #: kernel (kernels.gemv_staged_usable); at tp = 1 only.
        self.gemv_prologues = gemv_prologues and self.gemv and fused_kernels and self.parallel is None
        #: With fused_kernels: where every row of a step is the attention kernels' (decode steps, CUDA graphs), the
        #: rotation writes the keys and values straight into the cache (kernels.rope_qkv_to_cache): no write_kv. At
        #: tp = 1 only, as gemv_prologues (a shard's eager steps were not part of what was checked).
        self.rope_writes_kv = rope_writes_kv and fused_kernels and self.parallel is None
        if fused_kernels and not kernels_usable(self.device, self.dtype, cfg.head_dim):
            raise BackendUnavailableError(
                f"fused_kernels needs the CUDA kernels, a GPU and float32/16 or bfloat16 weights with a head_dim "
                f"multiple of 32 in [32, 256]; this model is {self.dtype} on {self.device}, head_dim "
                f"{cfg.head_dim}. Fix: set LoadedModel.fused_kernels = False", device=str(self.device))

    @classmethod
    def of(cls, lm, params: dict[str, torch.Tensor], parallel: ParallelGroup | None = None) -> "Model":
        """The model of a LoadedModel's weights, with the kernel choices it carries."""
        return cls(lm.config, params, parallel, fused_kernels=lm.fused_kernels, gemv=lm.gemv_kernel,
                   gemv_prologues=lm.gemv_prologues, rope_writes_kv=lm.rope_writes_kv)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 then scale in the model dtype, as the reference does.
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.cfg.rms_norm_eps)
        return w * y.to(x.dtype)

    def _add_rms(self, h: torch.Tensor, res: torch.Tensor | None, w: torch.Tensor) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
        """(the norm of h + res, h + res); res None: of h itself."""
        if self.fused_kernels:
            return kernels.add_rms_norm(h, w, self.cfg.rms_norm_eps, res)
        if res is not None:
            h = h + res
        return self._rms(h, w), h

    def _qkv_heads(self, qkv: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if self.fused_kernels:
            return kernels.rope_qkv(qkv, cos, sin, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        n, q_size, kv_size = qkv.shape[0], cfg.q_size, cfg.kv_size
        q = qkv[:, :q_size].view(n, cfg.num_heads, cfg.head_dim)
        k = qkv[:, q_size:q_size + kv_size].view(n, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[:, q_size + kv_size:].view(n, cfg.num_kv_heads, cfg.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.gemv and kernels.gemv_usable(x, w):
            return kernels.gemv(x, w, b)
        return F.linear(x, w, b)

    def _norm_linear(self, h: torch.Tensor, res: torch.Tensor | None, ln: torch.Tensor, w: torch.Tensor,
                     b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(linear(norm(h + res)), h + res): one kernel with gemv_prologues, else _add_rms then _linear."""
        if self.gemv_prologues and kernels.gemv_staged_usable(h, w):
            return kernels.gemv_norm(h, ln, self.cfg.rms_norm_eps, w, b, res)
        x, h = self._add_rms(h, res, ln)
        return self._linear(x, w, b), h

    def _silu_linear(self, gu: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.gemv_prologues and kernels.gemv_staged_usable(gu, w):
            return kernels.gemv_silu(gu, w, b)
        return self._linear(self._silu_mul(gu), w, b)

    def _silu_mul(self, gu: torch.Tensor) -> torch.Tensor:
        if self.fused_kernels:
            return kernels.silu_mul(gu)
        g, u = gu.chunk(2, dim=-1)
        return F.silu(g) * u

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMeta, cache: torch.Tensor,
                layer_offsets: list[tuple[int, int]]) -> torch.Tensor:
        """Hidden states [N, hidden] after the final norm. cache: the KV rows; layer_offsets[i] = (K, V) row
        offsets of layer i (see attention.py). Each residual add happens in the norm after it (``_add_rms``), so
        that fused_kernels makes the two one launch."""
        par, cfg = self.parallel, self.cfg
        h = F.embedding(input_ids, self.embed) if par is None else self._embed_shard(input_ids)
        cos, sin = self.rope.cos_sin(positions)
        res = None  # the last sublayer's output, not yet added into h
        for i, (ln1, qkv_w, qkv_b, o_w, o_b, ln2, gu_w, gu_b, down_w, down_b) in enumerate(self.layers):
            qkv, h = self._norm_linear(h, res, ln1, qkv_w, qkv_b)
            if self.rope_writes_kv and meta.all_paged(qkv.shape[0]):
                q, k, v = kernels.rope_qkv_to_cache(qkv, cos, sin, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                                    cache, meta.write_rows, *layer_offsets[i]), None, None
            else:
                q, k, v = self._qkv_heads(qkv, cos, sin)
            a = attend(meta, q, k, v, cache, *layer_offsets[i], self.scale)
            o = self._linear(a, o_w, o_b)
            if par is not None:
                par.all_reduce(o)
            gu, h = self._norm_linear(h, o, ln2, gu_w, gu_b)
            res = self._silu_linear(gu, down_w, down_b)
            if par is not None:
                par.all_reduce(res)
        return self._add_rms(h, res, self.norm)[0]

    def _embed_shard(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Ids outside this rank's vocabulary rows embed as zeros, so the sum over ranks is the one real row.
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.vocab_stop - self.vocab_start)
        h = F.embedding(local.masked_fill(outside, 0), self.embed)
        h.masked_fill_(outside[:, None], 0)
        return self.parallel.all_reduce(h)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, vocab] float32 logits (on every rank of a tensor-parallel instance)."""
        out = self._linear(hidden, self.lm_head, None)
        if self.parallel is not None:
            out = self.parallel.all_gather(out)[:, :self.cfg.vocab_size]
        return out.float()
