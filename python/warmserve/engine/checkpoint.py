"""Reading a Hugging Face checkpoint's safetensors files without loading them: tensor names, dtypes, shapes and
byte ranges, from each file's header (read and checked by ``safetensors_header``, which needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from warmserve.engine.safetensors_header import (FLOAT_DTYPES, CheckpointError, checkpoint_dtype, read_raw_header,
                                                 read_raw_tensors, safetensors_files)

#: The dtypes the engine loads. A checkpoint may carry tensors of other dtypes that no layer reads (position_ids,
#: masks, fp8 scales): their byte ranges are still checked against the file (safetensors_header.DTYPE_BYTES).
ST_DTYPES = {st: getattr(torch, name) for st, name in FLOAT_DTYPES.items()}

__all__ = ["CheckpointError", "ST_DTYPES", "TensorInfo", "checkpoint_dtype", "read_header", "read_tensors",
           "safetensors_files"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    #: File holding the tensor.
    path: str
    #: None for a dtype outside ST_DTYPES: refused only when the model needs the tensor (loader.plan_layout).
    dtype: torch.dtype | None
    shape: tuple[int, ...]
    #: Absolute byte offset of the tensor's data in the file.
    file_offset: int
    nbytes: int
    #: The dtype as the file names it ("F32", "I64", ...).
    st_dtype: str = ""


def read_header(path: str) -> dict[str, TensorInfo]:
    """Every tensor of the safetensors file at `path`, checked as ``safetensors_header.read_raw_header`` checks
    them (the controller's check at start is the same), with its torch dtype where the engine loads it."""
    return {name: TensorInfo(name, path, ST_DTYPES.get(t.st_dtype), t.shape, t.file_offset, t.nbytes, t.st_dtype)
            for name, t in read_raw_header(path).items()}


def read_tensors(path: str) -> dict[str, TensorInfo]:
    """All tensors of the checkpoint in directory `path` (one file or shards; safetensors_header.read_raw_tensors,
    which the controller's check at start reads too)."""
    return {name: TensorInfo(name, t.path, ST_DTYPES.get(t.st_dtype), t.shape, t.file_offset, t.nbytes, t.st_dtype)
            for name, t in read_raw_tensors(path).items()}
