"""`warmserve.Cluster` with GPU workers at their defaults (config.with_worker_page_bytes: 32 MiB pages where every
device is a GPU): the worker process starts on the GPU, says its page in its hello, and the cluster answers greedy
requests with the tokens the engine gives in this process. Written without a GPU; skipped without one."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

import warmserve  # noqa: E402
from warmserve.engine import SamplingParams  # noqa: E402
from warmserve.geometry import GPU_PAGE_BYTES  # noqa: E402

PROMPTS = ([5, 17, 300], list(range(3, 90)), [42] * 9)
GREEDY = dict(max_tokens=12, temperature=0.0, ignore_eos=True)


def _engine_tokens(path):
    from warmserve.engine import Engine, load_model
    from warmserve.memory import PagePool

    with PagePool(1 << 30, backend="cuda") as pool:
        lm = load_model(path, pool).wait()
        try:
            with Engine(lm) as eng:
                return eng.generate([list(p) for p in PROMPTS], SamplingParams(**GREEDY))
        finally:
            lm.close()


def test_a_cluster_of_one_gpu_worker_serves_on_its_default_pages(tmp_path):
    from warmserve.engine.demo import write_demo_models

    path = write_demo_models(str(tmp_path / "demo"), ("llama-20m",))["llama-20m"]
    want = _engine_tokens(path)
    with warmserve.Cluster([path], devices=["cuda:0"], log_dir=str(tmp_path / "logs")) as c:
        assert {page for _, page in c.controller.executor.pools_seen} == {GPU_PAGE_BYTES}
        params = SamplingParams(**GREEDY)
        got = [list(c.generate("llama-20m", list(p), params=params).token_ids) for p in PROMPTS]
        assert got == [list(t) for t in want]
