"""YAML config files: an empty `policy:` table loads as the defaults, as an empty `engine:` or `server:` does, and a
number YAML 1.1 reads as text (`1e-1`) is refused saying so (found in review: an empty `policy:` failed naming a
`[controller]` table the file does not have; `tick_s: 1e-1` was "must be a number, got '1e-1'")."""

from __future__ import annotations

import pytest

from warmserve.config_file import load_config
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig


def _load(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return load_config(str(f))


def test_an_empty_policy_table_loads_as_the_defaults(tmp_path):
    c = _load(tmp_path, "cpu_workers: 1\nmodels: [/ckpt/a]\npolicy:\n#  window_s: 60\nengine:\n")
    assert c.controller.policy_config == PolicyConfig()
    assert c.controller.policy == "warmserve"


@pytest.mark.parametrize("prefix, key, text", [("controller:\n  ", "tick_s", "1e-1"),
                                               ("controller:\n  ", "request_timeout_s", "6e2"),
                                               ("", "worker_start_timeout_s", "9e1")])
def test_a_number_yaml_reads_as_text_is_refused_saying_how_to_write_it(tmp_path, prefix, key, text):
    with pytest.raises(InvalidArgumentError, match=f"{key} must be a number, got '{text}'.*YAML reads") as e:
        _load(tmp_path, f"{prefix}{key}: {text}\n")
    assert e.value.key == key
    assert f"{float(text)!r}" in str(e.value)
