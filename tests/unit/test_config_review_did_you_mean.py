"""A misspelt key in a config table is refused naming the nearest known key, or the table a key written in the
wrong one belongs to (found in review: `tick` in [policy] was told only [policy]'s 40 keys), with the known keys
still listed."""

from __future__ import annotations

import re

import pytest

from warmserve.config_file import cluster_config_from_dict, load_config
from warmserve.errors import InvalidArgumentError


@pytest.mark.parametrize("data, where, key, hint", [
    ({"server": {"prot": 1}}, "[server]", "prot", "'port'"),
    ({"engine": {"max_num_seq": 2}}, "[engine]", "max_num_seq", "'max_num_seqs'"),
    ({"controller": {"tick": 1}}, "[controller]", "tick", "'tick_s'"),
    ({"policy": {"windw_s": 60}}, "[policy]", "windw_s", "'window_s'"),
    ({"models": [{"pth": "/ckpt/m", "path": "/ckpt/m"}]}, "models[0]", "pth", "'path'"),
    ({"cpu_worker": 2}, "top level", "cpu_worker", "'cpu_workers'"),
    ({"polcy": {}}, "top level", "polcy", "'policy'"),
    # a key of another table: its table named
    ({"policy": {"tick": 1}}, "[policy]", "tick", r"'tick_s' \(a \[controller\] key\)"),
    ({"controller": {"window_s": 60}}, "[controller]", "window_s", r"'window_s' \(a \[policy\] key\)"),
    # the exact key of another table wins over a near name in this one (found in review: worker_timeout_s at the
    # top level was told "did you mean 'worker_start_timeout_s'?")
    ({"worker_timeout_s": 5}, "top level", "worker_timeout_s", r"'worker_timeout_s' \(a \[controller\] key\)"),
    ({"drain_timeout_s": 5}, "top level", "drain_timeout_s", r"'drain_timeout_s' \(a \[controller\] key\)"),
    ({"controller": {"cpu_workers": 2}}, "[controller]", "cpu_workers", "top-level 'cpu_workers'"),
])
def test_an_unknown_key_names_the_nearest_known_one(data, where, key, hint):
    with pytest.raises(InvalidArgumentError, match=rf"config {re.escape(where)}: unknown keys \['{key}'\]: did you "
                                                   rf"mean {hint}\? Known: \[") as e:
        cluster_config_from_dict(data)
    assert e.value.unknown == [key] and key in e.value.suggestions


def test_several_unknown_keys_each_get_theirs_and_a_key_near_nothing_gets_none(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[controller]\ntick = 1\nzzzzzz = 2\n")
    with pytest.raises(InvalidArgumentError, match=r"unknown keys \['tick', 'zzzzzz'\]: did you mean 'tick_s' "
                                                   r"for 'tick'\? Known: \['bind'") as e:
        load_config(str(f))
    assert e.value.suggestions == {"tick": "'tick_s'"}
    f.write_text("[server]\nzzzzzz = 2\n")
    with pytest.raises(InvalidArgumentError, match=r"unknown keys \['zzzzzz'\]; known: \['allowed_origins'"):
        load_config(str(f))
