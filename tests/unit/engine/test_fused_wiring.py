"""Model.fused_kernels on the CPU: the model's wiring of the fused layer kernels (residual add + norm, rotary +
head split, silu * up; memory/kernels.py) with the kernels replaced by their contracts written in torch. Same
tokens and logits as the unfused forward: each residual reaches the right norm, the last one the final norm, the
heads their rotation. The kernels meet their contracts on a GPU (tests/gpu/test_layer_kernels.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine import model as model_module
from warmserve.engine.rope import apply_rope
from warmserve.memory import PagePool, kernels

from tiny_checkpoints import TINY

CALLS = {"add_rms_norm": 0, "rope_qkv": 0, "silu_mul": 0}


@pytest.fixture(autouse=True)
def fresh_calls():
    """CALLS as each test begins: the prologue test adds its own counters, and with pytest-xdist's worksteal it can
    run first on a worker (seen in CI: the fused test then found two counters it does not count)."""
    CALLS.clear()
    CALLS.update(add_rms_norm=0, rope_qkv=0, silu_mul=0)


def contract_add_rms_norm(x, w, eps, res=None):
    CALLS["add_rms_norm"] += 1
    h = x if res is None else x + res
    return w * F.rms_norm(h.float(), (h.shape[-1],), eps=eps).to(h.dtype), h


def contract_rope_qkv(qkv, cos, sin, heads, kv_heads, head_dim):
    CALLS["rope_qkv"] += 1
    n = qkv.shape[0]
    q, k, v = qkv.view(n, heads + 2 * kv_heads, head_dim).split([heads, kv_heads, kv_heads], dim=1)
    return apply_rope(q, cos, sin).contiguous(), apply_rope(k, cos, sin).contiguous(), v.contiguous()


def contract_silu_mul(gu):
    CALLS["silu_mul"] += 1
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


@pytest.mark.parametrize("name", ["tiny-bias", "tiny-mistral"])
def test_fused_forward_matches_the_unfused_one(name, tiny_dir, monkeypatch):
    monkeypatch.setattr(kernels, "add_rms_norm", contract_add_rms_norm)
    monkeypatch.setattr(kernels, "rope_qkv", contract_rope_qkv)
    monkeypatch.setattr(kernels, "silu_mul", contract_silu_mul)
    monkeypatch.setattr(model_module, "kernels_usable", lambda *a: True)
    spec = TINY[name]
    results = {}
    with PagePool(64 << 20) as pool:
        for fused in (False, True):
            for key in CALLS:
                CALLS[key] = 0
            lm = load_model(tiny_dir[name], pool).wait()
            lm.fused_kernels = fused
            eng = Engine(lm, max_batch_tokens=40)
            prompts = [torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist()
                       for n in (3, 30, 70)]
            results[fused] = eng.generate_with_logits(prompts, SamplingParams(max_tokens=5, ignore_eos=True))
            steps = eng.num_steps
            eng.close()
            lm.close()
            # one norm per sublayer plus the final one, one rotation and one silu * up per layer, every step
            layers = spec.num_hidden_layers
            expect = {"add_rms_norm": (2 * layers + 1) * steps, "rope_qkv": layers * steps,
                      "silu_mul": layers * steps}
            assert CALLS == (expect if fused else dict.fromkeys(CALLS, 0))
    assert results[True][0] == results[False][0]
    for mine, ref in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(mine, ref, atol=0, rtol=0)


def test_fused_kernels_without_a_gpu_are_refused_with_the_fix(tiny_dir):
    from warmserve.errors import BackendUnavailableError

    with PagePool(64 << 20) as pool:
        lm = load_model(tiny_dir["tiny-bias"], pool).wait()
        lm.fused_kernels = True
        with pytest.raises(BackendUnavailableError, match="fused_kernels = False"):
            Engine(lm)
        lm.fused_kernels = False
        Engine(lm).close()  # the refused activation left nothing behind
        lm.close()


def contract_gemv_norm(x, ln, eps, w, b=None, res=None):
    CALLS["gemv_norm"] = CALLS.get("gemv_norm", 0) + 1
    normed, h = contract_add_rms_norm(x, ln, eps, res)
    return F.linear(normed, w, b), h


def contract_gemv_silu(gu, w, b=None):
    CALLS["gemv_silu"] = CALLS.get("gemv_silu", 0) + 1
    return F.linear(contract_silu_mul(gu), w, b)


@pytest.mark.parametrize("name", ["tiny-bias", "tiny-mistral"])
def test_gemv_prologues_forward_matches_the_fused_one(name, tiny_dir, monkeypatch):
    """Model.gemv_prologues' wiring (each norm and silu * up taken into the matmul after it, the residual carried
    on), the staged kernels replaced by their contracts: the same logits as the fused forward, bit for bit."""
    monkeypatch.setattr(kernels, "add_rms_norm", contract_add_rms_norm)
    monkeypatch.setattr(kernels, "rope_qkv", contract_rope_qkv)
    monkeypatch.setattr(kernels, "silu_mul", contract_silu_mul)
    monkeypatch.setattr(kernels, "gemv_usable", lambda x, w: x.shape[0] <= kernels.GEMV_MAX_ROWS)
    monkeypatch.setattr(kernels, "gemv", F.linear)
    monkeypatch.setattr(kernels, "gemv_staged_usable", lambda inp, w: inp.shape[0] <= kernels.GEMV_MAX_ROWS)
    monkeypatch.setattr(kernels, "gemv_norm", contract_gemv_norm)
    monkeypatch.setattr(kernels, "gemv_silu", contract_gemv_silu)
    monkeypatch.setattr(model_module, "kernels_usable", lambda *a: True)
    results = {}
    with PagePool(64 << 20) as pool:
        for prologues in (False, True):
            CALLS.update(gemv_norm=0, gemv_silu=0)
            lm = load_model(tiny_dir[name], pool).wait()
            lm.fused_kernels = True
            eng = Engine(lm, max_batch_tokens=40)
            assert not eng.model.gemv_prologues  # a CPU model: gemv and its prologues are the GPU's
            eng.model.gemv = eng.model.gemv_prologues = prologues
            prompts = [torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist()
                       for n in (3, 30, 70)]
            results[prologues] = eng.generate_with_logits(prompts, SamplingParams(max_tokens=5, ignore_eos=True))
            eng.close()
            lm.close()
            layers = TINY[name].num_hidden_layers
            # decode steps of 1 to 3 rows take the staged kernels: two norms and one silu * up per layer each
            assert (CALLS["gemv_norm"] > 0) == prologues and CALLS["gemv_norm"] == 2 * CALLS["gemv_silu"]
            assert CALLS["gemv_silu"] % layers == 0
    assert results[True][0] == results[False][0]
    for mine, ref in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(mine, ref, atol=0, rtol=0)


def test_rope_writes_kv_gives_the_decode_logits_of_rope_then_write_kv(tiny_dir, monkeypatch):
    """Model.rope_writes_kv's wiring in what a decode graph runs (graphs.decode_body, a padding row included), the
    kernels replaced by their torch contracts: each layer's keys land in its own K/V rows, so the logits equal
    those of rope_qkv + write_kv bit for bit, step after step. The kernel itself: tests/gpu/test_layer_kernels.py."""
    from test_graph_buckets import _contract_paged_attention, _contract_write_kv

    from warmserve.engine.graphs import HEAD_COLUMNS, decode_body, pack_decode_inputs

    offsets = []

    def contract_rope_qkv_to_cache(qkv, cos, sin, heads, kv_heads, head_dim, cache, rows, k_off, v_off):
        offsets.append((k_off, v_off))
        q, k, v = contract_rope_qkv(qkv, cos, sin, heads, kv_heads, head_dim)
        _contract_write_kv(cache, k, v, rows, k_off, v_off)
        return q

    for name, fn in (("add_rms_norm", contract_add_rms_norm), ("rope_qkv", contract_rope_qkv),
                     ("silu_mul", contract_silu_mul), ("write_kv", _contract_write_kv),
                     ("paged_attention", _contract_paged_attention),
                     ("rope_qkv_to_cache", contract_rope_qkv_to_cache)):
        monkeypatch.setattr(kernels, name, fn)
    monkeypatch.setattr(model_module, "kernels_usable", lambda *a: True)
    with PagePool(64 << 20) as pool:
        lm = load_model(tiny_dir["tiny-mistral"], pool).wait()
        lm.fused_kernels = True
        try:
            with Engine(lm, max_num_seqs=8, target_free_blocks=1) as eng:
                for i, n in enumerate((20, 7, 3)):
                    eng.add_request(str(i), torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(i))
                                    .tolist(), SamplingParams(max_tokens=8, ignore_eos=True))
                eng.step()  # the prefills
                kv, T = eng.kv, lm.block_tokens
                host = np.zeros((4, HEAD_COLUMNS + 2), dtype=np.int32)
                for _ in range(5):
                    chunks = eng.scheduler.schedule()
                    pack_decode_inputs(host, [(eng._token(c.seq, c.start), c.start, c.seq.blocks) for c in chunks],
                                       4, T, kv.rows_per_block)  # 3 decodes and a padding row
                    logits = {}
                    for on in (True, False):  # on first: a write it missed would show in its own logits
                        eng.model.rope_writes_kv = on
                        offsets.clear()
                        with torch.inference_mode():
                            logits[on] = decode_body(eng.model, torch.from_numpy(host.copy()), kv.rows,
                                                     kv.layer_offsets, max_len=2 * T, rows_per_block=kv.rows_per_block,
                                                     block_tokens=T)
                        assert offsets == (list(kv.layer_offsets) if on else [])
                    assert torch.equal(logits[True], logits[False])
                    eng.model.rope_writes_kv = False
                    eng._run(chunks)
                    eng.kv.grow()
        finally:
            lm.close()
