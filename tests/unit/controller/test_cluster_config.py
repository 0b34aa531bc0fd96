import pytest

from warmserve.config import ClusterConfig, ControllerConfig, load_config


def test_toml_and_yaml_give_the_same_config(tmp_path):
    (tmp_path / "a.toml").write_text(
        'policy_unused = 1\n' if False else
        'cpu_workers = 3\ndevices = ["cpu:0", "cpu:1"]\n'
        '[[models]]\npath = "ckpt/m1"\n[[models]]\npath = "/abs/m2"\nname = "two"\n'
        '[controller]\npolicy = "autoscale"\nwindow_s = 10\n[server]\nport = 9001\napi_key = "k"\n')
    (tmp_path / "a.yaml").write_text(
        "cpu_workers: 3\ndevices: [cpu:0, cpu:1]\nmodels:\n  - ckpt/m1\n  - {path: /abs/m2, name: two}\n"
        "controller: {policy: autoscale, window_s: 10}\nserver: {port: 9001, api_key: k}\n")
    a, b = load_config(str(tmp_path / "a.toml")), load_config(str(tmp_path / "a.yaml"))
    assert a == b
    assert a.models[0].path == str(tmp_path / "ckpt/m1") and a.models[0].name == "m1"
    assert a.models[1].name == "two" and a.controller.window_s == 10.0 and a.server.port == 9001
    assert a.devices == ("cpu:0", "cpu:1") and a.cpu_workers == 3


def test_bad_configs_are_refused(tmp_path):
    (tmp_path / "bad.toml").write_text("[controller]\nwindw_s = 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(str(tmp_path / "bad.toml"))
    (tmp_path / "x.ini").write_text("")
    with pytest.raises(ValueError):
        load_config(str(tmp_path / "x.ini"))
    with pytest.raises(ValueError):
        ControllerConfig(heartbeat_interval_s=1.0, worker_timeout_s=1.5)
    with pytest.raises(ValueError):
        ClusterConfig(devices=("gpu0",))


def test_policy_table_and_policy_name(tmp_path):
    (tmp_path / "p.toml").write_text('policy = "shared"\n[policy_options]\ninstance_capacity = 8\n')
    c = load_config(str(tmp_path / "p.toml"))
    assert c.controller.policy == "shared" and dict(c.controller.policy_options) == {"instance_capacity": 8}
    (tmp_path / "q.yaml").write_text("controller: {policy: autoscale}\npolicy: {min_lifetime_s: 2.0}\n")
    c = load_config(str(tmp_path / "q.yaml"))
    assert c.controller.policy == "autoscale" and dict(c.controller.policy_options) == {"min_lifetime_s": 2.0}
