"""Reading a Hugging Face checkpoint's safetensors files without loading them: tensor names, dtypes, shapes and
byte ranges, from each file's header (8-byte little-endian header length, then a JSON table whose
``data_offsets`` are relative to the end of the header)."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import torch

from warmserve.errors import InvalidArgumentError, register

ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
#: Bytes per element of the safetensors dtypes the engine does not load: a checkpoint may carry such tensors that
#: no layer reads (position_ids, masks, fp8 scales); their byte ranges are still checked against the file.
OTHER_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                     "I32": 4, "U32": 4, "I64": 8, "U64": 8, "C64": 8}
#: Largest header we accept; real ones are a few hundred KiB.
MAX_HEADER_BYTES = 100 << 20


@register
class CheckpointError(InvalidArgumentError):
    """A checkpoint file is missing, malformed or does not match config.json."""


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
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)", path=path)
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path}: header length {n} does not fit the {size}-byte file", path=path)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: header is not JSON ({e})", path=path) from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is JSON {type(header).__name__}, not an object mapping tensor names to "
                              "entries (not a safetensors file, or a damaged one)", path=path)
    data_start = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: tensor {name}'s entry is {meta!r}, not an object with dtype, shape and "
                                  "data_offsets", path=path, tensor=name)
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in meta]
        if missing:
            raise CheckpointError(f"{path}: tensor {name}'s entry lacks {', '.join(missing)}", path=path, tensor=name,
                                  missing=missing)
        if not isinstance(meta["dtype"], str):
            raise CheckpointError(f"{path}: tensor {name} has dtype {meta['dtype']!r}, not a safetensors dtype name",
                                  path=path, tensor=name)
        dt = ST_DTYPES.get(meta["dtype"])
        shape, offsets = meta["shape"], meta["data_offsets"]
        if not _int_list(shape) or min(shape, default=0) < 0 or not _int_list(offsets) or len(offsets) != 2 \
                or offsets[0] < 0:
            raise CheckpointError(f"{path}: tensor {name} has shape {shape!r} and data_offsets {offsets!r}; they must "
                                  "be lists of non-negative integers (data_offsets: [begin, end])", path=path,
                                  tensor=name)
        shape = tuple(shape)
        begin, end = offsets
        esize = dt.itemsize if dt is not None else OTHER_DTYPE_BYTES.get(meta["dtype"])
        # a dtype unknown here (sub-byte, or newer than this list) has no size to check: its range must fit the file
        nbytes = end - begin if esize is None else math.prod(shape) * esize
        if end < begin or end - begin != nbytes or data_start + end > size:
            raise CheckpointError(f"{path}: tensor {name} byte range [{begin}, {end}) is inconsistent with shape "
                                  f"{list(shape)} or the file size {size}", path=path, tensor=name)
        out[name] = TensorInfo(name, path, dt, shape, data_start + begin, nbytes, meta["dtype"])
    return out


def _int_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in x)


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
