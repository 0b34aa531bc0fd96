"""An empty config file, or one of comments (and blank lines, a YAML document marker, a byte-order mark) only, is a
config of all defaults, ``ClusterConfig()``: a file written with everything commented out starts what no file
starts (load_config's docstring says so). A guard: this held before the review, and must keep holding."""

from __future__ import annotations

import pytest

from warmserve.config import ClusterConfig
from warmserve.config_file import load_config, read_config_file


@pytest.mark.parametrize("name, text", [
    ("a.toml", ""), ("b.toml", "# cpu_workers = 4\n\n   \n# [server]\n# port = 9000\n"),
    ("c.yaml", ""), ("d.yml", "# cpu_workers: 4\n\n# server:\n#   port: 9000\n"), ("e.yaml", "---\n# nothing\n"),
    ("f.yaml", "\ufeff# a BOM, then a comment\n"), ("g.toml", "\ufeff\n"),
])
def test_an_empty_or_comment_only_file_gives_the_defaults(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    assert read_config_file(str(f)) == {}
    assert load_config(str(f)) == ClusterConfig()


def test_load_config_documents_it():
    assert "comments only" in load_config.__doc__ and "ClusterConfig()" in load_config.__doc__
