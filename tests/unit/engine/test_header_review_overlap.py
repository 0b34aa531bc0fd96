"""A safetensors header whose byte ranges overlap or leave a gap is refused, as the safetensors library refuses it
(found in review: two tensors over the same bytes loaded silently as wrong weights)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from warmserve.engine.safetensors_header import CheckpointError, read_raw_header


def _rewrite(path, edit):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(text) == n
    open(path, "wb").write(raw[:8] + text + raw[8 + n:])


def _file(tmp_path):
    p = str(tmp_path / "model.safetensors")
    save_file({"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32), "c": np.ones(2, np.float32)}, p)
    return p


def test_a_library_written_file_passes(tmp_path):
    assert sorted(read_raw_header(_file(tmp_path))) == ["a", "b", "c"]


def test_overlapping_ranges_are_refused(tmp_path):
    p = _file(tmp_path)
    _rewrite(p, lambda h: h["b"].update(data_offsets=h["a"]["data_offsets"]))  # b reads a's bytes
    with pytest.raises(CheckpointError, match="overlapping"):
        read_raw_header(p)


def test_a_gap_between_ranges_is_refused(tmp_path):
    p = _file(tmp_path)
    _rewrite(p, lambda h: h.pop("a"))
    with pytest.raises(CheckpointError, match="non-contiguous"):
        read_raw_header(p)
