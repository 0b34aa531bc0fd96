"""A Hugging Face repo id (``meta-llama/Llama-3.2-1B``) as a model's path: the checkpoint folder the local Hugging
Face hub cache holds for it (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ~/.cache/huggingface/hub), at the
revision its ``main`` ref names. Found in the review of real checkpoints: `vllm serve ORG/NAME` and transformers take
a repo id, and the checkpoints on a cluster's machines are most often in that cache, but `--model ORG/NAME` was read
as a folder under the working directory ("no checkpoint at ./ORG/NAME").

Nothing is downloaded: only a snapshot already in the cache is taken (``local_files_only``). A folder that exists
under the given path wins, as in transformers. Workers are sent the snapshot's path, so workers on other hosts need
the same cache at the same path, as with any checkpoint folder."""

from __future__ import annotations

import os


def looks_like_repo_id(text: str) -> bool:
    """Whether ``text`` is a valid Hugging Face repo id (``ORG/NAME`` or ``NAME``: letters, digits, ``-_.``)."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # huggingface_hub comes with tokenizers; without it, no repo id is looked up
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def cached_snapshot(repo_id: str) -> str | None:
    """The snapshot folder of ``repo_id`` in the local Hugging Face hub cache at its ``main`` ref, or None where
    ``repo_id`` is no repo id or the cache has no snapshot of it."""
    if not looks_like_repo_id(repo_id):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except LocalEntryNotFoundError:
        return None


def snapshot_for(given: str, local: str) -> str | None:
    """The cache's snapshot of ``given`` where it is a relative path with no file or folder at ``local`` (the path it
    names: under the working directory, or beside a config file) and a repo id the cache holds; else None, and the
    path stands as given (a folder that exists wins, as in transformers)."""
    if os.path.isabs(os.path.expanduser(given)) or os.path.exists(local):
        return None
    return cached_snapshot(given)


def snapshot_repo_id(path: str) -> str | None:
    """The repo id of a folder of the Hugging Face cache's layout, ``.../models--ORG--NAME/snapshots/REVISION``
    (huggingface_hub writes a repo id's "/" as "--", which a repo id cannot hold), else None. A model served from
    such a folder is named so by default: its own name is a revision's hash."""
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    repo_id = parts[-3].removeprefix("models--").replace("--", "/")
    return repo_id if repo_id.count("/") <= 1 and all(repo_id.split("/")) and parts[-1] else None


def hub_cache_dir() -> str:
    """The folder of the Hugging Face hub cache, as huggingface_hub reads the environment."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def not_cached_hint(repo_id: str) -> str:
    """The sentence a missing checkpoint's error adds where its path is a repo id not in the cache."""
    return (f"{repo_id!r} is not in the Hugging Face cache either ({hub_cache_dir()}): warmserve downloads nothing, so "
            f"fetch it first (`hf download {repo_id}`) or give the checkpoint's folder")
