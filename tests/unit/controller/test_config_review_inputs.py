"""Configuration inputs refused (or hinted) when the config is built, found in review: a YAML key given twice kept
the last block silently (a second `server:` dropped the api_key); an engine limit past 2**63-1 was accepted and
every request then failed with a 500 (MessagePack cannot carry it); YAML's `1e3` or `08080` for a whole-number
field was answered with a hint to write `1000.0` / `8080.0`, refused in turn; `warmserve worker --page-mib 3` was
refused only after torch was imported; `serve --cpu-workers N` was silently ignored when devices were set; and
`--policy autoscale` with consolidate=true was refused with advice (set coserve_tpot_s) that autoscale overrides."""

from __future__ import annotations

import argparse

import pytest

from warmserve.config_file import load_config
from warmserve.controller import serve
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig
from warmserve.protocol import EngineConfig

BIG = 2 ** 70  # 1180591620717411303424, the reviewer's --max-num-seqs
WIRE_MAX = 2 ** 63 - 1


def parse(*argv):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(list(argv))


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------ 1. YAML duplicate keys


def test_a_yaml_table_given_twice_is_refused_naming_the_key_both_lines_and_the_fix(tmp_path):
    path = write(tmp_path, "cluster.yaml", "models: [/ckpt/llama-20m]\n"
                 "server:\n  host: 0.0.0.0\n  api_key: s3cret\n"
                 "controller:\n  max_queue: 64\n# many lines later:\n"
                 "server:\n  host: 0.0.0.0\n  port: 9000\n")
    with pytest.raises(InvalidArgumentError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert "'server'" in msg and "line 2" in msg and "line 8" in msg and "merge" in msg, msg
    assert ei.value.key == "server" and ei.value.lines == (2, 8)


def test_a_nested_yaml_key_given_twice_is_refused(tmp_path):
    path = write(tmp_path, "nested.yaml", "models: [/ckpt/a]\npolicy:\n  window_s: 60\n  window_s: 600\n")
    with pytest.raises(InvalidArgumentError, match=r"'window_s' .*line 3 and .*line 4"):
        load_config(path)


def test_yaml_without_repeats_and_with_merge_keys_still_loads(tmp_path):
    text = ("models: [/ckpt/a]\nserver:\n  host: 127.0.0.1\n  port: 9000\npolicy:\n  window_s: 600\n")
    assert load_config(write(tmp_path, "plain.yaml", text)).server.port == 9000
    # a merge key (<<) overridden by a key of the table itself is YAML's own rule, not a repeat
    import yaml

    from warmserve.config_file import _yaml_loader

    data = yaml.load("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  y: 3\n", Loader=_yaml_loader())
    assert data["b"] == {"x": 1, "y": 3}
    # found in a later review: an anchored mapping used as a merge source was flattened in place, and built again
    # through an alias it held the merged-in key beside its own (refused as a repeat; PyYAML loads it)
    nested = "base: &base {a: 1}\ntop:\n  <<: &mid\n    <<: *base\n    a: 2\n  b: 3\nother: *mid\n"
    assert yaml.load(nested, Loader=_yaml_loader())["other"] == {"a": 2}


def test_a_yaml_key_given_twice_on_one_line_is_refused():
    import yaml

    from warmserve.config_file import _yaml_loader

    with pytest.raises(InvalidArgumentError, match="'a' is given twice in one table, at line 1 and at line 1"):
        yaml.load("{a: 1, a: 2}\n", Loader=_yaml_loader())


# ------------------------------------------------------------------ 2. engine limits past the wire's ints


def test_serve_max_num_seqs_past_the_wire_is_refused_naming_field_value_and_bound():
    with pytest.raises(InvalidArgumentError) as ei:
        serve.build_config(parse("--max-num-seqs", str(BIG)))
    msg = str(ei.value)
    assert "max_num_seqs" in msg and str(BIG) in msg and str(WIRE_MAX) in msg, msg


@pytest.mark.parametrize("ext, text", [
    ("toml", f'models = ["/ckpt/a"]\n[engine]\nmax_kv_blocks = {BIG}\n'),
    ("yaml", f"models: [/ckpt/a]\nengine:\n  max_kv_blocks: {BIG}\n"),
])
def test_an_engine_table_past_the_wire_is_refused(tmp_path, ext, text):
    with pytest.raises(InvalidArgumentError, match=rf"max_kv_blocks.*{WIRE_MAX}.*got {BIG}"):
        load_config(write(tmp_path, f"c.{ext}", text))


def test_engine_limits_at_the_bound_pass_and_one_past_is_refused():
    assert EngineConfig(max_batch_tokens=WIRE_MAX).max_batch_tokens == WIRE_MAX
    with pytest.raises(InvalidArgumentError, match="max_batch_tokens"):
        EngineConfig(max_batch_tokens=WIRE_MAX + 1)
    with pytest.raises(InvalidArgumentError, match="max_num_seqs"):
        EngineConfig().resolved(WIRE_MAX + 1)


def test_policy_instance_capacity_past_the_wire_is_refused():
    with pytest.raises(InvalidArgumentError, match=rf"instance_capacity.*{WIRE_MAX}.*got {BIG}"):
        PolicyConfig(instance_capacity=BIG)
    with pytest.raises(InvalidArgumentError, match="instance_capacity"):
        serve.build_config(parse("--policy-option", f"instance_capacity={BIG}"))
    assert PolicyConfig(instance_capacity=WIRE_MAX).instance_capacity == WIRE_MAX
    # a numpy integer (a sweep's values) passes, as it did before the bound (found in a later review)
    import numpy as np

    assert PolicyConfig(instance_capacity=np.int64(32)).instance_capacity == 32


# ------------------------------------------------------------------ 3. the YAML "written as text" hint


@pytest.mark.parametrize("text, want, not_want", [
    ("controller:\n  max_queue: 1e3\n", "write 1000 ", "1000.0"),
    ("server:\n  port: 08080\n", "write 8080 ", "8080.0"),
])
def test_the_text_hint_for_a_whole_number_field_suggests_a_plain_integer(tmp_path, text, want, not_want):
    with pytest.raises(InvalidArgumentError) as ei:
        load_config(write(tmp_path, "c.yaml", text))
    msg = str(ei.value) + " "
    assert want in msg and not_want not in msg, msg
    if "08080" in text:
        assert "leading 0" in msg, msg


def test_the_text_hint_for_a_number_field_still_suggests_the_dotted_form(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"write 0\.1 \(or 1\.0e-1 style"):
        load_config(write(tmp_path, "c.yaml", "controller:\n  drain_timeout_s: 1e-1\n"))


# ------------------------------------------------------------------ 4. worker --page-mib before torch


@pytest.mark.parametrize("page_mib", ["3", "0", "-2"])
def test_worker_page_mib_is_checked_with_the_other_flags(page_mib):
    from warmserve.worker.main import add_arguments, check_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(InvalidArgumentError, match="--page-mib must be a positive multiple of 2") as ei:
        check_args(p.parse_args(["--device", "cpu", "--page-mib", page_mib]))
    assert ei.value.page_mib == int(page_mib)
    check_args(p.parse_args(["--device", "cpu", "--page-mib", "4"]))


# ------------------------------------------------------------------ 5. --cpu-workers with devices


def test_cpu_workers_with_devices_flag_is_refused_naming_both_and_the_fix():
    with pytest.raises(InvalidArgumentError) as ei:
        serve.build_config(parse("--devices", "cpu:0", "--cpu-workers", "4"))
    msg = str(ei.value)
    assert "--cpu-workers 4" in msg and "--devices" in msg and "cpu:0" in msg, msg
    assert "drop --cpu-workers" in msg and "cpu:0,cpu:1" in msg, msg


def test_cpu_workers_with_a_files_devices_is_refused(tmp_path):
    path = write(tmp_path, "c.toml", 'devices = ["cpu:0"]\n')
    with pytest.raises(InvalidArgumentError, match=r"--cpu-workers 4 .*the config file's devices"):
        serve.build_config(parse("--config", path, "--cpu-workers", "4"))


def test_cpu_workers_alone_and_devices_alone_pass():
    assert serve.build_config(parse("--cpu-workers", "4")).cpu_workers == 4
    assert serve.build_config(parse("--devices", "cpu:0,cpu:1")).devices == ("cpu:0", "cpu:1")


def test_local_devices_warns_of_cpu_workers_it_does_not_use(caplog):
    from warmserve.config import ClusterConfig, ModelSpec
    from warmserve.controller.launch import local_devices

    cfg = ClusterConfig(models=(ModelSpec(path="/ckpt/a"),), devices=("cpu:0",), cpu_workers=4)
    with caplog.at_level("WARNING", logger="warmserve.controller"):
        assert local_devices(cfg) == ["cpu:0"]
    assert "cpu_workers=4" in caplog.text and "cpu:0" in caplog.text, caplog.text


# ------------------------------------------------------------------ 6. autoscale with consolidate=true


def test_autoscale_with_consolidate_is_refused_with_advice_that_works():
    with pytest.raises(InvalidArgumentError) as ei:
        serve.build_config(parse("--policy", "autoscale", "--policy-option", "consolidate=true"))
    msg = str(ei.value)
    assert "autoscale" in msg and "coserve_tpot_s=0" in msg and "consolidate=false" in msg, msg
    assert "set coserve_tpot_s" not in msg, msg
    # consolidate=true under the default policy is still taken
    assert serve.build_config(parse("--policy-option", "consolidate=true")).controller.policy_config.consolidate
