"""Found in review: `warmserve models demo` took flags it then ignored, exit 0: `--models` with no name wrote nothing
and said "done"; `--device` without `--size` was dropped (the small demos are drawn on the CPU); `--size` dropped
`--models` and `--dtype` (the sized demo is one model in bf16). Each now exits 2 naming the flags, nothing written."""

from __future__ import annotations

import os

import pytest

from warmserve import cli
from warmserve.engine import demo


@pytest.fixture
def nothing_written(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a demo was written")

    monkeypatch.setattr(demo, "write_sized_demo", boom)
    monkeypatch.setattr(demo, "write_checkpoint", boom)


def _refused(tmp_path, capsys, *flags) -> str:
    out = tmp_path / "demo"
    assert cli.main(["models", "demo", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "done" not in err
    assert not out.exists() or not os.listdir(out), os.listdir(out)
    return err


def test_models_with_no_name_is_refused(nothing_written, tmp_path, capsys):
    err = _refused(tmp_path, capsys, "--models")
    assert "--models" in err and "llama-20m" in err and "leave it out" in err, err


@pytest.mark.parametrize("flags", [("--device", "cuda:7"), ("--models", "llama-20m", "--device", "cpu")])
def test_device_without_size_is_refused(nothing_written, tmp_path, capsys, flags):
    err = _refused(tmp_path, capsys, *flags)
    assert f"--device {flags[-1]}" in err and "--size" in err, err


@pytest.mark.parametrize("flags, named", [(("--models", "llama-20m"), ["--models"]),
                                          (("--dtype", "float16"), ["--dtype"]),
                                          (("--dtype", "float32"), ["--dtype"]),
                                          (("--models", "llama-20m", "--dtype", "float16"), ["--models", "--dtype"])])
def test_size_with_models_or_dtype_is_refused_naming_them(nothing_written, tmp_path, capsys, flags, named):
    err = _refused(tmp_path, capsys, "--size", "1b", *flags)
    assert "--size 1b" in err and all(f in err for f in named) and "bfloat16" in err, err


def test_the_flags_that_go_together_still_run(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(demo, "write_sized_demo", lambda size, out=None, device=None: seen.append((size, device))
                        or str(tmp_path / "x"))
    assert cli.main(["models", "demo", "--out", str(tmp_path), "--size", "1b", "--device", "cpu"]) == 0
    assert seen == [("1b", "cpu")]
    assert cli.main(["models", "demo", "--out", str(tmp_path), "--models", "llama-20m", "--dtype", "float16"]) == 0
    assert os.path.isdir(tmp_path / "llama-20m")


@pytest.mark.parametrize("where,why", [("afile", "is a file, not a folder"), ("afile/sub", "is a file, not a folder")])
def test_an_out_that_cannot_be_a_folder_exits_2_naming_it(nothing_written, tmp_path, capsys, where, why):
    """Found in review: a bare FileExistsError / NotADirectoryError from os.makedirs, exit 1."""
    (tmp_path / "afile").write_text("x")
    assert cli.main(["models", "demo", "--out", str(tmp_path / where), "--models", "llama-20m"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and why in err and "Traceback" not in err and "Error:" not in err, err


def test_a_refused_flag_and_written_demos_import_no_torch(tmp_path):
    # Found in review: the module imported torch (2 s of CPU here) before any flag was checked, and for demos
    # written already; torch now comes where weights are drawn.
    import subprocess
    import sys

    code = ("import sys; from warmserve import cli; rc = cli.main(['models', 'demo', '--models']); "
            "from warmserve.engine.demo import write_demo_models; "
            f"write_demo_models({str(tmp_path)!r}, ['llama-20m']) if sys.argv[1] == 'write' else None; "
            "print(rc, 'torch' in sys.modules)")
    run = lambda what: subprocess.run([sys.executable, "-c", code, what], capture_output=True, text=True, timeout=120)
    assert run("check").stdout.split() == ["2", "False"]
    first = run("write")  # draws the weights: torch, of course
    assert first.stdout.split() == ["2", "True"], first.stderr
    assert run("write").stdout.split() == ["2", "False"], "a demo written already imported torch"
