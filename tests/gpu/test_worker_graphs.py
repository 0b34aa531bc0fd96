"""A `warmserve worker` on a GPU captures the decode CUDA graphs of a model while it is prewarmed (Prewarmed reports
the capture time) and an instance activated from it serves a batch; graphs against eager numerics are
tests/gpu/test_graphs.py's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

from warmserve import protocol as P  # noqa: E402

GREEDY = P.SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def _eager_tokens(path, prompts):
    """The same greedy tokens without graphs, in this process: what a correct replay must give."""
    from warmserve.engine import Engine, load_model
    from warmserve.memory import PagePool

    with PagePool(2 << 30, backend="cuda") as pool:
        lm = load_model(path, pool).wait()
        try:
            with Engine(lm, cuda_graphs=False) as eng:
                return eng.generate(prompts, GREEDY)
        finally:
            lm.close()


def test_prewarm_captures_graphs_and_the_instance_serves_with_them(tmp_path):
    from warmserve.engine.demo import write_demo_models
    from warmserve.worker import WorkerClient, spawn_local_worker

    path = write_demo_models(str(tmp_path), ("llama-20m",))["llama-20m"]
    prompts = [[1, 2, 3], list(range(5, 60)), [9] * 7]
    want = _eager_tokens(path, prompts)
    proc, ep = spawn_local_worker("cuda:0")
    try:
        with WorkerClient(ep) as c:
            pw = c.prewarm(path, "m", max_num_seqs=8)
            assert pw.graphs_capture_s > 0
            # the engine runs what the prewarm captured for: nothing is captured at activation (found in review:
            # an activation at the default 32 sequences captured buckets 16 and 32 again)
            act = c.activate("m", engine=P.EngineConfig(max_num_seqs=8))
            assert act.graphs_capture_s == 0.0
            streams = [c.generate("m", p, GREEDY) for p in prompts]
            got = [s.collect()[0] for s in streams]
            assert got == want  # the replayed decode steps give the eager path's greedy tokens
            c.deactivate("m")
            c.evict("m")  # graphs released with the weights
            assert c.stats().models == []
            c.shutdown(timeout_s=30)
    finally:
        if proc.poll() is None:
            proc.kill()
