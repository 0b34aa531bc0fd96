"""A safetensors file's header, read and checked without torch: the one reader under the worker's load
(``engine.checkpoint``, which adds torch dtypes) and the controller's check at start (``engine.arch``), so both
refuse a malformed or cut-short file with the same words.

The format: an 8-byte little-endian header length, then a JSON object mapping tensor names to ``dtype``, ``shape``
and ``data_offsets`` ([begin, end), relative to the end of the header), and an optional ``__metadata__``."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

from warmserve.errors import InvalidArgumentError, register

#: Bytes per element of every safetensors dtype with a whole-byte element (the format's own list). A dtype outside
#: it (sub-byte, or newer than this list) has no size to check: its byte range must still fit the file.
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
               "F8_E8M0": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8, "C64": 8}
#: The dtypes the engine loads, by their safetensors names (checkpoint.ST_DTYPES maps them to torch's).
FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
#: Largest header we accept; real ones are a few hundred KiB.
MAX_HEADER_BYTES = 100 << 20


@register
class CheckpointError(InvalidArgumentError):
    """A checkpoint file is missing, malformed or does not match config.json."""


@dataclass(frozen=True)
class RawTensor:
    """One tensor's entry in a safetensors header, checked against the file."""
    name: str
    #: File holding the tensor.
    path: str
    #: The dtype as the file names it ("F32", "I64", ...).
    st_dtype: str
    shape: tuple[int, ...]
    #: Absolute byte offset of the tensor's data in the file.
    file_offset: int
    nbytes: int


def read_raw_header(path: str) -> dict[str, RawTensor]:
    """Every tensor entry of the safetensors file at `path`, or CheckpointError naming the file and what is wrong:
    no header, a header that is not a JSON object of well-formed entries, a byte range that disagrees with its
    dtype and shape, or one past the end of the file (then `size_bytes` and `needed_bytes`: a file cut short)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes): copy or download it "
                                  "again", path=path, size_bytes=size)
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path}: header length {n} does not fit the {size}-byte file (not a safetensors "
                                  "file, or a damaged one: copy or download it again)", path=path, size_bytes=size)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: header is not JSON ({e}; not a safetensors file, or a damaged one)",
                                  path=path) from e
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
        shape, offsets = meta["shape"], meta["data_offsets"]
        if not _int_list(shape) or min(shape, default=0) < 0 or not _int_list(offsets) or len(offsets) != 2 \
                or offsets[0] < 0:
            raise CheckpointError(f"{path}: tensor {name} has shape {shape!r} and data_offsets {offsets!r}; they must "
                                  "be lists of non-negative integers (data_offsets: [begin, end])", path=path,
                                  tensor=name)
        shape = tuple(shape)
        begin, end = offsets
        esize = DTYPE_BYTES.get(meta["dtype"])
        nbytes = end - begin if esize is None else math.prod(shape) * esize
        if end < begin or end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor {name} byte range [{begin}, {end}) is inconsistent with shape "
                                  f"{list(shape)} (dtype {meta['dtype']})", path=path, tensor=name)
        if data_start + end > size:
            need = data_start + max(_end(m) for k, m in header.items() if k != "__metadata__")
            raise CheckpointError(f"{path}: tensor {name} byte range [{begin}, {end}) ends past the file: it is {size} "
                                  f"bytes, but its header describes {need}: the file was cut short (copy or download "
                                  "it again)", path=path, tensor=name, size_bytes=size, needed_bytes=need)
        out[name] = RawTensor(name, path, meta["dtype"], shape, data_start + begin, nbytes)
    _check_contiguous(path, out, data_start)
    return out


def _check_contiguous(path: str, tensors: dict[str, RawTensor], data_start: int) -> None:
    """The byte ranges tile the data from 0 with no gap or overlap, as the safetensors library requires (found in
    review: two tensors over the same bytes loaded here as wrong weights where the library says "invalid offset")."""
    at = 0
    for t in sorted(tensors.values(), key=lambda t: (t.file_offset, t.nbytes)):
        begin = t.file_offset - data_start
        if begin != at:
            raise CheckpointError(
                f"{path}: tensor {t.name} starts at data offset {begin}, but the tensors before it end at {at}: "
                f"{'overlapping' if begin < at else 'non-contiguous'} byte ranges (a damaged or hand-edited header; "
                "save the file again with safetensors)", path=path, tensor=t.name, begin=begin, expected_begin=at)
        at = begin + t.nbytes


def safetensors_files(path: str) -> list[str]:
    """The safetensors files the worker maps from checkpoint directory `path`: those model.safetensors.index.json
    names, else model.safetensors; any other *.safetensors beside them is not part of the model."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:  # JSON is UTF-8 (RFC 8259), whatever the locale
                weight_map = json.load(f).get("weight_map") or {}
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a JSON object with a weight_map ({e})", path=path) from e
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names", path=path)
        files = sorted({_shard_name(path, f) for f in weight_map.values()})
        missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if missing:
            # found in review: no count and no fix (an interrupted download leaves some shards out)
            raise CheckpointError(f"{path}: index names shard(s) {missing} that are not there ({len(missing)} of "
                                  f"{len(files)} shards missing): download the checkpoint again, or copy those files "
                                  "into it", path=path, missing=missing, shards=len(files))
        return [os.path.join(path, f) for f in files]
    if os.path.isfile(single):
        return [single]
    # found in the review of real checkpoints: older repos hold PyTorch pickles only (pytorch_model.bin, sharded
    # with an index), which the engine does not read (a pickle runs code when loaded): say so, and how to convert
    pickles = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth")) and "model" in f) \
        if os.path.isdir(path) else []
    raise CheckpointError(
        f"{path} holds no model.safetensors or model.safetensors.index.json: " + (
            f"it holds PyTorch pickles ({', '.join(pickles[:3])}{', ...' if len(pickles) > 3 else ''}), which are "
            "not read; convert it once with transformers: `python -c \"import sys, transformers; "
            "transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2]); "
            "transformers.AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])\" SRC DST` "
            "(safetensors is its default format)" if pickles else
            "point at a Hugging Face checkpoint saved with safetensors"), path=path, pickles=pickles[:8])


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


def read_raw_tensors(path: str) -> dict[str, RawTensor]:
    """All tensors of the checkpoint in directory `path` (one file or shards), each file checked as
    read_raw_header checks it; a tensor in two files is refused."""
    out: dict[str, RawTensor] = {}
    for f in safetensors_files(path):
        for name, info in read_raw_header(f).items():
            if name in out:
                # the two copies may differ; taking either one silently would hide a broken (re-)sharding
                raise CheckpointError(f"{path}: tensor {name} is in both {os.path.basename(out[name].path)} and "
                                      f"{os.path.basename(f)}; keep it in one shard", path=path, tensor=name,
                                      files=[out[name].path, f])
            out[name] = info
    return out


def checkpoint_dtype(tensors: dict) -> str:
    """The dtype transformers gives a checkpoint whose config.json names none ("auto"): that of the first floating
    tensor (fp8 aside: unknown here) in name order of the first shard file; float32 when it has none. `tensors`:
    RawTensor or checkpoint.TensorInfo values (both have path and st_dtype)."""
    if not tensors:
        return "float32"
    first = min(ti.path for ti in tensors.values())  # shard files sort as their names (safetensors_files)
    for name in sorted(n for n, ti in tensors.items() if ti.path == first):
        if tensors[name].st_dtype in FLOAT_DTYPES:
            return FLOAT_DTYPES[tensors[name].st_dtype]
    return "float32"


def _int_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in x)


def _end(meta) -> int:
    """An entry's end offset where it has a well-formed one (0 otherwise: the entry is refused on its own turn)."""
    offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
    return offsets[1] if _int_list(offsets) and len(offsets) == 2 else 0
