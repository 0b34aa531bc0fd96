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
    return out


def _int_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in x)


def _end(meta) -> int:
    """An entry's end offset where it has a well-formed one (0 otherwise: the entry is refused on its own turn)."""
    offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
    return offsets[1] if _int_list(offsets) and len(offsets) == 2 else 0
