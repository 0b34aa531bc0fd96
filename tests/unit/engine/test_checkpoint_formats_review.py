"""Checkpoints as older Hugging Face repos hold them, refused with the conversion that serves them. Found in the
review of real checkpoints: a repo of PyTorch pickles only (pytorch_model.bin) was told "point at a checkpoint
saved with safetensors", and one with a SentencePiece tokenizer.model only "the checkpoint needs a `tokenizers`
file", neither saying what to run; a quantized one (AWQ, FP8) by its symptom (a missing q_proj.weight, an F8_E4M3
dtype), not as quantized. The pickle case runs the command its error gives and serves the result's files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from warmserve.config import ModelSpec
from warmserve.controller.models import controller_model
from warmserve.engine.safetensors_header import CheckpointError, safetensors_files
from warmserve.errors import InvalidArgumentError


def test_a_checkpoint_of_pytorch_pickles_is_refused_with_a_conversion_that_works(tiny_dir, tmp_path):
    src = tmp_path / "pickles"
    shutil.copytree(tiny_dir["tiny-llama3"], src)
    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    os.remove(src / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        safetensors_files(str(src))
    said = str(e.value)
    assert "PyTorch pickles (pytorch_model.bin)" in said and e.value.fields["pickles"] == ["pytorch_model.bin"], said
    command = re.search(r"`(python -c .*? SRC DST)`", said).group(1)
    dst = tmp_path / "converted"
    r = subprocess.run(command.replace("python -c", f"{sys.executable} -c").replace(" SRC DST", f" {src} {dst}"),
                       shell=True, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert safetensors_files(str(dst)) == [str(dst / "model.safetensors")]
    assert controller_model(ModelSpec(str(dst))).weight_bytes == controller_model(
        ModelSpec(tiny_dir["tiny-llama3"])).weight_bytes


def test_a_sentencepiece_tokenizer_alone_is_refused_naming_the_file_and_how_to_write_tokenizer_json(tiny_dir,
                                                                                                     tmp_path):
    src = tmp_path / "spm"
    shutil.copytree(tiny_dir["tiny-llama3"], src)
    os.rename(src / "tokenizer.json", src / "tokenizer.model")
    with pytest.raises(InvalidArgumentError) as e:
        controller_model(ModelSpec(str(src)))
    said = str(e.value)
    assert "SentencePiece tokenizer.model only" in said and "AutoTokenizer.from_pretrained" in said, said
    os.remove(src / "tokenizer.model")
    with pytest.raises(InvalidArgumentError) as e:
        controller_model(ModelSpec(str(src)))
    assert "SentencePiece" not in str(e.value)


def _quantized(tiny_dir, tmp_path, method: str) -> str:
    """tiny-llama3 laid out as an AWQ repo (each projection's weight as qweight, qzeros and scales) or an FP8 one
    (F8_E4M3 weights with a weight_scale each), config.json naming the method."""
    src = tmp_path / method
    shutil.copytree(tiny_dir["tiny-llama3"], src)
    out = {}
    for k, v in load_file(str(src / "model.safetensors")).items():
        if not k.endswith("proj.weight"):
            out[k] = v
        elif method == "fp8":
            out[k] = v.to(torch.float8_e4m3fn)
            out[k.replace(".weight", ".weight_scale")] = torch.ones(())
        else:
            rows, cols = v.shape
            out[k.replace(".weight", ".qweight")] = torch.zeros(cols, max(1, rows // 8), dtype=torch.int32)
            out[k.replace(".weight", ".scales")] = torch.ones(1, rows, dtype=torch.float16)
    save_file(out, str(src / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": method, "bits": 4 if method == "awq" else 8}
    (src / "config.json").write_text(json.dumps(cfg))
    return str(src)


@pytest.mark.parametrize("method", ["awq", "fp8"])
def test_a_quantized_checkpoint_is_refused_naming_its_quantization(tiny_dir, tmp_path, method):
    """Before: "lacks 56 tensor(s) ... q_proj.weight" (AWQ) or "dtype 'F8_E4M3' ... not load" (FP8), the symptom."""
    with pytest.raises(InvalidArgumentError) as e:
        controller_model(ModelSpec(_quantized(tiny_dir, tmp_path, method)))
    said = str(e.value)
    assert f"quantization_config names {method!r}" in said and "unquantized checkpoint" in said, said
    assert e.value.fields["quantization"] == method


def test_a_config_that_declares_quantization_over_plain_weights_still_loads(tiny_dir, tmp_path):
    src = tmp_path / "plain"
    shutil.copytree(tiny_dir["tiny-llama3"], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq"}
    (src / "config.json").write_text(json.dumps(cfg))
    assert controller_model(ModelSpec(str(src))).weight_bytes == controller_model(
        ModelSpec(tiny_dir["tiny-llama3"])).weight_bytes
