import pytest

from warmserve.config import ClusterConfig, ControllerConfig, EngineConfig
from warmserve.config_file import load_config
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig, parse_policy_options, policy_config_from_dict


def test_toml_and_yaml_give_the_same_config(tmp_path):
    (tmp_path / "a.toml").write_text(
        'cpu_workers = 3\ndevices = ["cpu:0", "cpu:1"]\n'
        '[[models]]\npath = "ckpt/m1"\n[[models]]\npath = "/abs/m2"\nname = "two"\n'
        '[controller]\npolicy = "autoscale"\n[policy]\nwindow_s = 10\n[engine]\nmax_num_seqs = 8\n'
        '[server]\nport = 9001\napi_key = "k"\n')
    (tmp_path / "a.yaml").write_text(
        "cpu_workers: 3\ndevices: [cpu:0, cpu:1]\nmodels:\n  - ckpt/m1\n  - {path: /abs/m2, name: two}\n"
        "controller: {policy: autoscale}\npolicy: {window_s: 10}\nengine: {max_num_seqs: 8}\n"
        "server: {port: 9001, api_key: k}\n")
    a, b = load_config(str(tmp_path / "a.toml")), load_config(str(tmp_path / "a.yaml"))
    assert a == b
    assert a.models[0].path == str(tmp_path / "ckpt/m1") and a.models[0].name == "m1"
    assert a.models[1].name == "two" and a.controller.policy_config.window_s == 10.0 and a.server.port == 9001
    assert a.engine == EngineConfig(max_num_seqs=8)
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
    with pytest.raises(InvalidArgumentError, match="round-robin-placement"):  # the registry's names are listed
        ControllerConfig(policy="round-robin")
    (tmp_path / "bad_policy.toml").write_text("[policy]\nwindow = 3\n")
    with pytest.raises(InvalidArgumentError, match="window_s"):  # unknown keys name the known ones
        load_config(str(tmp_path / "bad_policy.toml"))
    with pytest.raises(InvalidArgumentError):
        EngineConfig(max_batch_tokens=0)


def test_policy_table_and_policy_name(tmp_path):
    (tmp_path / "p.toml").write_text('policy = "shared"\n')
    c = load_config(str(tmp_path / "p.toml"))
    assert c.controller.policy == "shared" and c.controller.policy_config == PolicyConfig()
    (tmp_path / "q.yaml").write_text("controller: {policy: autoscale}\npolicy: {min_lifetime_s: 2, forecast: false}\n")
    c = load_config(str(tmp_path / "q.yaml"))
    assert c.controller.policy == "autoscale"
    assert c.controller.policy_config == PolicyConfig(min_lifetime_s=2.0, forecast=False)


def test_policy_options_parse_in_one_place():
    """The file's [policy] table and the command line's KEY=VALUE flags go through the same parser: text is
    converted to the field's type, wrong types and unknown keys are refused with the known fields."""
    base = PolicyConfig(instance_capacity=8)
    got = parse_policy_options(["window_s=60", "prewarm=false", "forecaster=stl"], base)
    assert got == PolicyConfig(instance_capacity=8, window_s=60.0, prewarm=False, forecaster="stl")
    assert policy_config_from_dict({"window_s": 60}) == PolicyConfig(window_s=60.0)
    for bad in (["window_s=soon"], ["instance_capacity"], ["nope=1"]):
        with pytest.raises(InvalidArgumentError):
            parse_policy_options(bad)
    with pytest.raises(InvalidArgumentError):
        policy_config_from_dict({"prewarm": "maybe"})
    with pytest.raises(InvalidArgumentError):
        policy_config_from_dict({"instance_capacity": True})


def test_engine_max_num_seqs_defaults_to_the_policy_capacity():
    assert EngineConfig().resolved(12).max_num_seqs == 12
    assert EngineConfig(max_num_seqs=5).resolved(12).max_num_seqs == 5


def test_values_of_the_wrong_type_or_range_name_their_key():
    """Found in review: `cpu_workers: "2"` or `tick_s: "0.5"` in a config file failed with a bare TypeError that
    named no key, and a port of 70000 was taken until the server tried to listen."""
    from warmserve.config_file import cluster_config_from_dict

    for data, key in (({"cpu_workers": "2"}, "cpu_workers"), ({"controller": {"tick_s": "0.5"}}, "tick_s"),
                      ({"server": {"port": 70000}}, "port"), ({"controller": {"drain_timeout_s": -1}}, "drain"),
                      ({"worker_start_timeout_s": -5}, "worker_start_timeout_s"),
                      ({"controller": {"insecure": "yes"}}, "insecure")):
        with pytest.raises(ValueError, match=key):
            cluster_config_from_dict(data)
    cfg = cluster_config_from_dict({"cpu_workers": 3, "controller": {"tick_s": 1}, "server": {"port": 0}})
    assert (cfg.cpu_workers, cfg.controller.tick_s, cfg.server.port) == (3, 1.0, 0)
