"""The engine on a GPU: weights in a cuda-backend slot, numerics against transformers on the same device."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from warmserve.engine.demo import SMALL_MODELS, write_demo_models

    return write_demo_models(str(tmp_path_factory.mktemp("demo")), names=(*SMALL_MODELS, "llama-90m"))


@pytest.fixture(scope="module")
def pool():
    from warmserve.memory import PagePool

    with PagePool(2 << 30, backend="cuda") as p:
        yield p


def _hf(path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()


@pytest.mark.parametrize("name", ["llama-20m", "qwen2-30m"])
def test_cuda_logits_and_greedy_match_transformers(name, demo, pool):
    from warmserve.engine import Engine, SamplingParams, load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lm = load_model(demo[name], pool).wait()
    ref = _hf(demo[name])
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 8192, (n,), generator=g).tolist() for n in (3, 40, 270)]
    try:
        with Engine(lm) as eng:
            assert eng.model.embed.is_cuda
            # where graphs can run here, a capture that failed would leave only the eager path compared below
            assert not (eng.graphs_off_reason or "").startswith("capture failed"), eng.graphs_off_reason
            eng.record_logits = True
            for i, p in enumerate(prompts):
                eng.add_request(str(i), p, SamplingParams(max_tokens=64, ignore_eos=True))
            outs, logits = {}, {}
            while eng.has_unfinished():
                for o in eng.step():
                    outs.setdefault(o.request_id, []).extend(o.token_ids)
                for rid, row in eng.last_logits.items():
                    logits.setdefault(rid, []).append(row)
                eng.last_logits = {}
            assert eng.graphs is None or eng.num_graph_steps > 0  # the decode steps compared were replayed
    finally:
        lm.close()
    for i, p in enumerate(prompts):
        rid = str(i)
        seq = torch.tensor([p + outs[rid][:-1]], device="cuda")
        with torch.no_grad():
            want = ref(seq).logits[0, len(p) - 1:].float().cpu()
        torch.testing.assert_close(torch.stack(logits[rid]), want, atol=1e-3, rtol=1e-3)
        r = ref.generate(torch.tensor([p], device="cuda"), max_new_tokens=64, min_new_tokens=64, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
        assert r[0, len(p):].tolist() == outs[rid]


def test_cuda_activation_copies_nothing_and_kv_gives_pages_back(demo, pool):
    from warmserve.engine import Engine, SamplingParams, load_model

    lm = load_model(demo["llama-20m"], pool).wait()
    try:
        wpages = lm.weight_region_bytes // pool.page_bytes
        phys = lm.slot.physical_pages(0, wpages)
        loaded = pool.stats()["bytes_loaded"]
        eng = Engine(lm, target_free_blocks=4)
        out = eng.generate([[1, 2, 3]] * 8, SamplingParams(max_tokens=16, temperature=0.7, seed=3))
        assert len(out) == 8 and out[0] == out[1]  # same seed, same prompt
        assert lm.slot.physical_pages(0, wpages) == phys and pool.stats()["bytes_loaded"] == loaded
        free = pool.free_pages
        eng.set_kv_target_free_blocks(0)
        assert pool.free_pages > free
        eng.close()
        assert lm.slot.mapped_pages == wpages
    finally:
        lm.close()


def test_cuda_bfloat16_conversion_runs(demo, pool):
    from warmserve.engine import Engine, SamplingParams, load_model

    lm = load_model(demo["qwen2-30m"], pool, dtype="bfloat16").wait()
    try:
        assert lm.dtype == torch.bfloat16
        with Engine(lm) as eng:
            assert len(eng.generate([[5, 6, 7]], SamplingParams(max_tokens=8, ignore_eos=True))[0]) == 8
    finally:
        lm.close()


@pytest.mark.parametrize("page_mib", [8, 32])
def test_larger_pages_give_the_same_tokens_and_every_kv_page_back(demo, pool, page_mib):
    """KV blocks sharing cuda pages (KVPageMapper; llama-90m's 6 MiB blocks also lie across two 8 MiB pages): the
    same greedy tokens as on 2 MiB pages, and a KV target of 0 leaves only the weights mapped."""
    from warmserve.engine import Engine, SamplingParams, load_model
    from warmserve.memory import PagePool

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 8192, (n,), generator=g).tolist() for n in (3, 300, 700)]
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    ref = load_model(demo["llama-90m"], pool).wait()
    try:
        with Engine(ref, cuda_graphs=False) as eng:
            want = eng.generate(prompts, params)
    finally:
        ref.close()
    with PagePool(1 << 30, backend="cuda", page_bytes=page_mib << 20) as big:
        lm = load_model(demo["llama-90m"], big).wait()
        try:
            with Engine(lm, cuda_graphs=False, target_free_blocks=2) as eng:
                got = eng.generate(prompts, params)
                eng.set_kv_target_free_blocks(0)
                weight_pages = lm.weight_region_bytes // big.page_bytes
                assert lm.slot.mapped_pages == weight_pages and eng.kv.mapper.pages_mapped == 0
        finally:
            lm.close()
    assert got == want
