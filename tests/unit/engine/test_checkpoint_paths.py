"""Shard names in a checkpoint's index (model.safetensors.index.json weight_map) are confined to the checkpoint
directory: `../` or an absolute path is refused with a CheckpointError naming the shard, before any file outside
is opened; names inside it (subdirectories, hub-cache symlinks) still load."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from warmserve import errors
from warmserve.engine.checkpoint import CheckpointError, read_tensors, safetensors_files

W = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


def _checkpoint(root, weight_map: dict) -> str:
    path = os.path.join(str(root), "ckpt")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return path


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors", "ABS"])
def test_a_shard_outside_the_directory_is_refused(tmp_path, shard):
    outside = str(tmp_path / "outside.safetensors")
    save_file(W, outside)  # a readable file is there: only the check stands between it and the loader
    path = _checkpoint(tmp_path, {"a.weight": outside if shard == "ABS" else shard})
    with pytest.raises(CheckpointError, match="outside the checkpoint directory") as ei:
        safetensors_files(path)
    assert ei.value.shard == (outside if shard == "ABS" else shard) and ei.value.path == path
    with pytest.raises(CheckpointError):
        read_tensors(path)


@pytest.mark.parametrize("shard", [None, 7, "", "a\x00b.safetensors", ["x"]])
def test_a_shard_name_that_is_not_a_file_name_is_refused(tmp_path, shard):
    path = _checkpoint(tmp_path, {"a.weight": shard})
    with pytest.raises(CheckpointError, match="not a file name"):
        safetensors_files(path)


@pytest.mark.parametrize("index", ['{"weight_map": ["x"]}', "[1, 2]", "not json"])
def test_a_malformed_index_is_a_checkpoint_error(tmp_path, index):
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError):
        safetensors_files(str(path))


def test_shards_inside_the_directory_still_load(tmp_path):
    """A subdirectory and a symlink to a blob beside the directory (how hub caches lay out snapshots) are fine:
    the names in the index stay inside; where the owner's links point is the owner's business."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    save_file(W, str(blobs / "0001"))
    path = _checkpoint(tmp_path, {"a.weight": "model-00001.safetensors", "b.weight": "sub/./model-00002.safetensors"})
    os.symlink(blobs / "0001", os.path.join(path, "model-00001.safetensors"))
    os.makedirs(os.path.join(path, "sub"))
    save_file({"b.weight": torch.ones(4)}, os.path.join(path, "sub", "model-00002.safetensors"))
    files = [os.path.normpath(f) for f in safetensors_files(path)]
    assert files == [os.path.join(path, "model-00001.safetensors"), os.path.join(path, "sub/model-00002.safetensors")]
    assert sorted(read_tensors(path)) == ["a.weight", "b.weight"]


def test_a_worker_refuses_to_prewarm_weights_from_outside_its_checkpoint(tmp_path):
    """End to end: a demo checkpoint whose index points at weights one directory up fails to prewarm with the typed
    error (over the worker's error path), and the pool has every page back."""
    from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint
    from warmserve.worker import InProcessWorker

    path = write_checkpoint(str(tmp_path), "tiny", config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=256)))
    os.rename(os.path.join(path, "model.safetensors"), tmp_path / "model.safetensors")
    names = json.loads(_header_json(tmp_path / "model.safetensors"))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {n: "../model.safetensors" for n in names if n != "__metadata__"}}, f)
    with InProcessWorker("cpu", 0.05, threads=1) as w:
        free = w.stats().pool
        with pytest.raises(errors.InvalidArgumentError, match="outside the checkpoint directory") as ei:
            w.prewarm(path)
        assert type(ei.value).__name__ == "CheckpointError"
        assert w.stats().pool == free and w.stats().models == []


def _header_json(file) -> bytes:
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n)
