"""How the loader reads what it cannot copy byte for byte (conversions, tensor-parallel column slices), and which
checkpoints it takes: a file that shrank under a load is a CheckpointError (it read through a memory map, and a
truncated file was a SIGBUS of the whole worker, or a bare ValueError); an unused integer tensor does not refuse
the checkpoint; a config.json without torch_dtype loads in the checkpoint's dtype, as transformers does."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from warmserve.engine import loader
from warmserve.engine.checkpoint import CheckpointError, read_header, read_tensors
from warmserve.engine.config import DTYPES, ModelConfig
from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint
from warmserve.engine.loader import ModelLoad, load_model, plan_layout, resolve_dtype
from warmserve.engine.parallel import shard_config
from warmserve.memory import PagePool

SPEC = DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return write_checkpoint(str(tmp_path_factory.mktemp("reads")), "tiny", config_dict(SPEC))


@pytest.fixture
def small_pool():
    with PagePool(32 << 20, prefault=False) as p:
        yield p


def _copy(src: str, dst) -> str:
    shutil.copytree(src, str(dst))
    return str(dst)


def _start_after_truncation(path: str, pool, dtype, tp: int = 1, rank: int = 0) -> ModelLoad:
    """load_model's steps, with the file cut to a third between reading its header and the first read of a tensor
    (what an in-place re-save looks like for a moment): deterministic where a truncation racing a running load
    is not."""
    cfg = ModelConfig.from_dir(path)
    tensors = read_tensors(path)
    dt = DTYPES[dtype]
    layout, placed, weight_bytes, region = plan_layout(cfg, tensors, dt, pool.page_bytes, tp, rank)
    f = os.path.join(path, "model.safetensors")
    os.truncate(f, os.path.getsize(f) // 3)
    slot = pool.create_slot(region + pool.total_bytes, "prewarm:t")
    return ModelLoad("t", path, shard_config(cfg, tp), slot, dt, layout, placed, weight_bytes, region, None, rank)


@pytest.mark.parametrize("dtype,tp,rank", [("bfloat16", 1, 0), ("float16", 2, 1)], ids=["convert", "tp-slices"])
def test_a_file_truncated_under_the_load_is_a_checkpoint_error(ckpt, tmp_path, small_pool, dtype, tp, rank):
    path = _copy(ckpt, tmp_path / "cut")
    job = _start_after_truncation(path, small_pool, dtype, tp, rank)
    with pytest.raises(CheckpointError, match="truncated during the load"):
        job.wait(30.0)
    assert small_pool.free_pages == small_pool.total_pages


def _reference(path: str, lm, tp: int, rank: int) -> dict[tuple[int, tuple], torch.Tensor]:
    """(slot byte offset, shape) -> the rank's part of each tensor, from safetensors' own reader."""
    sd = load_file(os.path.join(path, "model.safetensors"))
    _, placed, _, _ = plan_layout(ModelConfig.from_dir(path), read_tensors(path), lm.dtype, lm.slot.page_bytes, tp,
                                  rank)
    out = {}
    for ti, off, sh in placed:
        t = sd[ti.name]
        if sh is not None:
            t = t.narrow(sh.dim, sh.start, sh.stop - sh.start)
        out[(off, tuple(t.shape))] = t.to(lm.dtype)
    return out


@pytest.mark.parametrize("dtype,tp,rank", [("bfloat16", 1, 0), ("float16", 2, 1), ("float32", 2, 0)])
def test_reads_in_many_chunks_give_safetensors_bytes(ckpt, small_pool, monkeypatch, dtype, tp, rank):
    # a chunk of a few rows: every tensor is read in several pieces, a row larger than the chunk alone
    monkeypatch.setattr(loader, "_CONVERT_CHUNK_BYTES", 600, raising=False)
    lm = load_model(ckpt, small_pool, dtype=dtype, tp=tp, rank=rank).wait(30.0)
    try:
        for (off, shape), ref in _reference(ckpt, lm, tp, rank).items():
            assert torch.equal(lm.slot.tensor(off, shape, lm.dtype), ref), (off, shape)
    finally:
        lm.close()


def test_an_unused_integer_tensor_is_ignored_and_a_needed_one_refused(ckpt, tmp_path, small_pool):
    path = _copy(ckpt, tmp_path / "extra")
    f = os.path.join(path, "model.safetensors")
    sd = load_file(f)
    ref = {k: v.clone() for k, v in sd.items()}
    sd["model.position_ids"] = torch.arange(16, dtype=torch.int64)
    sd["model.layers.0.self_attn.mask"] = torch.ones(4, 4, dtype=torch.bool)
    sd["model.layers.0.scale"] = torch.ones(3, dtype=torch.int32)
    save_file(sd, f)
    lm = load_model(path, small_pool).wait(30.0)
    try:
        assert torch.equal(lm.weight_views()["embed"], ref["model.embed_tokens.weight"])
    finally:
        lm.close()
    sd["model.norm.weight"] = sd["model.norm.weight"].to(torch.int32)
    save_file(sd, f)
    with pytest.raises(CheckpointError, match="model.norm.weight has dtype 'I32'") as e:
        load_model(path, small_pool)
    assert e.value.fields["tensors"] == ["model.norm.weight"]
    assert small_pool.free_pages == small_pool.total_pages


def _raw(path: str, header: dict, data_bytes: int) -> str:
    body = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(body)) + body + b"\0" * data_bytes)
    return path


def test_an_unknown_dtype_still_has_its_byte_range_checked(tmp_path):
    path = str(tmp_path / "model.safetensors")
    ok = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "ids": {"dtype": "I64", "shape": [4], "data_offsets": [8, 40]},
          "packed": {"dtype": "F4", "shape": [16], "data_offsets": [40, 48]}}
    info = read_header(_raw(path, ok, 48))
    assert (info["ids"].dtype, info["ids"].st_dtype, info["ids"].nbytes) == (None, "I64", 32)
    assert info["packed"].nbytes == 8
    for name, bad in [("ids", {"dtype": "I64", "shape": [5], "data_offsets": [8, 40]}),
                      ("packed", {"dtype": "F4", "shape": [16], "data_offsets": [40, 8]}),
                      ("packed", {"dtype": "F4", "shape": [16], "data_offsets": [40, 80]})]:
        with pytest.raises(CheckpointError, match=f"{name} byte range"):
            read_header(_raw(path, dict(ok, **{name: bad}), 48))


def _without_dtype(src: str, dst, first_fp16: bool) -> str:
    path = _copy(src, dst)
    with open(os.path.join(path, "config.json")) as fh:
        cfg = json.load(fh)
    cfg.pop("torch_dtype", None)
    cfg.pop("dtype", None)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    f = os.path.join(path, "model.safetensors")
    # lm_head.weight comes first in name order (transformers' "first floating tensor")
    sd = {k: (v.half() if first_fp16 and k == "lm_head.weight" else v.bfloat16()) for k, v in load_file(f).items()}
    save_file(sd, f)
    return path


@pytest.mark.parametrize("first_fp16", [False, True], ids=["bf16", "fp16-first"])
def test_a_config_without_torch_dtype_loads_in_the_checkpoints_dtype(ckpt, tmp_path, small_pool, first_fp16):
    path = _without_dtype(ckpt, tmp_path / "nodtype", first_fp16)
    want = torch.float16 if first_fp16 else torch.bfloat16
    lm = load_model(path, small_pool).wait(30.0)
    try:
        assert lm.dtype == want
        ref = load_file(os.path.join(path, "model.safetensors"))
        assert torch.equal(lm.weight_views()["embed"], ref["model.embed_tokens.weight"].to(want))
    finally:
        lm.close()
    assert resolve_dtype("float32", ModelConfig.from_dir(path), read_tensors(path)) == torch.float32


def test_transformers_picks_the_same_dtype(ckpt, tmp_path, small_pool):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    path = _without_dtype(ckpt, tmp_path / "nodtype-hf", first_fp16=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    lm = load_model(path, small_pool).wait(30.0)
    try:
        assert hf.dtype == lm.dtype == torch.float16
    finally:
        lm.close()
