"""`warmserve serve`'s checks before start-up (controller/serve.py), found in review: --policy-option
preempt_after_s=inf, which PolicyConfig documents as "never", was refused; and cuda:N was refused as "no CUDA
device visible" when `nvidia-smi -L` failed or timed out, which says nothing about the devices."""

from __future__ import annotations

import argparse
import math
import os

import pytest

from warmserve.controller import serve
from warmserve.errors import InvalidArgumentError


def parse(*argv):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(list(argv))


def test_preempt_after_s_inf_from_the_command_line_means_never():
    for text in ("inf", " inf", "Infinity"):
        pc = serve.build_config(parse("--policy-option", f"preempt_after_s={text}")).controller.policy_config
        assert math.isinf(pc.preempt_after_s)


@pytest.mark.parametrize("option, match", [
    ("preempt_after_s=nan", "preempt_after_s: nan is not a finite number"),
    ("window_s=inf", r"window_s: inf is not a finite number \(only preempt_after_s takes inf\)"),
    ("min_lifetime_s=inf", "min_lifetime_s: inf is not a finite number"),
    ("replan_s=-inf", "replan_s: -inf is not a finite number"),
])
def test_nan_anywhere_and_inf_where_it_means_nothing_are_refused(option, match):
    with pytest.raises(InvalidArgumentError, match=match):
        serve.build_config(parse("--policy-option", option))


def _fake_nvidia_smi(bin_dir, body: str) -> None:
    f = bin_dir / "nvidia-smi"
    f.write_text("#!/bin/sh\n" + body + "\n")
    f.chmod(0o755)


@pytest.mark.parametrize("body", [
    'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9',
    "exec sleep 30",  # a wedged driver: past the timeout
])
def test_cuda_devices_are_left_to_the_worker_when_nvidia_smi_gives_no_answer(tmp_path, monkeypatch, body):
    _fake_nvidia_smi(tmp_path, body)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(serve, "NVIDIA_SMI_TIMEOUT_S", 0.5, raising=False)
    serve.check_local_devices(["cuda:0", "cuda:3", "cpu:0"])


def test_cuda_devices_are_refused_when_the_answer_is_certain(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"; echo "GPU 1: NVIDIA H200 (UUID: GPU-1)"')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    serve.check_local_devices(["cuda:0", "cuda:1"])
    with pytest.raises(InvalidArgumentError, match="cuda:2 asked for, but only 2 CUDA device"):
        serve.check_local_devices(["cuda:2"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(InvalidArgumentError, match="cuda:1 asked for, but only 1 CUDA device"):
        serve.check_local_devices(["cuda:1"])
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        with pytest.raises(InvalidArgumentError, match="no CUDA device visible"):
            serve.check_local_devices(["cuda:0"])
