"""warmserve/config.py: config files and values of the wrong shape are refused with a typed error naming the key,
and the shapes a user means are taken as meant (found in review: each case below was accepted silently, ran
something else than asked, or failed with a bare error naming no key)."""

from __future__ import annotations

import math
import os

import pytest

from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec, ServerConfig
from warmserve.config_file import cluster_config_from_dict, load_config
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("text, ext, match", [
    ("hello", "yaml", "must hold a table of keys"),
    ("- a\n- b\n", "yaml", "must hold a table of keys"),
    ("models: [a\n", "yaml", "not valid YAML"),
    ("models = [\n", "toml", "not valid TOML"),
    ("models = [5]\n", "toml", r"models\[0\] must be a checkpoint path or a table with a path"),
    ('[[models]]\nname = "x"\n', "toml", r"models\[0\]"),
    ('controller = "fast"\n', "toml", r"\[controller\] must be a table"),
    ('models = ["m"]\npolicy = "autoscale"\n[controller]\npolicy = "warmserve"\n', "toml", "policy is named twice"),
    ('[policy]\nwindow_s = 60\n[controller]\npolicy_config = {window_s = 5}\n', "toml", "both as"),
    ('cpu_workers = 1\n[cluster]\ncpu_workers = 2\n', "toml", r"both at the top level and in \[cluster\]"),
    ("cpu_worker_memory_bytes = -5\n", "toml", "cpu_worker_memory_bytes"),
    ("cpu_worker_threads = -1\n", "toml", "cpu_worker_threads"),
    ("worker_start_timeout_s = nan\n", "toml", "worker_start_timeout_s must be a finite number"),
    ("[controller]\ntick_s = nan\n", "toml", "tick_s must be a finite number"),
    ("[controller]\ntick_s = inf\n", "toml", "tick_s must be a finite number"),
    ("[controller]\ndrain_timeout_s = nan\n", "toml", "drain_timeout_s"),
    ("[policy]\nwindow_s = nan\n", "toml", "window_s must be a finite number"),
    ("[policy]\nwindow_s = inf\n", "toml", "window_s must be a finite number"),
    ('[server]\nhost = ""\n', "toml", "host must name an interface"),
    ('[controller]\nbind = "tcp://127.0.0.1:99999"\n', "toml", "0-65535"),
    ('[controller]\nbind = "nonsense"\n', "toml", "tcp://HOST:PORT"),
])
def test_config_files_of_the_wrong_shape_name_the_key(tmp_path, text, ext, match):
    f = tmp_path / f"c.{ext}"
    f.write_text(text)
    with pytest.raises(InvalidArgumentError, match=match):
        load_config(str(f))


def test_models_in_a_cluster_table_are_served_with_paths_relative_to_the_file(tmp_path):
    (tmp_path / "c.toml").write_text('[cluster]\ncpu_workers = 3\n'
                                     'models = ["ckpt/a", {path = "/abs/b", name = "bee"}]\n')
    c = load_config(str(tmp_path / "c.toml"))
    assert c.cpu_workers == 3
    assert [(m.path, m.name) for m in c.models] == [(str(tmp_path / "ckpt/a"), "a"), ("/abs/b", "bee")]
    (tmp_path / "c.yaml").write_text("cluster:\n  models:\n    - {path: ckpt/a}\n  devices: cpu:0\n")
    c = load_config(str(tmp_path / "c.yaml"))
    assert [m.path for m in c.models] == [str(tmp_path / "ckpt/a")] and c.devices == ("cpu:0",)


def test_single_strings_are_one_item_lists_and_home_is_expanded(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('models = "ckpt/a"\ndevices = "cpu:0"\n[controller]\nhistory_path = "~/h.csv"\ncurve_dir = "~/k"\n')
    c = load_config(str(f))
    assert [m.path for m in c.models] == [str(tmp_path / "ckpt/a")] and c.devices == ("cpu:0",)
    home = os.path.expanduser("~")
    assert (c.controller.history_path, c.controller.curve_dir) == (f"{home}/h.csv", f"{home}/k")
    c = ClusterConfig(models="/ckpt/m", devices="cpu:1")
    assert c.models == (ModelSpec(path="/ckpt/m"),) and c.devices == ("cpu:1",)
    assert ModelSpec(path="~/ckpt/m").path == f"{home}/ckpt/m"
    assert ControllerConfig(history_path="~/x.csv").history_path == f"{home}/x.csv"


def test_a_policy_config_table_in_controller_is_the_policy_table(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[controller]\npolicy = "autoscale"\npolicy_config = {window_s = 5}\n')
    c = load_config(str(f))
    assert c.controller.policy == "autoscale" and c.controller.policy_config == PolicyConfig(window_s=5.0)
    assert cluster_config_from_dict({"policy": "shared"}).controller.policy == "shared"


@pytest.mark.parametrize("make, match", [
    (lambda: ServerConfig(host=""), "host"),
    (lambda: ServerConfig(host="  "), "host"),
    (lambda: ServerConfig(port=True), "port"),
    (lambda: ServerConfig(keepalive_timeout_s=0.0), "keepalive_timeout_s"),
    (lambda: ServerConfig(keepalive_timeout_s=float("inf")), "keepalive_timeout_s"),
    (lambda: ControllerConfig(bind="tcp://127.0.0.1:99999"), "0-65535"),
    (lambda: ControllerConfig(bind="tcp://127.0.0.1:-1"), "0-65535"),
    (lambda: ControllerConfig(bind="127.0.0.1:5555"), "tcp://HOST:PORT"),
    (lambda: ControllerConfig(tick_s=NAN), "tick_s"),
    (lambda: ControllerConfig(request_timeout_s=INF), "request_timeout_s"),
    (lambda: ControllerConfig(drain_timeout_s=NAN), "drain_timeout_s"),
    (lambda: ControllerConfig(drain_timeout_s=INF), "drain_timeout_s"),
    (lambda: ControllerConfig(policy_config=PolicyConfig(window_s=INF)), "window_s"),
    (lambda: ClusterConfig(worker_start_timeout_s=NAN), "worker_start_timeout_s"),
    (lambda: ClusterConfig(worker_start_timeout_s=INF), "worker_start_timeout_s"),
    (lambda: ClusterConfig(cpu_worker_memory_bytes=-1), "cpu_worker_memory_bytes"),
    (lambda: ClusterConfig(cpu_worker_threads=-2), "cpu_worker_threads"),
    (lambda: ClusterConfig(models=(5,)), r"models\[0\]"),
    (lambda: ModelSpec(path=""), "path"),
])
def test_values_out_of_range_are_refused_where_they_are_built(make, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make()


def test_good_endpoints_and_values_pass():
    for bind in ("tcp://127.0.0.1:0", "tcp://*:5555", "tcp://0.0.0.0:*", "tcp://[::1]:65535", "ipc:///tmp/w.sock"):
        assert ControllerConfig(bind=bind).bind == bind
    assert ServerConfig(host="0.0.0.0").host == "0.0.0.0"
    assert math.isfinite(ControllerConfig(drain_timeout_s=0).drain_timeout_s)


def test_a_relative_model_path_is_made_absolute_and_named_by_its_folder(tmp_path, monkeypatch):
    """Found in review: Cluster(".") served a model named "." from a relative path, which workers with another
    working directory (remote, Ray) looked for elsewhere; "/" had the name ""."""
    from warmserve.config import ModelSpec

    folder = tmp_path / "llama-20m"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert (ModelSpec(".").path, ModelSpec(".").name) == (str(folder), "llama-20m")
    assert ModelSpec("..").name == tmp_path.name and ModelSpec("./x/").path == str(folder / "x")
    with pytest.raises(InvalidArgumentError, match="no folder name to serve the model under: give name="):
        ModelSpec("/")
    assert ModelSpec("/", name="root").path == "/"
