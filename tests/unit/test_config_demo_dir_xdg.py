"""Where the demo checkpoints go: $WARMSERVE_HOME/demo, else $XDG_CACHE_HOME/warmserve/demo, else
~/.cache/warmserve/demo. Found in review: $XDG_CACHE_HOME (which pip and Hugging Face honour, and which a cluster
user whose home has a small quota points at a larger disk) was not read, so `warmserve serve` wrote its 2.5 GB of
demo checkpoints into the home all the same."""

from __future__ import annotations

import os

import pytest

from warmserve.config import default_demo_dir


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("WARMSERVE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_xdg_cache_home_is_read_when_warmserve_home_is_not_set(env, tmp_path):
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "big-disk"))
    assert default_demo_dir() == str(tmp_path / "big-disk" / "warmserve" / "demo")  # before: under the home


def test_warmserve_home_comes_first(env, tmp_path):
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "big-disk"))
    env.setenv("WARMSERVE_HOME", str(tmp_path / "ws"))
    assert default_demo_dir() == str(tmp_path / "ws" / "demo")


@pytest.mark.parametrize("xdg", [None, "", "relative/cache"], ids=["unset", "empty", "relative"])
def test_the_home_cache_otherwise(env, tmp_path, xdg):
    if xdg is not None:  # empty or relative: ignored, as the XDG Base Directory spec says
        env.setenv("XDG_CACHE_HOME", xdg)
    assert default_demo_dir() == os.path.join(str(tmp_path / "home"), ".cache", "warmserve", "demo")
