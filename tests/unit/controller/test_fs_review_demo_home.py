"""`warmserve serve` with no models writes the demo checkpoints under $WARMSERVE_HOME: a home that cannot take
them is refused typed, in `serve`'s words. Found in review: the refusal came as "warmserve models demo: --out
...", a command and flag the user never typed, wrapped in an untyped WarmServeError."""

from __future__ import annotations

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
