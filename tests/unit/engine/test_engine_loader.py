"""Checkpoints into slots: header parsing, layout, dtype conversion, shards, activation with no copy, eviction."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.checkpoint import CheckpointError, read_header, read_tensors
from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
from warmserve.errors import CancelledError, InvalidArgumentError, OutOfMemoryError
from warmserve.memory import PagePool


def assert_inside_slot(tensors: dict[str, torch.Tensor], slot, region_bytes: int) -> None:
    """Zero copy, checked for every tensor: its whole storage lies inside the slot's weight region. A weight that
    torch copied (to another dtype, device or layout) has its own storage elsewhere and fails."""
    lo, hi = slot.base_address, slot.base_address + region_bytes
    assert tensors
    for name, t in tensors.items():
        st = t.untyped_storage()
        start = st.data_ptr()
        assert lo <= start and start + st.nbytes() <= hi, (
            f"{name}: storage [{start:#x}, {start + st.nbytes():#x}) is not inside the slot's [{lo:#x}, {hi:#x})")


def test_zero_copy_check_catches_a_torch_side_copy(demo_dir, pool):
    lm = load_model(demo_dir["llama-20m"], pool).wait()
    try:
        views = lm.weight_views()
        assert_inside_slot(views, lm.slot, lm.weight_region_bytes)
        views["layers.0.down.weight"] = views["layers.0.down.weight"].clone()
        with pytest.raises(AssertionError, match="layers.0.down.weight"):
            assert_inside_slot(views, lm.slot, lm.weight_region_bytes)
        del views
    finally:
        lm.close()


def test_header_parse_matches_safetensors(demo_dir):
    path = demo_dir["llama-20m"]
    infos = read_tensors(path)
    ref = load_file(os.path.join(path, "model.safetensors"))
    assert set(infos) == set(ref)
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        for name in ("model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight", "model.norm.weight"):
            ti = infos[name]
            assert ti.shape == tuple(ref[name].shape) and ti.dtype == ref[name].dtype
            f.seek(ti.file_offset)
            got = torch.frombuffer(bytearray(f.read(ti.nbytes)), dtype=ti.dtype).view(ti.shape)
            assert torch.equal(got, ref[name])


def test_malformed_header_is_a_typed_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CheckpointError) as e:
        read_header(str(bad))
    assert isinstance(e.value, ValueError)
    bad.write_bytes(struct.pack("<Q", 5) + b"nope!" + b"\0" * 16)
    with pytest.raises(CheckpointError):
        read_header(str(bad))


def test_weights_land_in_the_slot_byte_for_byte_and_evict_frees_pages(demo_dir, pool):
    path = demo_dir["qwen2-30m"]
    free0 = pool.free_pages
    loaded0 = pool.stats()["bytes_loaded"]
    seen = []
    job = load_model(path, pool, progress=lambda d, t: seen.append((d, t)))
    lm = job.wait(timeout_s=60)
    assert lm.slot.tag == "prewarm:qwen2-30m"
    assert pool.pages_by_tag()["prewarm:qwen2-30m"] == lm.weight_region_bytes // pool.page_bytes
    assert pool.stats()["bytes_loaded"] - loaded0 == lm.weight_bytes
    assert seen and seen[-1][0] == seen[-1][1] == lm.weight_bytes
    ref = load_file(os.path.join(path, "model.safetensors"))
    views = lm.weight_views()
    cfg = lm.config
    qkv = views["layers.2.qkv.weight"]
    assert torch.equal(qkv[:cfg.q_size], ref["model.layers.2.self_attn.q_proj.weight"])
    assert torch.equal(qkv[cfg.q_size + cfg.kv_size:], ref["model.layers.2.self_attn.v_proj.weight"])
    assert torch.equal(views["layers.2.qkv.bias"][cfg.q_size:cfg.q_size + cfg.kv_size],
                       ref["model.layers.2.self_attn.k_proj.bias"])
    assert torch.equal(views["layers.7.gate_up.weight"][cfg.intermediate_size:],
                       ref["model.layers.7.mlp.up_proj.weight"])
    assert views["lm_head"] is views["embed"]  # tied
    assert_inside_slot(views, lm.slot, lm.weight_region_bytes)
    del views, qkv
    lm.close()
    assert pool.free_pages == free0
    assert "prewarm:qwen2-30m" not in pool.pages_by_tag()


def test_activation_copies_nothing_and_deactivation_keeps_weights(demo_dir, pool):
    lm = load_model(demo_dir["llama-20m"], pool).wait()
    try:
        wpages = lm.weight_region_bytes // pool.page_bytes
        phys = lm.slot.physical_pages(0, wpages)
        loaded = pool.stats()["bytes_loaded"]
        eng = Engine(lm)
        assert lm.slot.tag == "instance:llama-20m"
        assert eng.model.embed.data_ptr() == lm.slot.base_address + lm.layout["embed"][0]
        params = {k: v for k, v in eng.model.params.items() if v is not None}
        assert set(params) >= set(lm.layout)  # every weight the engine computes with
        assert_inside_slot(params, lm.slot, lm.weight_region_bytes)
        del params
        first = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True))
        assert lm.slot.physical_pages(0, wpages) == phys
        assert pool.stats()["bytes_loaded"] == loaded
        kv_pages = lm.slot.mapped_pages - wpages
        assert kv_pages > 0 and kv_pages % (lm.kv_bytes_per_block // pool.page_bytes) == 0
        eng.close()
        assert lm.slot.mapped_pages == wpages  # KV pages back to the pool, weights stay
        assert lm.slot.tag == "prewarm:llama-20m"
        eng2 = Engine(lm)  # activate again: the same weights in the same pages give the first activation's tokens
        assert eng2.generate([[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True)) == first
        assert len(first[0]) == 4
        assert_inside_slot({k: v for k, v in eng2.model.params.items() if v is not None}, lm.slot,
                           lm.weight_region_bytes)
        with pytest.raises(InvalidArgumentError):
            Engine(lm)  # one running instance per loaded model
    finally:
        lm.close()  # evicting closes the running engine too
    assert lm.closed


def test_dtype_conversion_and_sharded_checkpoints(tmp_path, pool):
    cfg = config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=512))
    tok = build_tokenizer(512)
    # bfloat16 on disk, sharded into small files
    path = write_checkpoint(str(tmp_path), "sharded-bf16", cfg, dtype="bfloat16", tokenizer=tok, shard_bytes=64 << 10)
    assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 2
    infos = read_tensors(path)
    ref = {}
    for f in {ti.path for ti in infos.values()}:
        ref.update(load_file(f))
    lm16 = load_model(path, pool).wait()  # auto: bf16, byte-for-byte
    lm32 = load_model(path, pool, dtype="float32", name="as-f32").wait()  # converted per tensor
    try:
        assert lm16.dtype == torch.bfloat16 and lm32.dtype == torch.float32
        assert lm32.weight_bytes == 2 * lm16.weight_bytes
        v16, v32 = lm16.weight_views(), lm32.weight_views()
        want = ref["model.layers.1.mlp.down_proj.weight"]
        assert torch.equal(v16["layers.1.down.weight"], want)
        assert torch.equal(v32["layers.1.down.weight"], want.float())
        del v16, v32
        with Engine(lm32) as e32, Engine(lm16) as e16:
            a = e32.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=8, ignore_eos=True))
            b = e16.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=8, ignore_eos=True))
            assert len(a[0]) == len(b[0]) == 8
    finally:
        lm16.close()
        lm32.close()


def test_load_that_does_not_fit_is_refused_with_numbers(demo_dir):
    with PagePool(16 << 20) as small:
        with pytest.raises(OutOfMemoryError) as e:
            load_model(demo_dir["llama-20m"], small)
        assert e.value.asked_bytes > e.value.free_bytes == 16 << 20
        assert small.free_pages == small.total_pages


def test_cancel_rolls_back(demo_dir, pool):
    free0 = pool.free_pages
    job = load_model(demo_dir["qwen2-30m"], pool)
    job.cancel()
    assert pool.free_pages == free0
    with pytest.raises(CancelledError):
        job.wait()


def test_missing_tensor_and_bad_dtype_are_typed_errors(tmp_path, demo_dir, pool):
    path = tmp_path / "broken"
    path.mkdir()
    src = demo_dir["llama-20m"]
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["num_hidden_layers"] = 9  # the file has 8
    (path / "config.json").write_text(json.dumps(cfg))
    os.symlink(os.path.join(src, "model.safetensors"), path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks"):
        load_model(str(path), pool)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        load_model(src, pool, dtype="int8")
    with pytest.raises(InvalidArgumentError, match="config.json"):
        load_model(str(tmp_path), pool)


def test_float16_load_tracks_float32_logits(tiny_dir, pool):
    path = tiny_dir["tiny-bias"]
    prompt = list(range(1, 40))
    rows = {}
    for dt in ("float32", "float16"):
        lm = load_model(path, pool, dtype=dt, name=f"half-{dt}").wait()
        try:
            with Engine(lm) as eng:
                eng.record_logits = True
                eng.add_request("r", prompt, SamplingParams(max_tokens=1))
                eng.step()
                rows[dt] = eng.last_logits["r"]
        finally:
            lm.close()
    assert lm.weight_bytes * 2 == sum(ti.nbytes for ti in read_tensors(path).values())  # half of the fp32 file
    torch.testing.assert_close(rows["float16"], rows["float32"], atol=2e-2, rtol=2e-2)


def test_checkpoint_errors_cross_the_wire_as_themselves():
    from warmserve.errors import from_wire

    err = CheckpointError("bad file", path="/x")
    back = from_wire(err.to_wire())
    assert type(back) is CheckpointError and back.path == "/x" and isinstance(back, ValueError)


def test_raising_the_kv_cap_keeps_the_cache_in_place_and_refuses_to_lower_it(demo_dir, pool):
    """Engine.raise_kv_cap (a co-served instance dedicated in place): the longer view starts at the same address
    (blocks in use and CUDA graphs stay valid), running sequences finish as they would have, and the new blocks are
    mapped only as needed."""
    lm = load_model(demo_dir["llama-20m"], pool).wait()
    try:
        first = Engine(lm)
        ref = first.generate([[1, 2, 3]], SamplingParams(max_tokens=12, ignore_eos=True))
        first.close()
        eng = Engine(lm, kv_blocks=1)
        base = eng.kv.rows.data_ptr()
        eng.add_request("r", [1, 2, 3], SamplingParams(max_tokens=12, ignore_eos=True))
        outs = eng.step()
        mapped = eng.kv.num_mapped
        stats = eng.raise_kv_cap()
        assert stats.kv_blocks_total == lm.kv_capacity_blocks > 1
        assert eng.kv.rows.data_ptr() == base and eng.kv.num_mapped >= mapped
        while eng.has_unfinished():
            outs += eng.step()
        assert [t for o in outs for t in o.token_ids] == ref[0]
        with pytest.raises(InvalidArgumentError, match="lower"):
            eng.raise_kv_cap(1)
    finally:
        lm.close()
