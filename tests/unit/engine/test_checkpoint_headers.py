"""A malformed safetensors header, or a tensor stored in two shards, is a CheckpointError naming the file(s), not
an AttributeError/KeyError from the parser or the later shard's copy silently winning."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from warmserve.engine.checkpoint import CheckpointError, read_header, read_tensors


def _raw_safetensors(path: str, header) -> str:
    body = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body + b"\0" * 64)
    return path


@pytest.mark.parametrize("header", [
    ["not", "an", "object"],
    "a string",
    {"w": "F32"},
    {"w": {"shape": [2], "data_offsets": [0, 8]}},
    {"w": {"dtype": "F32", "data_offsets": [0, 8]}},
    {"w": {"dtype": "F32", "shape": [2]}},
    {"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}},
    {"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}},
    {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}},
    {"w": {"dtype": "F32", "shape": [-2, -1], "data_offsets": [0, 8]}},
    {"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},
], ids=["list", "string", "entry-not-object", "no-dtype", "no-shape", "no-offsets", "dtype-list", "shape-string",
        "three-offsets", "negative-dims", "negative-offset"])
def test_a_malformed_header_is_a_checkpoint_error_naming_the_file(tmp_path, header):
    path = _raw_safetensors(str(tmp_path / "model.safetensors"), header)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_header(path)


def test_a_well_formed_header_still_reads(tmp_path):
    path = str(tmp_path / "model.safetensors")
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, path, metadata={"format": "pt"})
    info = read_header(path)["w"]
    assert (info.dtype, info.shape, info.nbytes) == (torch.float32, (2, 3), 24)


def test_a_tensor_in_two_shards_is_refused_naming_both(tmp_path):
    path = tmp_path / "ckpt"
    path.mkdir()
    save_file({"a.weight": torch.zeros(2), "dup.weight": torch.zeros(3)}, str(path / "model-00001.safetensors"))
    save_file({"b.weight": torch.ones(2), "dup.weight": torch.ones(3)}, str(path / "model-00002.safetensors"))
    with open(path / "model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": {"a.weight": "model-00001.safetensors", "b.weight": "model-00002.safetensors",
                                  "dup.weight": "model-00002.safetensors"}}, f)
    with pytest.raises(CheckpointError, match="dup.weight is in both model-00001.safetensors and "
                                              "model-00002.safetensors") as e:
        read_tensors(str(path))
    assert e.value.fields["files"] == [os.path.join(str(path), f) for f in ("model-00001.safetensors",
                                                                            "model-00002.safetensors")]
