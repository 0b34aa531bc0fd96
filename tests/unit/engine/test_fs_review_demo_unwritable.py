"""`warmserve models demo` (and `serve`'s demo models) into a folder that cannot take them: a typed error naming
the checkpoint's path and the fix, and nothing left that a later run would take for a whole checkpoint. Found in
review: a full disk ended in a traceback from safetensors' writer, a read-only one in a bare OSError."""

from __future__ import annotations

import os
import subprocess

import pytest

from warmserve.engine.demo import write_demo_models
from warmserve.errors import InvalidArgumentError


def test_an_out_folder_under_a_file_is_refused_typed(tmp_path):
    blocker = tmp_path / "home"
    blocker.write_text("a file where the folder should be\n")
    with pytest.raises(InvalidArgumentError, match="Fix:") as e:
        write_demo_models(str(blocker / "demo"), ["llama-20m"])
    assert e.value.fields["path"] == str(blocker / "demo" / "llama-20m")


def test_a_full_disk_is_refused_typed_and_leaves_no_weights(tiny_tmpfs):
    out = tiny_tmpfs / "demo"
    with pytest.raises(InvalidArgumentError, match="No space left") as e:
        write_demo_models(str(out), ["llama-20m"])
    path = out / "llama-20m"
    assert e.value.fields["path"] == str(path) and "--out" in str(e.value)
    assert not [f for f in os.listdir(path) if "safetensors" in f]  # the disk is given back
    assert (path / ".warmserve-demo").read_text().strip() == "writing"  # unfinished: a later run rewrites it


def test_a_read_only_disk_is_refused_typed(tiny_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(InvalidArgumentError, match="Read-only file system"):
        write_demo_models(str(tiny_tmpfs / "demo"), ["llama-20m"])
