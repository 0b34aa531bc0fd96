"""The [policy] table (and [controller] policy_config) refuses a number or true/false written as text as the other
tables do, with the same message (found in review: [policy] took `window_s = "0.5"` and `prewarm = "no"` through
the command line's text parser, where [controller] refused `tick_s = "0.5"` naming the key). Text for inf keeps
its own check: YAML has no plain inf, and preempt_after_s takes "inf" as "never" (test_serve_review_inf_text)."""

from __future__ import annotations

import math

import pytest

from warmserve.config_file import cluster_config_from_dict, load_config
from warmserve.errors import InvalidArgumentError


@pytest.mark.parametrize("table", ["policy", "controller"])
def test_a_number_as_text_is_refused_in_policy_as_in_controller(table):
    key = "tick_s" if table == "controller" else "scale_in_threshold"
    with pytest.raises(InvalidArgumentError, match=rf"config \[{table}\]: {key} must be a number, got '0.5'\. 0.5 "
                                                   rf"is in quotes, so text: write 0.5 without the quotes") as e:
        cluster_config_from_dict({table: {key: "0.5"}})
    assert e.value.key == key


@pytest.mark.parametrize("name, text, key, says", [
    ("a.toml", '[policy]\nwindow_s = "60"\n', "window_s", "must be a number, got '60'"),
    ("b.yaml", "policy:\n  instance_capacity: '16'\n", "instance_capacity",
     "must be a whole number, got '16'. 16 is in quotes, so text: write 16 without the quotes"),
    ("c.toml", '[policy]\nprewarm = "no"\n', "prewarm", "must be true or false, got 'no'"),
    ("d.yaml", "controller:\n  policy_config: {forecast: 'false'}\n", "forecast", "must be true or false"),
    ("e.yaml", "policy:\n  min_lifetime_s: 1e-1\n", "min_lifetime_s",
     r"must be a number, got '1e-1'\. YAML reads 1e-1 as text: write 0\.1 \(or 1\.0e-1 style"),
])
def test_text_for_a_policy_number_or_flag_is_refused_naming_the_key(tmp_path, name, text, key, says):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(InvalidArgumentError, match=rf"{key} {says}") as e:
        load_config(str(f))
    assert e.value.key == key


def test_numbers_and_inf_text_are_taken_as_before(tmp_path):
    c = cluster_config_from_dict({"policy": {"window_s": 60, "scale_in_threshold": 0.25, "prewarm": False,
                                             "preempt_after_s": "inf", "forecaster": "stl"}})
    pc = c.controller.policy_config
    assert (pc.window_s, pc.scale_in_threshold, pc.prewarm, pc.forecaster) == (60.0, 0.25, False, "stl")
    assert math.isinf(pc.preempt_after_s)
    with pytest.raises(InvalidArgumentError, match=r"min_lifetime_s must be a finite number, got inf"):
        cluster_config_from_dict({"policy": {"min_lifetime_s": "inf"}})
