"""The ranks of a tensor-parallel instance activated without ``Activate.engine`` take their scheduler limits from
their own workers' engine configs (``warmserve worker --max-num-seqs``, ``--max-batch-tokens``): those must be
agreed on, as the KV cap is. Found in review: ranks of max_num_seqs 1 and 32 (or max_batch_tokens 16 and 2048)
scheduled different batches, their collectives carried tensors of different sizes, and gloo's size check called
std::terminate (the whole worker process aborted). Two in-process workers with real gloo groups and shards."""

from __future__ import annotations

import pytest
from tp_groups import start_tp2

from warmserve import protocol as P
from warmserve.worker import InProcessWorker

pytestmark = pytest.mark.slow

GREEDY = P.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
MODEL = "tiny-llama"  # 4 heads, 2 KV heads: splits 2 ways
#: The small rank's limits: one sequence at a time, and a 55-token prompt prefilled in 4 chunks.
SMALL = P.EngineConfig(max_num_seqs=1, max_batch_tokens=16)
PROMPTS = [[1, 2, 3, 4], list(range(5, 60))]


def _reference(path: str) -> list[list[int]]:
    """Greedy tokens of the whole model (tp = 1) under the small limits, two requests at once."""
    with InProcessWorker("cpu", memory_gib=0.125, prefault=False, engine=SMALL) as w:
        w.prewarm(path, MODEL)
        w.activate(MODEL)
        streams = [w.generate(MODEL, p, GREEDY) for p in PROMPTS]
        return [s.collect()[0] for s in streams]


@pytest.mark.parametrize("small_rank", [0, 1])
def test_ranks_with_different_engine_configs_run_the_smallest_limits_and_answer_as_tp1(tiny_models, small_rank):
    want = _reference(tiny_models[MODEL])
    workers = [InProcessWorker("cpu", memory_gib=0.125, prefault=False, worker_id=f"rank{r}",
                               engine=SMALL if r == small_rank else None) for r in range(2)]
    try:
        start_tp2(workers, tiny_models[MODEL], MODEL)  # no Activate.engine
        # Checked before any step: with different limits the first batch of two requests aborts the process.
        for w in workers:
            sched = w.core.instances[MODEL].engine.scheduler
            assert (sched.max_num_seqs, sched.max_batch_tokens) == (SMALL.max_num_seqs, SMALL.max_batch_tokens)
        streams = [workers[0].generate(MODEL, p, GREEDY) for p in PROMPTS]
        assert [s.collect()[0] for s in streams] == want
        follower = workers[1].core.instances[MODEL].tp
        assert follower.running and follower.error is None
    finally:
        for w in workers:
            w.close()
