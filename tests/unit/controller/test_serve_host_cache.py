"""The host checkpoint cache of a cluster's workers, as `warmserve serve` and a config file give it: the flags set
ClusterConfig.host_cache_bytes/dir, a config file's relative directory is relative to the file, bad values are
refused naming the key, and the worker flags follow from the config (none when it is off)."""

import argparse

import pytest

from warmserve.config import ClusterConfig, worker_cache_args
from warmserve.config_file import load_config
from warmserve.controller import serve
from warmserve.errors import InvalidArgumentError


def parse(*argv):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(list(argv))


def test_serve_flags_and_the_worker_flags_they_become():
    cfg = serve.build_config(parse("--host-cache-gib", "1.5", "--host-cache-dir", "/dev/shm/x"))
    assert (cfg.host_cache_bytes, cfg.host_cache_dir) == (3 << 29, "/dev/shm/x")
    assert worker_cache_args(cfg) == ("--host-cache-gib", "1.5", "--host-cache-dir", "/dev/shm/x")
    off = serve.build_config(parse())
    assert off.host_cache_bytes == 0 and worker_cache_args(off) == ()
    assert worker_cache_args(ClusterConfig(host_cache_bytes=(1 << 30) + 1)) == ("--host-cache-gib",
                                                                               repr(((1 << 30) + 1) / (1 << 30)))
    with pytest.raises(InvalidArgumentError, match="--host-cache-gib must be a finite number >= 0"):
        serve.build_config(parse("--host-cache-gib", "-2"))
    with pytest.raises(InvalidArgumentError, match="host_cache_dir needs host_cache_bytes"):
        serve.build_config(parse("--host-cache-dir", "/dev/shm/x"))


def test_a_config_files_cache_directory_is_relative_to_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("host_cache_bytes = 1073741824\nhost_cache_dir = \"cache\"\n")
    cfg = load_config(str(f))
    assert cfg.host_cache_bytes == 1 << 30 and cfg.host_cache_dir == str(tmp_path / "cache")
    f.write_text("host_cache_bytes = -1\n")
    with pytest.raises(InvalidArgumentError, match="host_cache_bytes"):
        load_config(str(f))


def test_the_flag_turns_off_a_cache_a_config_file_sets_up(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("host_cache_bytes = 1073741824\nhost_cache_dir = \"/dev/shm/x\"\n")
    cfg = serve.build_config(parse("--config", str(f), "--host-cache-gib", "0"))
    assert (cfg.host_cache_bytes, cfg.host_cache_dir) == (0, "") and worker_cache_args(cfg) == ()


def test_a_home_relative_cache_directory_is_expanded():
    import os

    cfg = ClusterConfig(host_cache_bytes=1 << 30, host_cache_dir="~/wcache")
    assert cfg.host_cache_dir == os.path.expanduser("~/wcache") and "~" not in worker_cache_args(cfg)[-1]
