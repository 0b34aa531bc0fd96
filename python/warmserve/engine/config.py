"""ModelConfig: the parts of a Hugging Face config.json the engine's math needs, parsed once and checked.

Both spellings of RoPE settings are read: the classic ``rope_theta`` + ``rope_scaling`` (what checkpoints on the
Hub carry) and transformers 5's ``rope_parameters``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from warmserve.engine.arch import UnsupportedModelError, architecture, config_value, eos_token_ids, json_object
from warmserve.engine.safetensors_header import CheckpointError
from warmserve.errors import InvalidArgumentError

ROPE_TYPES = ("default", "linear", "llama3", "yarn")
#: rope parameters each rope type cannot do without (transformers' required keys, less the ones it fills in).
ROPE_REQUIRED = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
                 "yarn": ("factor",)}
#: The dtypes the engine runs in. ``DTYPES`` maps them to torch's, imported on first use: the controller parses
#: config.json with ModelConfig.from_dict at start and must stay free of torch.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
#: config.json's size fields, each at least 1 where it is given (``_check_sizes``), with what each counts.
SIZE_FIELDS = {"num_hidden_layers": "decoder layers", "hidden_size": "the residual stream's width",
               "num_attention_heads": "query heads", "num_key_value_heads": "key/value heads",
               "intermediate_size": "the MLP's width", "vocab_size": "tokens in the vocabulary",
               "head_dim": "elements per head", "max_position_embeddings": "tokens of the model's context"}


def __getattr__(name: str):
    if name == "DTYPES":
        import torch

        globals()["DTYPES"] = dtypes = {n: getattr(torch, n) for n in DTYPE_NAMES}
        return dtypes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder, as config.json describes it."""

    #: One of ARCHITECTURES.
    architecture: str
    #: Tokens in the embedding table.
    vocab_size: int
    #: Width of the residual stream (elements).
    hidden_size: int
    #: Width of the SwiGLU hidden layer (elements).
    intermediate_size: int
    #: Decoder layers.
    num_layers: int
    #: Query heads.
    num_heads: int
    #: Key/value heads (grouped-query attention when below num_heads).
    num_kv_heads: int
    #: Elements per head.
    head_dim: int
    #: Longest context the model was configured for (tokens).
    max_position_embeddings: int
    #: RMSNorm epsilon.
    rms_norm_eps: float
    #: RoPE base.
    rope_theta: float
    #: RoPE scaling kind: one of ROPE_TYPES.
    rope_type: str = "default"
    #: The remaining rope scaling parameters (factor, low_freq_factor, ...), as sorted (key, value) pairs.
    rope_params: tuple = ()
    #: q/k/v projections carry a bias (Qwen2, or Llama's attention_bias).
    qkv_bias: bool = False
    #: o_proj carries a bias (Llama's attention_bias).
    o_bias: bool = False
    #: gate/up/down projections carry a bias (Llama's mlp_bias).
    mlp_bias: bool = False
    #: lm_head shares the embedding matrix.
    tie_word_embeddings: bool = False
    #: Attention looks back at most this many tokens (Mistral / Qwen2 sliding window); 0 = unlimited.
    sliding_window: int = 0
    #: Checkpoint dtype name ("float32", "bfloat16", "float16"); None when config.json names none (dtype "auto"
    #: then takes the checkpoint's first floating tensor's, as transformers does: loader.resolve_dtype).
    torch_dtype: str | None = "float32"
    #: End-of-sequence token ids (config.json, overridden by generation_config.json).
    eos_token_ids: tuple[int, ...] = ()
    #: Beginning-of-sequence token id, -1 when none.
    bos_token_id: int = -1
    #: Tensor-parallel ranks the model is split across. Above 1 this config describes one rank's shard
    #: (engine/parallel.py shard_config): num_heads, num_kv_heads and intermediate_size count that rank's share;
    #: the vocabulary and every other field stay the model's.
    tp: int = 1
    #: The raw config.json, for callers who need a field not parsed here.
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def rope_param(self, key: str, default=None):
        return dict(self.rope_params).get(key, default)

    def num_params(self) -> int:
        """Parameters of the model (of one rank's matrices when tp > 1, with the whole vocabulary)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        per_layer = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * i + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.num_layers * per_layer + h

    @classmethod
    def from_dict(cls, cfg: dict, generation_config: dict | None = None) -> "ModelConfig":
        arch = architecture(cfg)
        _check_sizes(cfg)
        n_heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        # a key left out takes the default of the architecture's config class (MistralConfig's 8, Qwen2Config's 32,
        # LlamaConfig's num_attention_heads), a null takes num_attention_heads (found in review: a Mistral config
        # without the key was refused)
        n_kv = int(config_value(cfg, "num_key_value_heads", arch) or n_heads)
        if n_heads % n_kv:
            # found in review: the refusal said neither which file nor what to do (grouped-query attention shares
            # each KV head among a whole number of query heads, so no engine runs such a config)
            raise UnsupportedModelError(
                f"config.json's num_attention_heads {n_heads} is not a multiple of its num_key_value_heads {n_kv}: "
                "fix config.json (the model's own values) or download the checkpoint again",
                num_heads=n_heads, num_kv_heads=n_kv)
        head_dim = int(cfg.get("head_dim") or hidden // n_heads)
        if head_dim < 1:  # no head_dim given, and hidden_size below num_attention_heads
            raise CheckpointError(
                f"config.json's hidden_size {hidden} is below its num_attention_heads {n_heads}, which leaves heads of "
                "0 elements: fix config.json (the model's own values) or download the checkpoint again",
                hidden_size=hidden, num_attention_heads=n_heads)

        rope = dict(cfg.get("rope_parameters") or {})
        scaling = cfg.get("rope_scaling") or {}
        rope.update(scaling)
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.pop("rope_type", rope.pop("type", "default")) or "default"
        if rope_type not in ROPE_TYPES:
            raise UnsupportedModelError(f"rope type {rope_type!r} is not supported: use one of {', '.join(ROPE_TYPES)}",
                                        rope_type=rope_type)
        partial = rope.pop("partial_rotary_factor", 1.0)
        if float(partial) != 1.0:
            # found in review: the refusal named neither the value nor a way on (the engine rotates whole heads)
            raise UnsupportedModelError(
                f"config.json's rope partial_rotary_factor is {partial}: only 1 (rotary embedding over the whole head) "
                "is supported; serve a model that rotates whole heads (no partial_rotary_factor, or 1)",
                rope_params=rope, partial_rotary_factor=partial)
        max_pos = int(config_value(cfg, "max_position_embeddings", arch))
        if rope_type in ("llama3", "yarn"):
            # transformers' standardize_rope_params: a top-level original_max_position_embeddings wins over the rope
            # dict's, which wins over max_position_embeddings (found in review: the top-level key was ignored)
            top = cfg.get("original_max_position_embeddings")
            if top is not None:
                rope["original_max_position_embeddings"] = top
            elif rope.get("original_max_position_embeddings") is None:
                rope["original_max_position_embeddings"] = max_pos
        _check_rope_params(rope_type, rope)
        _check_rope_values(theta, rope_type, rope, head_dim, cfg.get("rms_norm_eps", 1e-6))

        sliding = 0
        # transformers' Mistral slides on every layer (on the layers layer_types names, when config.json has it:
        # transformers runs such a config as Ministral), Qwen2 when use_sliding_window says so, Llama never (its
        # attention reads no window, whatever config.json holds)
        window = config_value(cfg, "sliding_window", arch)
        _check_sliding_layers_have_a_window(cfg, arch, window)
        if window and (arch == "MistralForCausalLM" or (arch == "Qwen2ForCausalLM" and cfg.get("use_sliding_window"))):
            sliding = int(window) if _all_layers_slide(cfg, arch) else 0

        # Only transformers' Llama reads attention_bias/mlp_bias; Qwen2 has a fixed q/k/v bias and Mistral none,
        # whatever its config.json says (its checkpoints hold no such tensors).
        llama_attn_bias = arch == "LlamaForCausalLM" and bool(cfg.get("attention_bias", False))

        eos = (generation_config or {}).get("eos_token_id", cfg.get("eos_token_id"))
        eos_ids = eos_token_ids(eos, "generation_config.json or config.json")
        bos = (generation_config or {}).get("bos_token_id", cfg.get("bos_token_id"))
        dtype = cfg.get("torch_dtype") or cfg.get("dtype")
        dtype = None if dtype is None else str(dtype).replace("torch.", "")
        if dtype is not None and dtype not in DTYPE_NAMES:
            raise UnsupportedModelError(f"checkpoint dtype {dtype!r} is not supported: use one of "
                                        f"{', '.join(DTYPE_NAMES)}", dtype=dtype)
        return cls(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=n_heads,
            num_kv_heads=n_kv,
            head_dim=head_dim,
            max_position_embeddings=max_pos,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_type=rope_type,
            rope_params=tuple(sorted((k, v) for k, v in rope.items() if v is not None)),
            qkv_bias=arch == "Qwen2ForCausalLM" or llama_attn_bias,
            o_bias=llama_attn_bias,
            mlp_bias=arch == "LlamaForCausalLM" and bool(cfg.get("mlp_bias", False)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=sliding,
            torch_dtype=dtype,
            eos_token_ids=eos_ids,
            bos_token_id=-1 if bos is None else int(bos),
            raw=cfg,
        )

    @classmethod
    def from_dir(cls, path: str) -> "ModelConfig":
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise InvalidArgumentError(f"{path!r} has no config.json: point at a Hugging Face checkpoint directory",
                                       path=path)
        gen_path = os.path.join(path, "generation_config.json")
        return cls.from_dict(json_object(cfg_path), json_object(gen_path) if os.path.isfile(gen_path) else None)


def _check_sizes(cfg: dict) -> None:
    """Refuse a size field below 1 (``SIZE_FIELDS``). Found in review: ``num_hidden_layers: -1`` (or 0) was
    accepted, and the model prewarmed (only its embeddings) and served garbage; a num_key_value_heads of 0 was read
    as num_attention_heads. A field left out or null takes its default where it is read, and one that is no number
    is refused there. A true or a fraction is refused too: int() made them 1 and 8 of 8.5 (found in review: a
    num_hidden_layers of true served one layer of eight)."""
    for key, what in SIZE_FIELDS.items():
        value = cfg.get(key)
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise CheckpointError(
                f"config.json's {key} is {json.dumps(value)}: it counts {what}, so it must be a whole number; fix "
                "config.json (the model's own value, as its original config.json says) or download the checkpoint "
                "again",
                **{key: value})
        try:
            n = None if value is None else int(value)
        except (TypeError, ValueError):
            continue
        if n is not None and n < 1:
            raise CheckpointError(
                f"config.json's {key} is {value!r}: it counts {what}, so it must be at least 1; fix config.json "
                "(the model's own value, as its original config.json says) or download the checkpoint again",
                **{key: value})


def _check_sliding_layers_have_a_window(cfg: dict, arch: str, window) -> None:
    """Refuse a layer_types that names sliding_attention layers when the config gives them no window: Mistral's
    sliding_window null or 0, Qwen2's the same or use_sliding_window false. transformers 5 cannot run it: the first
    forward with a KV cache fails with a bare TypeError (DynamicSlidingWindowLayer(None)), or a mask size mismatch for
    0 (found in review: the engine ran every layer with no window instead)."""
    kinds = cfg.get("layer_types")
    if arch not in ("MistralForCausalLM", "Qwen2ForCausalLM") or not isinstance(kinds, list):
        return
    sliding_layers = [i for i, k in enumerate(kinds) if k == "sliding_attention"]
    qwen2_off = arch == "Qwen2ForCausalLM" and not cfg.get("use_sliding_window")
    if not sliding_layers or (window and not qwen2_off):
        return
    why = ("use_sliding_window is false" if window and qwen2_off
           else f"sliding_window is {'null' if window is None else window}")
    raise UnsupportedModelError(
        f"layer_types names {len(sliding_layers)} sliding_attention layer(s) of {len(kinds)} ({sliding_layers}) but "
        f"{why}: those layers have no window (transformers cannot run this config either); set sliding_window to "
        f"the model's window{' and use_sliding_window to true' if qwen2_off else ''}, or make those layer_types "
        "entries full_attention", sliding_window=window, layer_types=kinds, sliding_layers=sliding_layers)


def _all_layers_slide(cfg: dict, arch: str) -> bool:
    """Whether every layer of a Qwen2 or Mistral model with a sliding window uses it (False: none does). As
    transformers reads it: ``layer_types`` when present, else Qwen2's layer i slides when i >= max_window_layers
    (default 28) and every Mistral layer does. The engine has one window for all layers, so a mix is refused."""
    n_layers = int(cfg["num_hidden_layers"])
    mwl = cfg.get("max_window_layers")
    mwl = 28 if mwl is None else int(mwl)
    qwen2 = arch == "Qwen2ForCausalLM"
    kinds = cfg.get("layer_types")
    if kinds is None:
        kinds = ["sliding_attention" if i >= mwl or not qwen2 else "full_attention" for i in range(n_layers)]
    elif not isinstance(kinds, list) or len(kinds) != n_layers:
        raise UnsupportedModelError(f"layer_types must list one attention kind per layer ({n_layers}); got {kinds!r}",
                                    layer_types=kinds, num_hidden_layers=n_layers)
    # transformers' remap_legacy_layer_types reads the old name "attention" as full_attention
    kinds = ["full_attention" if k == "attention" else k for k in kinds]
    unknown = sorted(set(kinds) - {"full_attention", "sliding_attention"})
    if unknown:
        raise UnsupportedModelError(f"layer_types {unknown} are not supported: use full_attention or "
                                    "sliding_attention", layer_types=kinds)
    if len(set(kinds)) > 1:
        sliding_layers = [i for i, k in enumerate(kinds) if k == "sliding_attention"]
        fix = ("set max_window_layers to 0 (all slide) or to num_hidden_layers (none), or use_sliding_window to "
               "false" if qwen2 else "make every layer_types entry sliding_attention, or every one full_attention")
        raise UnsupportedModelError(
            f"{'Qwen2' if qwen2 else 'Mistral'} sliding window on only some layers ({len(sliding_layers)} of "
            f"{n_layers}, from "
            f"{'layer_types' if cfg.get('layer_types') is not None else f'max_window_layers={mwl}'}) is not "
            f"supported: the engine runs one attention kind on every layer; {fix}",
            max_window_layers=mwl, layer_types=cfg.get("layer_types"), sliding_layers=sliding_layers)
    return kinds[0] == "sliding_attention" if kinds else False


def _check_rope_params(rope_type: str, rope: dict) -> None:
    """Refuse a rope_scaling that lacks a parameter its formula needs, or has a non-number there, while the config
    is read (otherwise the engine would fail with a bare TypeError after the weights were loaded)."""
    missing = [k for k in ROPE_REQUIRED.get(rope_type, ()) if rope.get(k) is None]
    if missing:
        raise UnsupportedModelError(
            f"rope_scaling of type {rope_type!r} lacks {', '.join(missing)}: add "
            f"{'them' if len(missing) > 1 else 'it'} to rope_scaling (or rope_parameters) in config.json",
            rope_type=rope_type, missing=missing)
    optional = YARN_OPTIONAL if rope_type == "yarn" else ()
    bad = {k: rope[k] for k in (*ROPE_REQUIRED.get(rope_type, ()), *optional, "original_max_position_embeddings")
           if rope.get(k) is not None and (isinstance(rope[k], bool) or not isinstance(rope[k], (int, float)))}
    if bad:
        raise UnsupportedModelError(f"rope_scaling of type {rope_type!r} has non-numeric {bad}: these must be numbers",
                                    rope_type=rope_type, rope_params=bad)


#: yarn's optional rope_scaling numbers (rope.py reads them when given)
YARN_OPTIONAL = ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor")


def _check_rope_values(theta, rope_type: str, rope: dict, head_dim: int, eps) -> None:
    """Refuse values the rotary embedding or the norm cannot run with. Found in review: a linear or yarn factor of
    0, rope_theta 0 or rms_norm_eps -1 started, and every answer was NaN logits served as token 0 with HTTP 200;
    llama3's low_freq_factor 0, yarn at rope_theta 1 and an odd head_dim started and failed every request with a
    bare ZeroDivisionError or a tensor-size mismatch. transformers' own checks take factors of at least 1."""
    def refuse(what: str, **fields):
        raise UnsupportedModelError(f"config.json: {what}: fix config.json (the model's own values, as its original "
                                    "config.json says) or download the checkpoint again", **fields)

    if not theta > 1 or math.isinf(theta):
        refuse(f"rope_theta is {theta}, it must be a finite number above 1", rope_theta=theta)
    if head_dim % 2:
        refuse(f"head_dim {head_dim} is odd, and rotary embeddings rotate pairs of elements", head_dim=head_dim)
    try:
        eps_ok = not isinstance(eps, bool) and 0 <= float(eps) < 1
    except (TypeError, ValueError):
        eps_ok = False
    if not eps_ok:
        refuse(f"rms_norm_eps is {eps!r}, it must be a number from 0 to below 1", rms_norm_eps=eps)
    factor = rope.get("factor") if rope_type in ROPE_REQUIRED else None  # a number there (_check_rope_params)
    if factor is not None and not 1 <= factor < math.inf:
        refuse(f"rope_scaling's factor is {factor}, it must be at least 1", rope_type=rope_type, factor=factor)
    if rope_type == "llama3" and not 0 < rope["low_freq_factor"] < rope["high_freq_factor"]:
        refuse(f"rope_scaling's low_freq_factor {rope['low_freq_factor']} must be above 0 and below its "
               f"high_freq_factor {rope['high_freq_factor']}", rope_type=rope_type)
    if rope_type == "yarn" and any(rope.get(k) is not None and not 0 < rope[k] < math.inf
                                   for k in ("beta_fast", "beta_slow")):
        refuse(f"rope_scaling's beta_fast {rope.get('beta_fast')} and beta_slow {rope.get('beta_slow')} must be "
               "above 0", rope_type=rope_type)
