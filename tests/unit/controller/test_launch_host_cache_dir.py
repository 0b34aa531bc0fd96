"""A host checkpoint cache folder this user cannot make files in is refused by the controller before any local
worker starts (controller/launch.py ``check_host_cache_dir``). Found in review: each worker checked it as it
started, and `warmserve.Cluster` (and `serve`) failed 6-7 s later with "local worker ... exited (status 2) before it
registered: see its log", the reason and its fix in the worker's stderr alone."""

from __future__ import annotations

import os
import time

import pytest

import warmserve
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig


def bad_folders(tmp_path):
    (tmp_path / "a-file").write_text("")
    other = tmp_path / "of-another-user"
    other.mkdir()
    if os.geteuid() == 0:
        os.chown(other, 65534, 65534)
    return {"a file": (str(tmp_path / "a-file"), "cannot make files in it"),
            "of another user": (str(other), "owned by uid 65534")}


@pytest.mark.parametrize("case", ["a file", "of another user"])
def test_an_unusable_cache_folder_is_refused_before_any_worker_starts(tmp_path, case):
    if case == "of another user" and os.geteuid() != 0:
        pytest.skip("needs root to give the folder to another user")
    folder, words = bad_folders(tmp_path)[case]
    path = write_checkpoint(str(tmp_path / "ck"), "tiny", config_dict(DemoSpec("llama", 64, 128, 1, 4, 2,
                                                                                vocab_size=256)),
                            tokenizer=build_tokenizer(256))
    cfg = ClusterConfig(models=(ModelSpec(path=path),), devices=("cpu:0",), cpu_worker_memory_bytes=256 << 20,
                        host_cache_bytes=64 << 20, host_cache_dir=folder, worker_start_timeout_s=60,
                        controller=ControllerConfig(policy_config=PolicyConfig(window_s=30)))
    t0 = time.monotonic()
    with pytest.raises(InvalidArgumentError) as e:
        warmserve.Cluster(None, config=cfg)
    message = str(e.value)
    assert message.startswith("host_cache_dir (--host-cache-dir): "), message
    assert words in message and "Fix:" in message and e.value.fields["path"] == folder, message
    assert time.monotonic() - t0 < 5  # no worker was started and waited for
