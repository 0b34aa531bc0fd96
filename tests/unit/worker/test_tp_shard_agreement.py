"""Two ranks of one tensor-parallel group prewarmed under one model name with different dtypes, or from different
checkpoints: found in review, their Activates succeeded and the first step's collectives carried tensors of
different sizes (gloo's size check aborts the worker, or the step fails opaquely). Now both Activates fail with
ModelStateError, naming the two values and the fix, before any collective but the Activate's vote; the group stays
in step (the same ranks then activate the right shards and answer). Two in-process workers with a real gloo group."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import InProcessWorker

from tp_groups import join_tp2, start_tp2

pytestmark = pytest.mark.slow

GREEDY = P.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
MODEL = "tiny-llama"  # 4 heads, 2 KV heads: splits 2 ways
GROUP_TIMEOUT_S = 20.0


@pytest.mark.parametrize("differs", ["dtype", "checkpoint"])
def test_ranks_prewarmed_with_different_dtypes_or_checkpoints_refuse_to_activate_on_both_ranks(tiny_models, differs):
    path = tiny_models[MODEL]
    # rank 1's shard: the same name, bfloat16 where rank 0's is the checkpoint's float32, or another checkpoint
    # of the same head counts (it splits 2 ways too) under rank 0's model name
    odd = (path, "bfloat16") if differs == "dtype" else (tiny_models["tiny-qwen2"], "auto")
    workers = [InProcessWorker("cpu", memory_gib=0.125, prefault=False, worker_id=f"rank{r}") for r in range(2)]
    try:
        join_tp2(workers, GROUP_TIMEOUT_S)
        with ThreadPoolExecutor(2) as pool:
            workers[0].prewarm(path, MODEL, tp=2, rank=0)
            workers[1].prewarm(odd[0], MODEL, odd[1], tp=2, rank=1)
            t0 = time.monotonic()
            futures = [pool.submit(w.activate, MODEL, group_id="g") for w in workers]
            said = []
            for f in futures:  # each rank's error reaches this thread through its future
                with pytest.raises(errors.ModelStateError) as e:
                    f.result(60)
                said.append(str(e.value))
            took = time.monotonic() - t0
        assert took < GROUP_TIMEOUT_S / 2, took  # no rank waited out the group's timeout in a collective
        for rank, text in enumerate(said):
            assert repr(MODEL) in text and "'g'" in text and "Fix:" in text and "evict" in text, text
            if differs == "dtype":
                mine, other = ("float32", "bfloat16") if rank == 0 else ("bfloat16", "float32")
                assert f"loaded as {mine}, another rank's as {other}" in text, text
                assert "one dtype" in text, text
            else:
                assert "fingerprint 0x" in text and "one checkpoint" in text, text
        if differs == "checkpoint":  # the two fingerprints, each rank's first, the other's second
            fps = [t.split("fingerprint ")[1].split(" ")[0] for t in said]
            others = [t.split("one of ")[1].split(")")[0].split(" ")[0] for t in said]
            assert fps[0] != fps[1] and others == [fps[1], fps[0]], said
        assert all(w.core.models[MODEL].state == "prewarmed" for w in workers)
        # The group's collectives are still in step: the right shard on rank 1, and the instance serves.
        workers[1].evict(MODEL)
        start = time.monotonic()
        workers[1].prewarm(path, MODEL, tp=2, rank=1)
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(w.activate, MODEL, group_id="g") for w in workers]:
                f.result(60)
        assert time.monotonic() - start < GROUP_TIMEOUT_S / 2
        assert len(workers[0].generate(MODEL, [1, 2, 3, 4], GREEDY).collect()[0]) == GREEDY.max_tokens
    finally:
        for w in workers:
            w.close()


def test_ranks_of_one_checkpoint_and_dtype_still_activate(tiny_models):
    """The agreement passes shards of one checkpoint, one dtype (bfloat16, not the checkpoint's float32)."""
    workers = [InProcessWorker("cpu", memory_gib=0.125, prefault=False, worker_id=f"rank{r}") for r in range(2)]
    try:
        start_tp2(workers, tiny_models[MODEL], MODEL, GROUP_TIMEOUT_S, dtype="bfloat16")
        assert len(workers[0].generate(MODEL, [1, 2, 3, 4], GREEDY).collect()[0]) == GREEDY.max_tokens
    finally:
        for w in workers:
            w.close()
