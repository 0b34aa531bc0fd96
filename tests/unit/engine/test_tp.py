"""Tensor parallelism: tp = 2 in two real processes (gloo over 127.0.0.1) against tp = 1 on the same checkpoint.

Each rank is its own process with its own page pool, as a worker per device would be, and loads its shard from the
shared Hugging Face checkpoint. The ranks' entry point lives here (module level, so spawn can import it); a rank
writes what it saw to a file and the assertions run in the test's process.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open

from warmserve.engine import Engine, ModelConfig, SamplingParams, load_model
from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint
from warmserve.engine.parallel import ParallelGroup, TensorParallelError, shard_config, vocab_range
from warmserve.errors import InvalidArgumentError
from warmserve.geometry import shard_bytes

from net_ports import free_port

#: Prompt lengths: one crosses a 256-token KV block boundary.
LENGTHS = (5, 40, 300)
DECODE_STEPS = 4
#: Bound on one spawned run (import torch twice on 2 shared cores, load, run): nothing may hang past it.
SPAWN_TIMEOUT_S = 120.0
#: Odd vocabulary (the last shard is padded) with o_proj and MLP biases (added by rank 0 only).
ODD = DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=509, extra=(("attention_bias", True), ("mlp_bias", True)))


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory) -> str:
    return write_checkpoint(str(tmp_path_factory.mktemp("tp")), "tiny-odd-vocab", config_dict(ODD))


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def _run(eng: Engine) -> dict[str, torch.Tensor]:
    """Greedy prefill + DECODE_STEPS decode steps of every prompt; request id -> [1 + steps, vocab] logits."""
    eng.record_logits = True
    params = SamplingParams(max_tokens=DECODE_STEPS + 1, ignore_eos=True)
    for i, p in enumerate(_prompts(eng.cfg.vocab_size)):
        eng.add_request(str(i), p, params)
    rows: dict[str, list[torch.Tensor]] = {str(i): [] for i in range(len(LENGTHS))}
    while eng.has_unfinished():
        eng.step()
        for rid, row in eng.last_logits.items():
            rows[rid].append(row)
        eng.last_logits = {}
    return {rid: torch.stack(r) for rid, r in rows.items()}


def _spawn(fn, args, nprocs: int = 2, timeout_s: float = SPAWN_TIMEOUT_S) -> None:
    """Run fn(rank, *args) in nprocs processes. A rank's exception (with its traceback) or exit code is raised
    here by ProcessContext.join, which also terminates the other ranks; past timeout_s every rank is killed."""
    ctx = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"tensor-parallel ranks still running after {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(10)
        for f in ctx.error_files:  # a failed rank's traceback, which torch reads and leaves in $TMPDIR
            if os.path.exists(f):
                os.unlink(f)


def _rank_main(rank: int, world: int, port: int, jobs: list[tuple[str, str, int]], out_dir: str) -> None:
    torch.set_num_threads(1)
    from warmserve.memory import PagePool

    group = ParallelGroup.init(rank, world, "127.0.0.1", port, timeout_s=60)
    # gloo on CPU carries the control messages itself; NCCL would get a gloo group beside it (cpu_group)
    assert (group.backend, group.device, group.cpu_group) == ("gloo", torch.device("cpu"), None)
    out = {}
    try:
        with PagePool(256 << 20, backend="host", prefault=False) as pool:
            for name, path, batch_tokens in jobs:
                load = load_model(path, pool, tp=world, rank=rank)
                read_bytes = load.progress[1]
                lm = load.wait()
                lm.bind_group(group)
                eng = Engine(lm, max_batch_tokens=batch_tokens)
                logits = _run(eng)
                out[name] = {
                    "logits": logits, "pid": os.getpid(), "read_bytes": read_bytes, "weight_bytes": lm.weight_bytes,
                    "slot": (lm.slot.base_address, lm.weight_region_bytes),
                    "spans": {k: (t.data_ptr(), t.numel() * t.element_size()) for k, t in eng.model.params.items()},
                    "kv_ptr": eng.kv.rows.data_ptr(), "kv_heads": eng.cfg.num_kv_heads,
                }
                eng.close()
                lm.close()
    finally:
        group.close()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


def _failing_rank(rank: int, world: int, port: int, path: str) -> None:
    """Rank 1 fails to load (tp=4 does not split the model); rank 0 loads tp=2 and blocks in its first collective."""
    torch.set_num_threads(1)
    from warmserve.memory import PagePool

    group = ParallelGroup.init(rank, world, "127.0.0.1", port, timeout_s=60)
    with PagePool(128 << 20, backend="host", prefault=False) as pool:
        lm = load_model(path, pool, tp=4 if rank == 1 else world, rank=rank).wait()
        lm.bind_group(group)
        try:
            Engine(lm).generate([[1, 2, 3]], SamplingParams(max_tokens=2))
        except RuntimeError:
            # Rank 0's collective fails once rank 1 is gone (gloo: "Connection closed by peer"). It returns, so the
            # error the test sees is rank 1's own, whichever process the spawn context looks at first.
            return


def test_tp2_logits_match_tp1_on_prefill_and_decode_with_shards_in_their_own_slots(demo_dir, odd_dir, pool, tmp_path):
    # llama-20m: GQA (3 query heads per KV head); qwen2-30m: tied head, q/k/v biases; odd vocab: padded last
    # vocabulary shard and o/MLP biases, prefill in 64-token chunks that attend to cache written by earlier steps
    jobs = [("llama-20m", demo_dir["llama-20m"], 2048), ("qwen2-30m", demo_dir["qwen2-30m"], 2048),
            ("tiny-odd-vocab", odd_dir, 64)]
    _spawn(_rank_main, (2, free_port(), jobs, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["llama-20m"]["pid"] != ranks[1]["llama-20m"]["pid"]
    for name, path, batch_tokens in jobs:
        lm = load_model(path, pool).wait()
        try:
            with Engine(lm, max_batch_tokens=batch_tokens) as eng:
                ref = _run(eng)
            full_bytes = lm.weight_bytes
        finally:
            lm.close()
        for r, res in enumerate(ranks):
            got = res[name]
            for rid, want in ref.items():
                assert got["logits"][rid].shape == want.shape  # prefill row + every decode step
                torch.testing.assert_close(got["logits"][rid], want, atol=1e-4, rtol=1e-4,
                                           msg=lambda m: f"{name} rank {r} request {rid}: {m}")
            # each rank read only its slice: about half the weights (norms are replicated)
            assert got["read_bytes"] <= got["weight_bytes"] < 0.55 * full_bytes, (name, got["read_bytes"], full_bytes)
            # zero copy: every weight the model computes with lies in the rank's slot, the KV cache right after
            base, region = got["slot"]
            assert region == shard_bytes(full_bytes, 2)  # the pages the policy plans a shard with (geometry.py)
            for k, (ptr, nbytes) in got["spans"].items():
                assert base <= ptr and ptr + nbytes <= base + region, (name, r, k)
            assert got["kv_ptr"] == base + region
            assert got["kv_heads"] == lm.config.num_kv_heads // 2
        # the gathered logits are the same bits on both ranks, so both pick the same greedy token
        for rid in ref:
            assert torch.equal(ranks[0][name]["logits"][rid], ranks[1][name]["logits"][rid])


def test_a_failing_rank_reaches_the_test_and_nothing_hangs(demo_dir):
    t0 = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="TensorParallelError"):
        _spawn(_failing_rank, (2, free_port(), demo_dir["llama-20m"]))
    assert time.monotonic() - t0 < SPAWN_TIMEOUT_S


def test_tp_that_does_not_divide_heads_raises_a_typed_error(demo_dir, pool):
    path = demo_dir["llama-20m"]  # 6 query heads, 2 KV heads
    free = pool.free_pages
    for tp in (3, 4):
        with pytest.raises(TensorParallelError, match=r"use tp in \[1, 2\]") as e:
            load_model(path, pool, tp=tp, rank=0)
        assert e.value.tp == tp and e.value.valid_tp == [1, 2] and e.value.num_kv_heads == 2
        assert isinstance(e.value, InvalidArgumentError)
    assert pool.free_pages == free  # nothing was mapped
    with pytest.raises(InvalidArgumentError, match="rank 2 is outside"):
        load_model(path, pool, tp=2, rank=2)


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_shards_hold_the_checkpoint_slices_and_need_their_group(odd_dir, pool, dtype):
    # float32 as stored: row slices copied from the file by slot.load, column slices read with get_slice;
    # bfloat16: every slice converted on its way into the slot
    with safe_open(os.path.join(odd_dir, "model.safetensors"), framework="pt") as f:
        full = {k: f.get_tensor(k).to(torch.float32 if dtype == "auto" else torch.bfloat16) for k in f.keys()}
    cfg = ModelConfig.from_dir(odd_dir)
    for rank in range(2):
        lm = load_model(odd_dir, pool, dtype=dtype, tp=2, rank=rank).wait()
        try:
            assert lm.config == shard_config(cfg, 2) and lm.tp_rank == rank
            w = lm.weight_views()
            q, kv, inter = cfg.q_size // 2, cfg.kv_size // 2, cfg.intermediate_size // 2
            hp = "model.layers.1."
            qkv = torch.cat([full[hp + "self_attn.q_proj.weight"][rank * q:(rank + 1) * q],
                             full[hp + "self_attn.k_proj.weight"][rank * kv:(rank + 1) * kv],
                             full[hp + "self_attn.v_proj.weight"][rank * kv:(rank + 1) * kv]])
            assert torch.equal(w["layers.1.qkv.weight"], qkv)
            assert torch.equal(w["layers.1.o.weight"], full[hp + "self_attn.o_proj.weight"][:, rank * q:(rank + 1) * q])
            assert torch.equal(w["layers.1.o.bias"], full[hp + "self_attn.o_proj.bias"])
            assert torch.equal(w["layers.1.gate_up.bias"], torch.cat([
                full[hp + "mlp.gate_proj.bias"][rank * inter:(rank + 1) * inter],
                full[hp + "mlp.up_proj.bias"][rank * inter:(rank + 1) * inter]]))
            assert torch.equal(w["layers.1.down.weight"],
                               full[hp + "mlp.down_proj.weight"][:, rank * inter:(rank + 1) * inter])
            start, stop, rows = vocab_range(cfg.vocab_size, 2, rank)
            for name, hf in (("embed", "model.embed_tokens.weight"), ("lm_head", "lm_head.weight")):
                assert w[name].shape == (rows, cfg.hidden_size)
                assert torch.equal(w[name][:stop - start], full[hf][start:stop])
                assert not w[name][stop - start:].any()  # the padding of the last shard is zero
            assert torch.equal(w["norm"], full["model.norm.weight"])
            del w
            with pytest.raises(InvalidArgumentError, match=f"holds shard {rank} of 2"):
                lm.bind_group(ParallelGroup(1 - rank, 2))
            with pytest.raises(InvalidArgumentError, match="process group of 2 ranks"):
                Engine(lm)
            assert not lm.active
        finally:
            lm.close()


def test_a_bare_cuda_device_means_gpu_0_for_a_group():
    """Found in review: a group joined on `--device cuda` called torch.cuda.set_device on a device without an
    index, which torch refuses, so every join of such a worker failed. A group's device always has its index."""
    from warmserve.engine.parallel import indexed_device

    assert indexed_device("cuda") == torch.device("cuda", 0)
    assert indexed_device(torch.device("cuda", 3)) == torch.device("cuda", 3)
    assert indexed_device("cpu") == torch.device("cpu")
