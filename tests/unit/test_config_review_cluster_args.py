"""Cluster(..., config=cfg) refuses the arguments the config takes the place of when they are given beside it,
naming each and the config field that holds it (found in review: Cluster(None, config=cfg, cpu_workers=4,
bind=...) started with the config's workers on the config's address, the two arguments dropped unsaid). The
check runs before anything starts: no cluster starts in these tests."""

from __future__ import annotations

import pytest

import warmserve
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.errors import InvalidArgumentError

CFG = ClusterConfig(models=(ModelSpec("/ckpt/a"),))


@pytest.mark.parametrize("kwargs, said, field", [
    ({"cpu_workers": 4}, "cpu_workers=4", "cpu_workers -> cpu_workers"),
    ({"bind": "tcp://127.0.0.1:5555"}, "bind='tcp://127.0.0.1:5555'", "bind -> controller.bind"),
    ({"window_s": 60}, "window_s=60", "window_s -> controller.policy_config.window_s"),
    ({"devices": "cpu:0"}, "devices='cpu:0'", "devices -> devices"),
    ({"policy": "shared"}, "policy='shared'", "policy -> controller.policy"),
    ({"insecure": True}, "insecure=True", "insecure -> controller.insecure"),
    ({"start_timeout_s": 5}, "start_timeout_s=5", "start_timeout_s -> worker_start_timeout_s"),
    ({"history_path": "/h.csv"}, "history_path='/h.csv'", "history_path -> controller.history_path"),
])
def test_an_argument_the_config_would_drop_is_refused_naming_it_and_its_field(kwargs, said, field):
    with pytest.raises(InvalidArgumentError, match="takes its settings from the config alone") as e:
        warmserve.Cluster(None, config=CFG, **kwargs)
    msg = str(e.value)
    assert f"would drop {said}" in msg and field in msg and "Fix: set them in the ClusterConfig" in msg, msg
    assert e.value.dropped == sorted(kwargs) and e.value.param == "config"


def test_several_and_other_models_are_named_together():
    with pytest.raises(InvalidArgumentError) as e:
        warmserve.Cluster(["/ckpt/b"], config=CFG, cpu_workers=3, remote_workers=1)
    assert e.value.dropped == ["cpu_workers", "models", "remote_workers"]
    assert "would drop models=['/ckpt/b'], cpu_workers=3, remote_workers=1" in str(e.value)


@pytest.mark.parametrize("models, kwargs", [
    (None, {}), (["/ckpt/a"], {}), ("/ckpt/a", {}), (CFG.models, {}),
    (None, {"cpu_workers": 2, "bind": "", "window_s": 300.0, "insecure": False}),  # defaults
])
def test_defaults_and_the_configs_own_models_pass_the_check(models, kwargs):
    # a later check that also runs before anything starts (a non-loopback bind without keys) shows it passed
    cfg = ClusterConfig(models=CFG.models, controller=ControllerConfig(bind="tcp://0.0.0.0:0"))
    with pytest.raises(InvalidArgumentError) as e:
        warmserve.Cluster(models, config=cfg, **kwargs)
    assert "config alone" not in str(e.value) and "0.0.0.0" in str(e.value), str(e.value)
