"""`warmserve serve --model ORG/NAME` from a Hugging Face cache laid out as huggingface_hub writes it: the snapshot's
files are symbolic links into blobs/ named by their hashes, refs/main names the snapshot. The model is served
under the repo id, its links followed by the controller's checks and by the worker's load, and answers. The cache
is the test's own ($HF_HUB_CACHE), from the demo llama-20m; nothing is downloaded."""

from __future__ import annotations

import hashlib
import os
import shutil

from tests.integration import serving


def _hub_cache(root, repo_id: str, source: str) -> str:
    repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
    revision = "9f1c" * 10
    snapshot = os.path.join(repo, "snapshots", revision)
    os.makedirs(snapshot)
    os.makedirs(os.path.join(repo, "blobs"))
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    for name in sorted(os.listdir(source)):
        if name.startswith(".") or not os.path.isfile(os.path.join(source, name)):
            continue
        with open(os.path.join(source, name), "rb") as f:
            blob = hashlib.sha256(f.read()).hexdigest()
        shutil.copyfile(os.path.join(source, name), os.path.join(repo, "blobs", blob))
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snapshot, name))
    return snapshot


def test_a_repo_id_in_the_hugging_face_cache_is_served_under_its_id(tmp_path, monkeypatch):
    source = serving.demo_paths(("llama-20m",))["llama-20m"]
    snapshot = _hub_cache(tmp_path / "hub", "acme/tiny-llama", source)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    proc, url = serving.start(tmp_path, models=("llama-20m",), cpu_workers=1, args=("--model", "acme/tiny-llama"))
    try:
        status, listed = serving.get_json(f"{url}/v1/models")
        assert status == 200 and [m["id"] for m in listed["data"]] == ["acme/tiny-llama"], listed
        status, out = serving.post_json(f"{url}/v1/completions", {"model": "acme/tiny-llama", "prompt": "hi",
                                                                "max_tokens": 4, "ignore_eos": True})
        assert status == 200 and out["usage"]["completion_tokens"] == 4, out
        assert all(os.path.islink(os.path.join(snapshot, f)) for f in os.listdir(snapshot))  # served through links
    finally:
        assert serving.stop(proc) == 0, (tmp_path / "serve.log").read_text()[-3000:]
