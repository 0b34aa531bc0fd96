"""``models demo`` never writes into a user's own checkpoint. Found in review: ``warmserve models demo --out DIR``
with a real checkpoint at DIR/llama-20m (no demo stamp) deleted its safetensors shards and index and overwrote its
config.json and tokenizer files, exit 0."""

from __future__ import annotations

import os

import pytest

from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint
from warmserve.errors import InvalidArgumentError


def _spec():
    return DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=1024)


def test_a_directory_with_files_and_no_stamp_is_refused_and_left_as_it_was(tmp_path):
    d = tmp_path / "llama-20m"
    d.mkdir()
    files = {"model.safetensors": b"user weights", "config.json": b'{"model_type": "qwen2"}'}
    for name, data in files.items():
        (d / name).write_bytes(data)
    with pytest.raises(InvalidArgumentError, match="holds files but is no demo checkpoint.*pick another --out"):
        write_checkpoint(str(tmp_path), "llama-20m", config_dict(_spec()))
    assert sorted(os.listdir(d)) == sorted(files)
    assert all((d / name).read_bytes() == data for name, data in files.items())


def test_an_interrupted_demo_is_written_again_and_an_empty_directory_taken(tmp_path):
    """A demo's stamp is written first, so one cut off mid-write (stamp "writing", a stray shard) is no foreign
    directory; an empty directory is taken too."""
    cfg = config_dict(_spec())
    first = write_checkpoint(str(tmp_path), "a", cfg)
    with open(os.path.join(first, ".warmserve-demo"), "w") as f:
        f.write("writing\n")
    (tmp_path / "a" / "model-00009-of-00009.safetensors").write_bytes(b"half")
    assert write_checkpoint(str(tmp_path), "a", cfg) == first
    assert "model-00009-of-00009.safetensors" not in os.listdir(first)
    (tmp_path / "b").mkdir()
    write_checkpoint(str(tmp_path), "b", cfg)
    assert os.path.isfile(tmp_path / "b" / "config.json")
