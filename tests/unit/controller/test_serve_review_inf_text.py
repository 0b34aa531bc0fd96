"""Found in review: a policy number of inf is refused where it means nothing (only preempt_after_s takes it), but
written as text it passed: TOML `min_lifetime_s = "inf"`, YAML's plain `min_lifetime_s: inf` and `retain_wait_s:
Infinity` (strings in YAML) were converted to inf after the check, and a lifetime of inf never ended. The check
now reads the converted values, in the file's table and in ControllerConfig (flags and the Python API)."""

from __future__ import annotations

import math

import pytest

from warmserve.config import ControllerConfig
from warmserve.config_file import load_config
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig


@pytest.mark.parametrize("name, text, key", [
    ("b.toml", '[policy]\nmin_lifetime_s = "inf"\n', "min_lifetime_s"),
    ("d.yaml", "policy:\n  min_lifetime_s: inf\n", "min_lifetime_s"),
    ("e.yaml", "policy:\n  retain_wait_s: Infinity\n", "retain_wait_s"),
    ("f.yaml", "controller:\n  policy_config: {replan_s: 'inf'}\n", "replan_s"),
])
def test_inf_written_as_text_is_refused_where_it_means_nothing(tmp_path, name, text, key):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(InvalidArgumentError, match=rf"{key} must be a finite number, got inf \(only "
                                                   r"preempt_after_s takes inf\)") as e:
        load_config(str(f))
    assert e.value.key == key
    # where inf means "never", text takes it as a number does
    f.write_text(text.replace(key, "preempt_after_s"))
    assert math.isinf(load_config(str(f)).controller.policy_config.preempt_after_s)


def test_the_live_controllers_config_refuses_it_from_the_python_api():
    with pytest.raises(InvalidArgumentError, match=r"ControllerConfig.policy_config: retain_wait_s must be a "
                                                   r"finite number, got inf"):
        ControllerConfig(policy_config=PolicyConfig(retain_wait_s=math.inf))
    assert math.isinf(ControllerConfig(policy_config=PolicyConfig(preempt_after_s=math.inf))
                      .policy_config.preempt_after_s)
