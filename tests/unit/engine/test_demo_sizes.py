"""The GPU-sized demos (`warmserve models demo --size 1b|7b`): their configs, checked without writing GBs, and
the fast shard-by-shard writer they use, run on a tiny config (and loaded, plainly and through the host
checkpoint cache)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from warmserve.engine import load_model
from warmserve.engine.config import ModelConfig
from warmserve.engine.demo import (DEMO_MODELS, SIZED_DTYPE, SIZED_MODELS, SIZED_SHARD_BYTES, DemoSpec, config_dict,
                                   demo_spec, hf_tensor_shapes, plan_shards, write_checkpoint, write_demo_models)
from warmserve.engine.kv_cache import block_layout
from warmserve.geometry import PAGE_BYTES
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

TINY_VOCAB = 512


@pytest.mark.parametrize("size, params, head_dim, kv_block_mib", [("1b", 1.0e9, 64, 8), ("7b", 7.0e9, 128, 32)])
def test_sized_config(size, params, head_dim, kv_block_mib):
    name, spec = SIZED_MODELS[size]
    assert name not in DEMO_MODELS  # the default demo set is unchanged
    cfg = ModelConfig.from_dict(config_dict(spec, SIZED_DTYPE))
    assert cfg.architecture == "LlamaForCausalLM" and cfg.raw["torch_dtype"] == "bfloat16"
    assert abs(cfg.num_params() - params) / params < 0.03
    assert cfg.head_dim == head_dim and cfg.num_kv_heads == 8
    raw, padded = block_layout(cfg, torch.bfloat16, page_bytes=PAGE_BYTES)
    assert raw == padded == kv_block_mib << 20  # whole pages, no padding
    shapes = hf_tensor_shapes(cfg)
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    shards = plan_shards(cfg, 2, SIZED_SHARD_BYTES)
    assert [n for shard in shards for n in shard] == list(shapes)
    for shard in shards:
        assert sum(2 * torch.Size(shapes[n]).numel() for n in shard) <= SIZED_SHARD_BYTES
    assert len(shards) == -(-total // SIZED_SHARD_BYTES) or len(shards) == -(-total // SIZED_SHARD_BYTES) + 1


def test_fast_writer_shards_loads_and_matches_through_the_cache(tmp_path, pool):
    spec = DemoSpec("llama", 128, 256, 3, 4, 2, vocab_size=TINY_VOCAB)
    from warmserve.engine.demo import build_tokenizer

    path = write_checkpoint(str(tmp_path / "ck"), "tiny-sized", config_dict(spec), SIZED_DTYPE,
                            tokenizer=build_tokenizer(TINY_VOCAB), shard_bytes=200 << 10, device="cpu")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all(os.path.getsize(os.path.join(path, x)) <= (200 << 10) + 65536 for x in files)
    plain = load_model(path, pool).wait()
    assert plain.dtype == torch.bfloat16
    w = plain.weight_views()
    mats = [t for n, t in w.items() if t.dim() == 2 and n not in ("embed", "lm_head")]
    assert mats and all(abs(float(t.float().std()) - 0.02) < 0.004 for t in mats)  # normal(0, 0.02) matrices
    norms = [t for n, t in w.items() if n.endswith("norm")]
    assert norms and all(abs(float(t.float().mean()) - 1.0) < 0.1 for t in norms)
    with HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=64 << 20)) as cache:
        for expect in ("fills", "hits"):
            cached = load_model(path, pool, host_cache=cache, name=f"cached-{expect}").wait()
            cw = cached.weight_views()
            assert cw.keys() == w.keys() and all(torch.equal(cw[n], w[n]) for n in w)
            assert cache.stats()[expect] == len(files)
            del cw
            cached.close()
    del w, norms, mats
    plain.close()


def test_write_demo_models_takes_sized_names(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("warmserve.engine.demo.write_sized_demo", lambda size, out: calls.append((size, out)) or "p")
    assert write_demo_models(str(tmp_path), names=["llama-1b"]) == {"llama-1b": "p"}
    assert calls == [("1b", str(tmp_path))]


def test_a_demo_spec_is_found_by_its_directory_name_small_or_sized():
    """What the live replay's twin reads each served checkpoint's context from (``max_position_embeddings``, the
    live controller's ``max_context``): the sized demos by their directory names too (found in review: they got
    none, and the twin fell back to the run's longest request)."""
    assert demo_spec("llama-20m") is DEMO_MODELS["llama-20m"]
    assert demo_spec("llama-7b") is SIZED_MODELS["7b"][1] and demo_spec("llama-7b").max_position_embeddings == 8192
    assert demo_spec("7b") is None and demo_spec("nope") is None
