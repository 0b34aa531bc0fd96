"""CUDA graphs of the decode step (engine/graphs.py) on a real GPU (skipped without): captured while the model is
prewarmed (no KV page mapped yet), replayed after KV blocks were mapped, unmapped and mapped again, equal to the
eager kernel path; capture cost recorded; eager fallback past the largest bucket; lifetime across activations and
eviction.

Tolerances: the engine-level comparisons run float32 with TF32 off against the eager kernel path, which picks
another attention split and runs matmuls with M = the batch, not the bucket: atol = rtol = 1e-3 on logits (as
tests/gpu/test_engine.py against transformers) and equal greedy tokens. The replay-vs-eager-body check runs the
same kernels on the same inputs and is exact.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

from warmserve.memory import kernels  # noqa: E402

if torch.cuda.is_available() and not kernels.kernels_compiled():
    pytest.skip("this build has no CUDA kernels (nvcc was not found at build time)", allow_module_level=True)

#: Prompt lengths and output lengths: the batch shrinks 7, 6, ..., 1 as requests finish (buckets 8, 4, 2, 1 with
#: padding), and the 250- and 255-token prompts cross into a second KV block during decode.
PROMPTS = (250, 40, 3, 255, 120, 7, 60)
MAX_TOKENS = (40, 12, 30, 20, 8, 25, 16)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from warmserve.engine.demo import write_demo_models

    return write_demo_models(str(tmp_path_factory.mktemp("demo")), names=["llama-20m", "qwen2-30m"])


@pytest.fixture(scope="module")
def pool():
    from warmserve.memory import PagePool

    with PagePool(2 << 30, backend="cuda") as p:
        yield p


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _prompts(vocab):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROMPTS]


def _run(lm, **kw):
    """Every request of the workload to completion: (tokens, per-step logits) by request, and the engine's
    graph figures."""
    from warmserve.engine import Engine, SamplingParams

    eng = Engine(lm, max_num_seqs=8, target_free_blocks=1, **kw)
    try:
        eng.record_logits = True
        for i, (p, m) in enumerate(zip(_prompts(lm.config.vocab_size), MAX_TOKENS)):
            eng.add_request(str(i), p, SamplingParams(max_tokens=m, ignore_eos=True))
        toks, logits = {}, {}
        while eng.has_unfinished():
            for o in eng.step():
                toks.setdefault(o.request_id, []).extend(o.token_ids)
            for rid, row in eng.last_logits.items():
                logits.setdefault(rid, []).append(row)
            eng.last_logits = {}
        info = dict(graphs=eng.graphs, graph_steps=eng.num_graph_steps, capture_s=eng.graph_capture_s,
                    steps=eng.num_steps, mapped_max=eng.kv.num_mapped)
    finally:
        eng.close()
    return toks, logits, info


def _kv_mapped(lm) -> bool:
    first = lm.weight_region_bytes // lm.slot.page_bytes
    return any(off + n > first for off, n in lm.slot.mapped_ranges())


def _same(a, b):
    assert a[0] == b[0]  # greedy tokens
    for rid in a[1]:
        torch.testing.assert_close(torch.stack(a[1][rid]), torch.stack(b[1][rid]), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["llama-20m", "qwen2-30m"])
def test_graphs_captured_at_prewarm_replay_equal_to_eager_across_kv_growth(name, demo, pool):
    from warmserve.engine import load_model
    from warmserve.engine.graphs import capture_decode_graphs, graphs_for

    lm = load_model(demo[name], pool).wait()
    try:
        assert not _kv_mapped(lm)  # prewarmed: weights only
        g = capture_decode_graphs(lm, 8)
        assert not _kv_mapped(lm)  # capture touched no KV page
        st = g.stats
        assert g.buckets == st.buckets == (1, 2, 4, 8) and set(st.bucket_capture_s) == {1, 2, 4, 8}
        assert st.capture_s >= sum(st.bucket_capture_s.values()) > 0 and st.pool_reserved_bytes > 0
        print(f"{name}: capture {st.capture_s * 1e3:.1f} ms (warm-up {st.warmup_s * 1e3:.1f} ms), pool "
              f"{st.pool_reserved_bytes / 2**20:.1f} MiB, device {st.device_bytes / 2**20:.1f} MiB")

        eager = _run(lm, cuda_graphs=False)
        assert eager[2]["graphs"] is None and eager[2]["graph_steps"] == 0
        graphed = _run(lm)  # KV blocks mapped after the capture, given back, mapped again
        info = graphed[2]
        assert info["graphs"] is g and info["capture_s"] == 0.0  # the prewarm's graphs, nothing captured now
        assert info["graph_steps"] >= max(MAX_TOKENS) - 1 and set(g.replays) == {1, 2, 4, 8}
        _same(graphed, eager)
        again = _run(lm)  # a second activation of the same prewarmed model: same graphs, same answers
        assert again[2]["graphs"] is g and again[2]["capture_s"] == 0.0
        _same(again, eager)
        assert graphs_for(lm) is g
    finally:
        lm.close()
    assert graphs_for(lm) is None  # eviction drops them (unpinned views did not block the slot's close)


def test_eager_fallback_past_the_largest_bucket(demo, pool, monkeypatch):
    from warmserve.engine import graphs, load_model

    lm = load_model(demo["llama-20m"], pool).wait()
    try:
        eager = _run(lm, cuda_graphs=False)
        monkeypatch.setattr(graphs, "MAX_GRAPH_BATCH", 2)
        mixed = _run(lm, cuda_graphs=True)  # captured at activation: buckets 1 and 2; batches 3..7 run eagerly
        g = mixed[2]["graphs"]
        assert g.buckets == (1, 2) and mixed[2]["capture_s"] > 0 and set(g.replays) == {1, 2}
        assert 0 < mixed[2]["graph_steps"] < mixed[2]["steps"]
        _same(mixed, eager)
    finally:
        graphs.release_decode_graphs(lm)
        lm.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_replay_reproduces_the_eager_body_exactly(dtype, demo, pool):
    from warmserve.engine import Engine, SamplingParams, load_model
    from warmserve.engine.graphs import HEAD_COLUMNS, pack_decode_inputs

    lm = load_model(demo["llama-20m"], pool, dtype=dtype).wait()
    try:
        with Engine(lm, max_num_seqs=4, cuda_graphs=True) as eng:
            g = eng.graphs
            for i, n in enumerate((5, 260, 31)):
                eng.add_request(str(i), list(range(1, n + 1)), SamplingParams(max_tokens=3, ignore_eos=True))
            eng.step()  # prefill (eager); the next step would be a 3-row decode, padded to bucket 4
            seqs = list(eng.seqs.values())
            decodes = [(s.output[-1], s.length - 1, s.blocks) for s in seqs]
            pack_decode_inputs(g._host, decodes, 4, g.block_tokens, g.rows_per_block)
            with torch.inference_mode():
                g.packed[:4].copy_(g.host[:4])
                want = g._body(4, eng.kv.rows)[:3].clone()  # eager: writes the step's K/V, then attends
            got = g.run(decodes).clone()  # rewrites the same K/V, attends the same keys
            assert torch.equal(got, want)
            assert g.packed[3, :HEAD_COLUMNS].tolist() == [0, 0, -1, 1]
    finally:
        lm.close()


def test_decode_lookahead_gives_the_tokens_of_plain_replays(demo, pool):
    """Engine.decode_lookahead (engine/lookahead.py) over real graph replays: each greedy step's successor is
    replayed before its tokens are read back, fed the argmax on the device; the tokens are those of plain replays
    while the batch shrinks 7, 6, ..., 1 and two prompts cross into a second KV block (CPU twin:
    tests/unit/engine/test_decode_lookahead.py). Written without a GPU."""
    from warmserve.engine import Engine, SamplingParams, load_model
    from warmserve.engine.graphs import capture_decode_graphs, release_decode_graphs

    lm = load_model(demo["llama-20m"], pool).wait()

    def serve(on: bool):
        with Engine(lm, max_num_seqs=8, target_free_blocks=1) as eng:
            eng.decode_lookahead = on
            for i, (p, m) in enumerate(zip(_prompts(lm.config.vocab_size), MAX_TOKENS)):
                eng.add_request(str(i), p, SamplingParams(max_tokens=m, ignore_eos=True))
            toks = {}
            while eng.has_unfinished():
                for o in eng.step():
                    toks.setdefault(o.request_id, []).extend(o.token_ids)
            return toks, eng._ahead, eng.num_graph_steps

    try:
        capture_decode_graphs(lm, 8)
        plain, none, _ = serve(False)
        ahead, la, graphed = serve(True)
        assert none is None and graphed > 0
        assert ahead == plain
        assert la.hits > 0 and la.launched > la.hits
    finally:
        release_decode_graphs(lm)
        lm.close()
