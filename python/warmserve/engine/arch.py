"""What the engine runs, checked without torch: the controller refuses a checkpoint the workers could never load
when it starts (``controller.models.controller_model``), not at the first request, which found it after three
failed starts (found in review: a GPT-2 checkpoint, or a truncated shard, gave a server that said ready and
answered every request with a 500). The worker's own checks (``engine.config``, ``engine.checkpoint``) stay the
whole ones; these are the ones that need no tensor."""

from __future__ import annotations

import json
import os
import struct

from warmserve.errors import InvalidArgumentError, register

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


@register
class UnsupportedModelError(InvalidArgumentError):
    """A checkpoint's architecture or settings are outside what the engine implements."""


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


def check_weight_sizes(files: list[str]) -> None:
    """Each safetensors file holds the bytes its header promises (a copy or download cut short does not), or
    InvalidArgumentError naming the file, its size and what the header needs."""
    for path in files:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = None
            if 0 <= n <= size - 8:
                try:
                    header = json.loads(f.read(n))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    pass
        if not isinstance(header, dict):
            raise InvalidArgumentError(f"{path} is not a safetensors file (its {size} bytes hold no header): "
                                       "copy or download it again", path=path, size_bytes=size)
        ends = [m["data_offsets"][1] for k, m in header.items() if k != "__metadata__" and isinstance(m, dict)
                and isinstance(m.get("data_offsets"), list) and len(m["data_offsets"]) == 2
                and isinstance(m["data_offsets"][1], int)]
        need = 8 + n + max(ends, default=0)
        if need > size:
            raise InvalidArgumentError(f"{path} is {size} bytes, but its header describes {need}: the file was cut "
                                       "short (copy or download it again)", path=path, size_bytes=size,
                                       needed_bytes=need)
