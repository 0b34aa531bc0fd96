"""What the engine runs, checked without torch: the controller refuses a checkpoint the workers could never load
when it starts (``controller.models.controller_model``), not at the first request, which found it after three
failed starts (found in review: a GPT-2 checkpoint, or a truncated shard, gave a server that said ready and
answered every request with a 500). The worker's own checks (``engine.config``, ``engine.checkpoint``) stay the
whole ones; these are the ones that need no tensor."""

from __future__ import annotations

import json
import logging
import re

from warmserve.engine.safetensors_header import FLOAT_DTYPES, CheckpointError
from warmserve.errors import InvalidArgumentError, register

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
#: Bytes of each of lm_head.weight and the embedding that warn_if_tied_head_differs reads: whole rows spread over
#: the vocabulary, so a 1 GiB head costs milliseconds (an untied head trained apart differs in about every row).
TIED_HEAD_SAMPLE_BYTES = 4 << 20

log = logging.getLogger(__name__)


@register
class UnsupportedModelError(InvalidArgumentError):
    """A checkpoint's architecture or settings are outside what the engine implements."""


@register
class TensorParallelError(UnsupportedModelError):
    """A model cannot be split the asked number of ways (heads or SwiGLU width not divisible by tp). Defined here,
    beside its base and with no torch, so that a controller decoding it from a worker does not import torch
    (``errors.from_wire``; found in review: 2-3 s of its event loop and 180 MiB)."""


def architecture(cfg: dict) -> str:
    """The one of ARCHITECTURES a config.json dict describes, or UnsupportedModelError (an unknown architecture, or
    an MLP activation other than SwiGLU's silu)."""
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None) or _BY_MODEL_TYPE.get(cfg.get("model_type", ""))
    if arch is None:
        raise UnsupportedModelError(
            f"architecture {archs or cfg.get('model_type')!r} is not supported: the engine runs "
            f"{', '.join(ARCHITECTURES)}", architectures=list(archs))
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(f"hidden_act {act!r} is not supported (SwiGLU with silu only)", hidden_act=act)
    return arch


#: What transformers' configuration class of each architecture gives a key that config.json leaves out, where the
#: classes differ (transformers 5.24 LlamaConfig, Qwen2Config, MistralConfig; found in review: a Mistral config
#: without sliding_window attended over the whole context where transformers slides over 4096 tokens, every
#: missing context length was Llama's 2048, and a missing num_key_value_heads was num_attention_heads, Llama's).
ARCH_DEFAULTS = {"LlamaForCausalLM": {"max_position_embeddings": 2048},
                 "Qwen2ForCausalLM": {"max_position_embeddings": 32768, "sliding_window": 4096,
                                      "num_key_value_heads": 32},
                 "MistralForCausalLM": {"max_position_embeddings": 131072, "sliding_window": 4096,
                                        "num_key_value_heads": 8}}


def config_value(cfg: dict, key: str, arch: str | None = None):
    """``cfg[key]``, or what transformers' class for the architecture (``arch``, else ``cfg``'s) gives it when
    config.json leaves it out: None where that class has no default of its own here."""
    if key in cfg:
        return cfg[key]
    return ARCH_DEFAULTS[arch or architecture(cfg)].get(key)


def json_object(path: str) -> dict:
    """The JSON object in a checkpoint's file (config.json, generation_config.json), or CheckpointError naming it:
    the controller's check at start and the worker's load read them alike (found in review: a corrupt
    generation_config.json failed a load with a bare JSONDecodeError)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): fix or re-download it", path=path) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds JSON {type(obj).__name__}, not the object of a Hugging Face config "
                              "file", path=path)
    return obj


def eos_token_ids(eos, source: str) -> tuple[int, ...]:
    """The end-of-sequence ids a config's eos_token_id holds (an id, a list of ids or null), or CheckpointError
    naming `source` (found in review: a null in the list failed the start with a bare TypeError)."""
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or i < 0]
    if bad:
        raise CheckpointError(f"{source}: eos_token_id {eos!r} holds {bad!r}; it must be a token id or a list of "
                              "token ids (non-negative integers)", eos_token_id=eos)
    return tuple(ids)


def hf_tensor_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for a Llama-family ``config.ModelConfig``, in checkpoint order: the tensors the
    worker maps, and all it maps."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h)}
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "self_attn.q_proj.weight"] = (cfg.num_heads * d, h)
        out[p + "self_attn.k_proj.weight"] = (cfg.num_kv_heads * d, h)
        out[p + "self_attn.v_proj.weight"] = (cfg.num_kv_heads * d, h)
        if cfg.qkv_bias:
            out[p + "self_attn.q_proj.bias"] = (cfg.num_heads * d,)
            out[p + "self_attn.k_proj.bias"] = (cfg.num_kv_heads * d,)
            out[p + "self_attn.v_proj.bias"] = (cfg.num_kv_heads * d,)
        out[p + "self_attn.o_proj.weight"] = (h, cfg.num_heads * d)
        if cfg.o_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "mlp.gate_proj.weight"] = (i, h)
        out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
        if cfg.mlp_bias:
            out[p + "mlp.gate_proj.bias"] = (i,)
            out[p + "mlp.up_proj.bias"] = (i,)
            out[p + "mlp.down_proj.bias"] = (h,)
    out["model.norm.weight"] = (h,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, h)
    return out


def check_tensors(cfg, tensors: dict) -> dict[str, tuple[int, ...]]:
    """hf_tensor_shapes(cfg), once every tensor there is in `tensors` (name -> RawTensor or checkpoint.TensorInfo)
    in a dtype the engine loads and the shape config.json implies; CheckpointError otherwise. The worker's check
    (loader.plan_layout) and the controller's at start are this one."""
    expected = hf_tensor_shapes(cfg)
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s) config.json calls for, e.g. {missing[:3]}",
                              missing=missing[:10])
    unloadable = [n for n in expected if tensors[n].st_dtype not in FLOAT_DTYPES]
    if unloadable:
        n = unloadable[0]
        raise CheckpointError(f"tensor {n} has dtype {tensors[n].st_dtype!r}, which the engine does not load "
                              f"({len(unloadable)} such tensor(s) the model needs); supported: "
                              f"{', '.join(FLOAT_DTYPES)}", tensor=n, dtype=tensors[n].st_dtype,
                              tensors=unloadable[:10])
    for n, shape in expected.items():
        if tensors[n].shape != shape:
            raise CheckpointError(f"tensor {n} has shape {list(tensors[n].shape)}, config.json implies {list(shape)}"
                                  f"{_shape_hint(cfg, n)}", tensor=n)
    _check_no_layers_past(cfg.num_layers, tensors)
    # Under a tied config an lm_head.weight in the files is not read: the head is the embedding, as vLLM's loaders
    # do (such a copy is common after fine-tuning or quantisation tools). Refusing it, as this check did for a
    # while, refused valid checkpoints (found in review).
    return expected


def _shape_hint(cfg, name: str) -> str:
    """What config.json sets a mismatched tensor's rows by, for the K and V projections: found in review, a config
    without num_key_value_heads (read as num_attention_heads, as transformers does) failed on k_proj's shape with no
    word of the key."""
    if not name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
        return ""
    return (f" (its rows are num_key_value_heads {cfg.num_kv_heads} x head_dim {cfg.head_dim}: check "
            f"num_key_value_heads, which is num_attention_heads where config.json leaves it out)")


_LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.")


def _check_no_layers_past(num_layers: int, tensors: dict) -> None:
    """Refuse decoder layers in the files past config.json's num_hidden_layers: the engine maps only the layers
    the config counts, so such a checkpoint ran its first layers alone and served noise with HTTP 200 (found in
    review: a num_hidden_layers of 4, or of true, over 8 layers of weights). vLLM's Llama loader fails on such a
    tensor (no parameter of that name), transformers drops it with a warning."""
    layers = {int(m.group(1)) for n in tensors if (m := _LAYER_TENSOR.match(n))}
    past = sorted(i for i in layers if i >= num_layers)
    if past:
        raise CheckpointError(
            f"checkpoint holds {len(past)} decoder layer(s) past config.json's num_hidden_layers {num_layers} "
            f"(model.layers.{past[0]} to model.layers.{past[-1]}), which the model would run without: set "
            f"num_hidden_layers to {past[-1] + 1} if the weights are right, or use the config.json saved with them",
            num_hidden_layers=num_layers, layers_past=past[:10])


def warn_if_tied_head_differs(checkpoint: str, embed, head) -> None:
    """Log a WARNING naming `checkpoint` when its config ties the head to the embedding but its files hold an
    lm_head.weight (`head`, a RawTensor or TensorInfo like `embed`) with other bytes: the engine runs the embedding
    (check_tensors), transformers the file's head, so the two answer differently (found in review). Compared
    bitwise on rows spread over the vocabulary, at most TIED_HEAD_SAMPLE_BYTES of each."""
    if embed.st_dtype == head.st_dtype and embed.shape == head.shape and _rows_equal(embed, head):
        return
    log.warning("%s: tie_word_embeddings is true but its lm_head.weight (%s %s) differs from "
                "model.embed_tokens.weight (%s %s); the engine uses the embedding as the head, as vLLM does, where "
                "transformers uses lm_head.weight: set tie_word_embeddings to false in config.json to run the "
                "file's head", checkpoint, head.st_dtype, list(head.shape), embed.st_dtype, list(embed.shape))


def _rows_equal(a, b) -> bool:
    rows = a.shape[0] if a.shape else 0
    row_bytes = a.nbytes // rows if rows else 0
    if not row_bytes:
        return True
    n = max(1, min(rows, TIED_HEAD_SAMPLE_BYTES // row_bytes))
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        for i in range(n):
            r = i * rows // n
            fa.seek(a.file_offset + r * row_bytes)
            fb.seek(b.file_offset + r * row_bytes)
            if fa.read(row_bytes) != fb.read(row_bytes):
                return False
    return True
