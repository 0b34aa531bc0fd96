"""A checkpoint's generation_config.json that is not a JSON object is a CheckpointError naming it, before any page
is taken (found in review of the memory path: a bare JSONDecodeError, the pool untouched only by luck)."""

from __future__ import annotations

import os

import pytest

from warmserve.engine.demo import build_tokenizer, config_dict, write_checkpoint
from warmserve.engine.loader import load_model
from warmserve.engine.safetensors_header import CheckpointError
from warmserve.memory import PagePool

from tiny_checkpoints import TINY, TINY_VOCAB


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_broken_generation_config_is_a_checkpoint_error(tmp_path, text):
    p = write_checkpoint(str(tmp_path), "tiny-bias", config_dict(TINY["tiny-bias"]),
                         tokenizer=build_tokenizer(TINY_VOCAB))
    with open(os.path.join(p, "generation_config.json"), "w") as f:
        f.write(text)
    with PagePool(64 << 20) as pool:
        free = pool.free_pages
        with pytest.raises(CheckpointError, match="generation_config.json") as e:
            load_model(p, pool).wait()
        assert e.value.path.endswith("generation_config.json")
        assert pool.free_pages == free
