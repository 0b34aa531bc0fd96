"""Reading a Hugging Face checkpoint's safetensors files without loading them: tensor names, dtypes, shapes and
byte ranges, from each file's header (read and checked by ``safetensors_header``, which needs no torch)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from warmserve.engine.safetensors_header import CheckpointError, read_raw_header

#: The dtypes the engine loads. A checkpoint may carry tensors of other dtypes that no layer reads (position_ids,
#: masks, fp8 scales): their byte ranges are still checked against the file (safetensors_header.DTYPE_BYTES).
ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}

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


def safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f).get("weight_map") or {}
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a JSON object with a weight_map ({e})", path=path) from e
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names", path=path)
        files = sorted({_shard_name(path, f) for f in weight_map.values()})
        missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise CheckpointError(f"{path}: index names shard(s) {missing} that are not there", path=path)
        return [os.path.join(path, f) for f in files]
    if os.path.isfile(single):
        return [single]
    raise CheckpointError(f"{path} holds no model.safetensors or model.safetensors.index.json: point at a "
                          "Hugging Face checkpoint saved with safetensors", path=path)


def _shard_name(path: str, name) -> str:
    """A shard file name from the index, confined to the checkpoint directory: a relative path that stays inside
    it once normalised. The check is on the name, not on where it resolves: hub caches keep shards as symlinks
    into a blob directory beside the snapshot, and whoever owns the directory may link what they like; a name in
    a downloaded index must not reach outside it (``../``, an absolute path)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"{path}: the index names a shard {name!r} that is not a file name", path=path,
                              shard=repr(name))
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise CheckpointError(
            f"{path}: the index names shard {name!r}, outside the checkpoint directory; shard names must be "
            "relative paths inside it (fix or re-download model.safetensors.index.json)", path=path, shard=name)
    return norm


def read_tensors(path: str) -> dict[str, TensorInfo]:
    """All tensors of the checkpoint in directory `path` (one file or shards)."""
    out: dict[str, TensorInfo] = {}
    for f in safetensors_files(path):
        for name, info in read_header(f).items():
            if name in out:
                # the two copies may differ; taking either one silently would hide a broken (re-)sharding
                raise CheckpointError(f"{path}: tensor {name} is in both {os.path.basename(out[name].path)} and "
                                      f"{os.path.basename(f)}; keep it in one shard", path=path, tensor=name,
                                      files=[out[name].path, f])
            out[name] = info
    return out


def checkpoint_dtype(tensors: dict[str, TensorInfo]) -> str:
    """The dtype transformers gives a checkpoint whose config.json names none ("auto"): that of the first floating
    tensor (fp8 aside: unknown here) in name order of the first shard file; float32 when it has none."""
    if not tensors:
        return "float32"
    first = min(ti.path for ti in tensors.values())  # shard files sort as their names (safetensors_files)
    for name in sorted(n for n, ti in tensors.items() if ti.path == first):
        dt = tensors[name].dtype
        if dt is not None and dt.is_floating_point:
            return str(dt).replace("torch.", "")
    return "float32"
