"""`warmserve models demo --size 1b --device X` checks the device before it makes any folder. Found in review: with
--device cuda on a machine without a GPU (or --device banana) it died with a raw torch traceback (exit 1) and left
an empty checkpoint folder behind, where every other --device flag exits 2 with "no CUDA device visible ...; use
--device cpu"."""

from __future__ import annotations

import os

import pytest
import torch

from warmserve import cli
from warmserve.engine import demo
from warmserve.errors import InvalidArgumentError


def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _refused(tmp_path, device: str) -> InvalidArgumentError:
    out = tmp_path / "demo"
    with pytest.raises(InvalidArgumentError) as e:
        demo.write_sized_demo("1b", str(out), device)
    assert not out.exists() or not os.listdir(out), os.listdir(out)  # no folder left behind
    return e.value


def test_cuda_without_a_gpu_is_refused_before_any_folder(monkeypatch, tmp_path):
    _no_gpu(monkeypatch)
    for device in ("cuda", "cuda:0"):
        err = _refused(tmp_path, device)
        assert "no CUDA device visible" in str(err) and "--device cpu" in str(err), err


def test_a_cuda_index_past_the_visible_ones_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = _refused(tmp_path, "cuda:3")
    assert "cuda:3" in str(err) and "1 CUDA device" in str(err), err


def test_a_device_that_is_no_device_is_refused(tmp_path):
    err = _refused(tmp_path, "banana")
    assert "--device" in str(err) and "banana" in str(err), err


def test_the_command_exits_2_naming_the_fix(monkeypatch, tmp_path, capsys):
    _no_gpu(monkeypatch)
    out = tmp_path / "demo"
    assert cli.main(["models", "demo", "--out", str(out), "--size", "1b", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device visible" in err and "Traceback" not in err, err
    assert not out.exists() or not os.listdir(out), os.listdir(out)
