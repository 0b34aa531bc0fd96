"""warmserve/config.py: values a user means are taken as meant (found in review: a pathlib.Path for a model was
refused as not a string, and preempt_after_s = inf, which PolicyConfig documents as "never", was refused by a
config file's [policy] table), while NaN, and inf where it means nothing, are still refused naming the key."""

from __future__ import annotations

import math
import pathlib

import pytest

from warmserve import ModelSpec
from warmserve.config import ClusterConfig
from warmserve.config_file import load_config
from warmserve.errors import InvalidArgumentError


def test_a_pathlib_path_is_a_checkpoint_path(tmp_path):
    spec = ModelSpec(pathlib.Path("/ckpt/qwen2-30m"), name="qwen")
    assert (spec.path, spec.name) == ("/ckpt/qwen2-30m", "qwen")
    assert ModelSpec(pathlib.Path("~/m")).path == str(pathlib.Path("~/m").expanduser())
    cfg = ClusterConfig(models=(pathlib.Path("/ckpt/llama-20m"), "/ckpt/b"))
    assert [(m.path, m.name) for m in cfg.models] == [("/ckpt/llama-20m", "llama-20m"), ("/ckpt/b", "b")]
    assert [m.name for m in ClusterConfig(models=pathlib.Path("/ckpt/one")).models] == ["one"]
    for bad in (5, b"/ckpt/m", ""):
        with pytest.raises(InvalidArgumentError, match="ModelSpec.path"):
            ModelSpec(bad)


def test_preempt_after_s_inf_in_a_config_file_means_never(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[policy]\npreempt_after_s = inf\n")
    assert math.isinf(load_config(str(f)).controller.policy_config.preempt_after_s)
    f.write_text("policy:\n  preempt_after_s: .inf\n")
    f = f.rename(tmp_path / "c.yaml")
    assert math.isinf(load_config(str(f)).controller.policy_config.preempt_after_s)


@pytest.mark.parametrize("text, match", [
    ("[policy]\npreempt_after_s = nan\n", "preempt_after_s must be a finite number, got nan"),
    ("[policy]\nwindow_s = inf\n", "window_s must be a finite number, got inf .only preempt_after_s takes inf"),
    ("[policy]\nload_window_s = inf\n", "load_window_s must be a finite number"),
    ("[policy]\nretain_wait_s = inf\n", "retain_wait_s must be a finite number"),
    ("[policy]\npreempt_after_s = -inf\n", "preempt_after_s must be >= 0"),
])
def test_nan_anywhere_and_inf_where_it_means_nothing_are_refused(tmp_path, text, match):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(InvalidArgumentError, match=match):
        load_config(str(f))
