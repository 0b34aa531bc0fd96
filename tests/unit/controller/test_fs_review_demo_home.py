"""`warmserve serve` with no models writes the demo checkpoints under $WARMSERVE_HOME: a home that cannot take
them is refused typed, in `serve`'s words. Found in review: the refusal came as "warmserve models demo: --out
...", a command and flag the user never typed, wrapped in an untyped WarmServeError."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from warmserve.controller.launch import demo_specs
from warmserve.errors import InvalidArgumentError


def test_an_unwritable_home_is_refused_typed_naming_the_variable(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("a file where the folder should be\n")  # every folder under it fails to be made
    monkeypatch.setenv("WARMSERVE_HOME", str(home))
    with pytest.raises(InvalidArgumentError) as e:
        demo_specs(names=("llama-20m",))
    said = str(e.value)
    assert "$WARMSERVE_HOME" in said and "Fix:" in said and "models demo:" not in said, said
    assert e.value.fields["path"] == str(home / "demo")


def test_a_cache_home_not_named_in_utf8_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Found in the locale review: a Latin-1 $XDG_CACHE_HOME failed in the writer with a bare UnicodeEncodeError,
    wrapped in "make it writable"; the folder is refused for what it is, and nothing is made under it."""
    cache = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    monkeypatch.delenv("WARMSERVE_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", os.fsdecode(cache))
    with pytest.raises(InvalidArgumentError) as e:
        demo_specs(names=("llama-20m",))
    said = str(e.value)
    assert "not UTF-8" in said and "$XDG_CACHE_HOME" in said and "WARMSERVE_HOME" in said, said
    assert not os.path.exists(cache)
    r = subprocess.run([sys.executable, "-m", "warmserve", "models", "demo", "--out", os.path.join(cache, b"d"),
                        "--models", "llama-20m"], capture_output=True, timeout=120)
    assert r.returncode == 2 and b"holds bytes that are not UTF-8" in r.stderr, r.stderr[-2000:]
    assert not os.path.exists(cache)
