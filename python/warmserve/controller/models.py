"""What the controller knows of each served model: its name, tokenizer, context length and sizes for the policy.

Read from the checkpoint's own files (config.json, *.safetensors, tokenizer.json) so the controller process needs
no torch: it only tokenizes and plans.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from warmserve.config import ModelSpec
from warmserve.engine.arch import UnsupportedModelError, architecture, check_weight_sizes, config_value, json_object
from warmserve.engine.safetensors_header import CheckpointError
from warmserve.errors import InvalidArgumentError
from warmserve.geometry import DTYPE_BYTES, kv_bytes_per_token


def load_tokenizer(path: str):
    """The engine's tokenizer (with the chat template). warmserve.engine.tokenizer needs no torch, so the
    controller, which only tokenizes and plans, stays free of it."""
    from warmserve.engine.tokenizer import Tokenizer

    return Tokenizer(path)


@dataclass
class ControllerModel:
    """A model the controller serves, as the controller knows it (the policy's view is ``policy.ModelInfo``,
    the simulator's ``sim.config.ServedModel``)."""

    spec: ModelSpec
    tokenizer: object
    #: Longest prompt plus output the model takes, tokens.
    max_context: int
    #: Bytes of all weights as stored (the dtype the worker loads at "auto").
    weight_bytes: int
    #: KV-cache bytes one token takes over all layers.
    kv_bytes_per_token: int
    #: Most characters one token covers (the longest vocabulary entry): bounds a text's tokens from its length.
    max_token_chars: int = 64

    @property
    def name(self) -> str:
        return self.spec.name


def controller_model(spec: ModelSpec) -> ControllerModel:
    path = os.path.abspath(os.path.expanduser(spec.path))
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise InvalidArgumentError(
            f"model {spec.name!r}: no checkpoint at {path} (config.json missing); run `warmserve models demo` "
            f"for the demo models or fix the path", path=path,
        )
    try:
        cfg = json_object(cfg_path)
    except CheckpointError as e:  # named, as every refusal here
        raise CheckpointError(f"model {spec.name!r}: {e.message}", **e.fields) from None
    # What the workers could never run is refused here, at start, not after three failed starts per request. The
    # top level, as the workers read it (found in review: a multimodal config's text_config passed here).
    try:
        arch = architecture(cfg)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"model {spec.name!r} ({path}): {e.message}", path=path, **e.fields) from None
    cfg = cfg.get("text_config", cfg)
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))
    weight_bytes = sum(os.path.getsize(f) for f in files)
    if weight_bytes <= 0:
        raise InvalidArgumentError(f"model {spec.name!r}: no *.safetensors files in {path}", path=path)
    check_weight_sizes(files)
    layers = int(cfg.get("num_hidden_layers", 1))
    heads = int(cfg.get("num_attention_heads", 1))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    inter = int(cfg.get("intermediate_size", heads))
    if spec.tp > 1 and (heads % spec.tp or kv_heads % spec.tp or inter % spec.tp):
        ok = [t for t in (1, 2, 4, 8) if not (heads % t or kv_heads % t or inter % t)]
        raise InvalidArgumentError(
            f"model {spec.name!r}: tp={spec.tp} does not split {heads} attention heads, {kv_heads} KV heads and an "
            f"intermediate size of {inter} evenly (each rank holds whole heads): use tp in {ok}",
            tp=spec.tp, num_heads=heads, num_kv_heads=kv_heads, intermediate_size=inter, valid_tp=ok)
    head_dim = int(cfg.get("head_dim") or int(cfg.get("hidden_size", heads)) // heads)
    dtype = spec.dtype if spec.dtype != "auto" else str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    if spec.dtype != "auto" and spec.dtype in DTYPE_BYTES:
        stored = DTYPE_BYTES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"), 4)
        weight_bytes = weight_bytes * DTYPE_BYTES[spec.dtype] // stored
    kv = kv_bytes_per_token(layers, kv_heads, head_dim, DTYPE_BYTES.get(dtype, 4))
    tokenizer = load_tokenizer(path)
    return ControllerModel(
        spec=ModelSpec(path=path, name=spec.name, tp=spec.tp, dtype=spec.dtype),
        tokenizer=tokenizer,
        max_token_chars=tokenizer.max_token_chars,
        max_context=int(config_value(cfg, "max_position_embeddings", arch)),
        weight_bytes=weight_bytes,
        kv_bytes_per_token=kv,
    )
