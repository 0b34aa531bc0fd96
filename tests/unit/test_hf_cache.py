"""A Hugging Face repo id as a model's path (``warmserve.hf_cache``): the local Hugging Face cache's snapshot, served
under the id, where no folder of that path exists; a folder that exists wins; an id not in the cache is refused
with the download command as the fix; nothing is ever downloaded. Found in the review of real checkpoints:
`--model ORG/NAME`, as `vllm serve` takes it, was read as a folder under the working directory."""

from __future__ import annotations

import os

import pytest
from huggingface_hub import constants

from warmserve.config import ModelSpec, default_demo_dir
from warmserve.config_file import load_config
from warmserve.controller.models import controller_model
from warmserve.errors import InvalidArgumentError
from warmserve.hf_cache import cached_snapshot, looks_like_repo_id


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hugging Face cache of the test's own holding acme/tiny at the revision refs/main names; returns the
    snapshot's folder. The working directory is an empty folder, so no ./acme/tiny exists."""
    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return str(snapshot)


def test_a_cached_repo_id_is_its_snapshot_served_under_the_id(hub):
    spec = ModelSpec("acme/tiny")
    assert (spec.path, spec.name) == (hub, "acme/tiny")
    assert ModelSpec("acme/tiny", name="t").name == "t"


def test_a_folder_of_that_path_wins_over_the_cache(hub):
    os.makedirs("acme/tiny")
    spec = ModelSpec("acme/tiny")
    assert (spec.path, spec.name) == (os.path.abspath("acme/tiny"), "tiny")


def test_what_is_no_repo_id_or_not_cached_stays_a_path(hub):
    assert not looks_like_repo_id("a/b/c") and not looks_like_repo_id("../x") and not looks_like_repo_id("a--b/c")
    assert cached_snapshot("acme/other") is None and cached_snapshot("a/b/c") is None
    spec = ModelSpec("acme/other")
    assert (spec.path, spec.name) == (os.path.abspath("acme/other"), "other")


def test_a_repo_id_not_cached_is_refused_with_the_download_as_the_fix(hub):
    with pytest.raises(InvalidArgumentError) as e:
        controller_model(ModelSpec("acme/other"))
    said = str(e.value)
    assert "'acme/other' is not in the Hugging Face cache" in said and "hf download acme/other" in said, said
    assert constants.HF_HUB_CACHE in said  # the cache's folder, where it looked


def test_a_config_files_repo_id_is_taken_from_the_cache_unless_a_folder_beside_the_file_has_it(hub, tmp_path):
    cfg = tmp_path / "c" / "cluster.toml"
    cfg.parent.mkdir()
    cfg.write_text('models = ["acme/tiny"]\n')
    assert [(m.path, m.name) for m in load_config(str(cfg)).models] == [(hub, "acme/tiny")]
    cfg.write_text('[[models]]\npath = "acme/tiny"\nname = "t"\ntp = 2\n')
    assert [(m.path, m.name, m.tp) for m in load_config(str(cfg)).models] == [(hub, "t", 2)]
    (tmp_path / "c" / "acme" / "tiny").mkdir(parents=True)
    assert [(m.path, m.name) for m in load_config(str(cfg)).models] == [(str(tmp_path / "c" / "acme" / "tiny"), "t")]


def test_a_snapshot_folder_given_as_a_path_is_named_by_its_repo_id(hub):
    """Its own name is a revision's hash; a name given is kept; a folder named "snapshots" elsewhere is not a repo."""
    assert ModelSpec(hub).name == "acme/tiny" and ModelSpec(hub, name="t").name == "t"
    os.makedirs("x/snapshots/abc")
    assert ModelSpec("x/snapshots/abc").name == "abc"


def test_a_checkpoint_whose_files_link_to_files_that_are_gone_is_refused_naming_them(hub):
    """An interrupted download or a pruned cache: a snapshot's links into blobs/ that lead nowhere (before: "config.json
    missing" of a folder that lists config.json)."""
    for name in ("config.json", "model.safetensors"):
        os.symlink(os.path.join("..", "..", "blobs", name + "-sha"), os.path.join(hub, name))
    with pytest.raises(InvalidArgumentError) as e:
        controller_model(ModelSpec("acme/tiny"))
    said = str(e.value)
    assert "2 file(s)" in said and "config.json -> ../../blobs/config.json-sha" in said and "hf download" in said, said
    assert e.value.fields["broken"] == ["config.json", "model.safetensors"]


def test_a_demo_models_name_given_as_its_path_is_told_its_folder_not_a_download(hub):
    """"llama-20m" is a valid repo id too: found in review, the first form of the cache's hint told it to
    `hf download llama-20m`."""
    with pytest.raises(InvalidArgumentError) as e:
        controller_model(ModelSpec("llama-20m"))
    said = str(e.value)
    folder = os.path.join(default_demo_dir(), "llama-20m")  # $WARMSERVE_HOME/demo/... where it is set (CI sets it)
    assert "llama-20m is a demo model" in said and folder in said and "hf download" not in said, said
