"""A demo checkpoint's weights are as readable as its other files. Found in review: safetensors wrote them 0600
while config.json and the tokenizer were 0644, so a worker running as another user (or in a container) could not
read a shared demo folder's weights."""

from __future__ import annotations

import os
import stat

from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint


def test_every_file_of_a_demo_has_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        cfg = config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=1024))
        folder = write_checkpoint(str(tmp_path), "a", cfg, shard_bytes=64 << 10)  # several shards and an index
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in os.listdir(folder)}
    shards = [n for n in modes if n.endswith(".safetensors")]
    assert len(shards) > 1 and "config.json" in modes, modes
    assert set(modes.values()) == {0o644}, modes
