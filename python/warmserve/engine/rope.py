"""Rotary position embeddings: inverse frequencies for each rope_scaling kind, and a cos/sin table.

Formulas: RoFormer (default), position interpolation (linear: positions divided by the factor), Llama 3.1's
frequency-band rescaling (llama3) and YaRN (ramp between interpolation and extrapolation per frequency band, with
an attention temperature folded into cos/sin). Angles are computed in float32 (position x inverse frequency, as
the reference does) and cast once, so fp32 runs match a float32 reference closely.
"""

from __future__ import annotations

import math

import torch

from warmserve.engine.config import ModelConfig, UnsupportedModelError


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def inv_freq_and_scale(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim/2] float32, factor applied to cos and sin)."""
    d, base = cfg.head_dim, cfg.rope_theta
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    kind, p = cfg.rope_type, cfg.rope_param
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / float(p("factor")), 1.0
    if kind == "llama3":
        factor, low, high = float(p("factor")), float(p("low_freq_factor")), float(p("high_freq_factor"))
        old_ctx = float(p("original_max_position_embeddings") or cfg.max_position_embeddings)
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        mid = (1 - smooth) * inv / factor + smooth * inv
        out = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        is_mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        return torch.where(is_mid, mid, out), 1.0
    if kind == "yarn":
        factor = float(p("factor"))
        old_ctx = float(p("original_max_position_embeddings") or cfg.max_position_embeddings)
        beta_fast, beta_slow = float(p("beta_fast") or 32), float(p("beta_slow") or 1)
        attn = p("attention_factor")
        if attn is None:
            ms, ms_all = p("mscale"), p("mscale_all_dim")
            attn = (_yarn_mscale(factor, ms) / _yarn_mscale(factor, ms_all)) if ms and ms_all else _yarn_mscale(factor)

        def corr_dim(n_rot: float) -> float:
            return (d * math.log(old_ctx / (n_rot * 2 * math.pi))) / (2 * math.log(base))

        lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
        if p("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, d - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        extrap = 1 - ramp
        inv_interp = inv / factor
        return inv_interp * (1 - extrap) + inv * extrap, float(attn)
    raise UnsupportedModelError(f"rope type {kind!r} is not implemented", rope_type=kind)


class Rope:
    """cos/sin for the positions of one step (computed per step, so no table grows with the context), laid out
    as the two halves HF's rotate_half expects."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device | str = "cpu"):
        inv, self.scale = inv_freq_and_scale(cfg)
        self.inv_freq = inv.to(device)
        self.dtype = dtype

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 1, head_dim] cos and sin for positions [N]."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.scale != 1.0:
            cos, sin = cos * self.scale, sin * self.scale
        return cos.to(self.dtype).unsqueeze(1), sin.to(self.dtype).unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, head_dim] rotated by cos/sin [N, 1, head_dim]."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin
