"""A command refused over one argument leaves no folder made for another. Found in review: the output checks made
the folders of --json or --out first, so a run refused after them (exit 2) left their empty trees behind; now the
command line takes back those still empty as a refused or failed command ends (outputs.remove_made_folders)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REFUSED = [
    (("calibrate", "--out", "nd1/sub/c.json", "--models", "llama-20m", "--memory-bytes", "5"), "nd1"),
    (("models", "demo", "--device", "cpu", "--models", "llama-20m", "--out", "nd2/demo"), "nd2"),
    (("simulate", "--no-search", "--seeds", "0", "--json", "nd3/x/o.json", "--preset", "paper-conv",
      "--duration-s", "60", "--rate", "1e308"), "nd3"),
]


@pytest.mark.parametrize("argv, made", REFUSED, ids=[a[0] for a, _ in REFUSED])
def test_a_refused_command_leaves_no_empty_folder(argv, made, tmp_path):
    env = dict(os.environ, WARMSERVE_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "warmserve", *argv], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / made).exists(), (proc.stderr, list(tmp_path.rglob("*")))


def test_a_folder_that_holds_something_is_kept(tmp_path):
    from warmserve.outputs import check_output_folder, remove_made_folders

    check_output_folder("--log-dir", str(tmp_path / "a" / "b"))
    check_output_folder("--json", str(tmp_path / "c" / "d"))
    (tmp_path / "a" / "b" / "worker.log").write_text("x")
    remove_made_folders()
    assert (tmp_path / "a" / "b" / "worker.log").exists() and not (tmp_path / "c").exists()
