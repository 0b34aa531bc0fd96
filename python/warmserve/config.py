"""Configuration shared across processes. Each concern has its own frozen dataclass; units are in field names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A model the cluster serves."""

    #: Directory of a Hugging Face checkpoint (config.json, *.safetensors, tokenizer.json).
    path: str
    #: Name clients use in requests; defaults to the directory's base name.
    name: str = ""
    #: Tensor-parallel degree: how many devices one instance spans.
    tp: int = 1
    #: Weight dtype in memory: "float32", "bfloat16" or "float16"; "auto" keeps the checkpoint's.
    dtype: str = "auto"

    def __post_init__(self):
        if not self.name:
            import os

            object.__setattr__(self, "name", os.path.basename(os.path.normpath(self.path)))
        if self.tp not in (1, 2, 4, 8):
            raise ValueError(f"ModelSpec {self.name!r}: tp must be 1, 2, 4 or 8, got {self.tp}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"ModelSpec {self.name!r}: dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
