"""The README is the front door: its config example must load as it is written."""

from __future__ import annotations

import pathlib

from huggingface_hub import constants

from warmserve.config_file import load_config

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_config_example_loads(tmp_path, monkeypatch):
    # the example's repo id, in a Hugging Face cache of the test's own (huggingface_hub's layout: refs/main names
    # the snapshot's revision)
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    text = README.read_text()
    start = text.index("```toml") + len("```toml")
    block = text[start:text.index("```", start)]
    path = tmp_path / "cluster.toml"
    path.write_text(block)
    cfg = load_config(str(path))
    assert cfg.controller.policy == "warmserve"
    assert cfg.controller.policy_config.window_s == 300
    assert cfg.controller.policy_config.instance_capacity == 32
    assert cfg.engine.max_batch_tokens == 2048
    assert [m.name for m in cfg.models] == ["llama-20m", "Qwen/Qwen2.5-0.5B", "qwen"]
    assert cfg.models[1].path == str(repo / "snapshots" / "abc123")
