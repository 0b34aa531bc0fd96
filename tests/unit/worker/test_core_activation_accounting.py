"""WorkerCore's Activate and Dedicate accounting, on the real pool and engine: Activated.copied_bytes counts what
was loaded into the activated model's own slot (not another model's load that finished meanwhile), and Dedicate
raises the KV cap of a shared instance whose share passes what the pool holds (it was refused as lowering it)."""

from __future__ import annotations

import sys

import pytest
import torch

from warmserve import protocol as P
from warmserve.engine.engine import Engine

from driven_core import DrivenCore


@pytest.fixture
def core():
    c = DrivenCore(64)
    yield c
    c.close()


def _during_engine_init(action):
    """Run `action` once, on this thread, when an Engine starts its _init: inside a worker's activation, at a
    point no timing can miss (a profile hook, not a stand-in: the activation and the action run as they are)."""
    target = Engine._init.__code__
    errors = []

    def hook(frame, event, arg):
        if event == "call" and frame.f_code is target:
            sys.setprofile(None)
            try:
                action()
            except BaseException as e:  # reaches the test through the list
                errors.append(e)

    sys.setprofile(hook)
    return errors


def test_a_load_of_another_model_finishing_during_an_activation_is_not_its_copy(core, tiny_models):
    core.prewarm(tiny_models["tiny-llama"], "a")
    data = torch.arange(1 << 20, dtype=torch.int32).numpy().tobytes()  # 4 MiB

    def other_load():  # what a prewarm of another model finishing meanwhile does to the pool's counters
        slot = core.pool.create_slot(len(data), "prewarm:other")
        slot.load([(data, 0, 0, len(data))]).wait(10.0)
        slot.close()

    loaded = core.pool.stats()["bytes_loaded"]
    errors = _during_engine_init(other_load)
    try:
        act = core.reply(core.send(P.Activate, name="a"))
    finally:
        sys.setprofile(None)
    assert not errors, errors
    assert core.pool.stats()["bytes_loaded"] == loaded + len(data)  # the other load did finish in the activation
    assert act.copied_bytes == 0


def test_a_load_into_the_activated_models_own_slot_is_counted(core, tiny_models):
    core.prewarm(tiny_models["tiny-llama"], "a")
    slot = core.core.models["a"].lm.slot
    same = slot.tensor(0, (8192,), torch.uint8).clone()  # its own first bytes: the weights stay as they are

    def own_load():
        slot.load([(same, 0, 0, same.numel())]).wait(10.0)

    errors = _during_engine_init(own_load)
    try:
        act = core.reply(core.send(P.Activate, name="a"))
    finally:
        sys.setprofile(None)
    assert not errors, errors
    assert act.copied_bytes == same.numel()


def test_a_shared_instance_whose_share_passes_the_pool_becomes_dedicated(tiny_models):
    c = DrivenCore(32)
    try:
        c.prewarm(tiny_models["tiny-llama"], "a")
        lm = c.core.models["a"].lm
        share = lm.kv_pool_blocks + 1  # allowed by Activate: the slot's range has room for it
        act = c.reply(c.send(P.Activate, name="a", shared=True, kv_blocks=share, kv_target_free_blocks=0))
        assert act.kv_blocks == share
        got = c.reply(c.send(P.Dedicate, model="a"))
        assert isinstance(got, P.KvTargetSet) and got.kv.kv_blocks_total == share
        assert not c.core.instances["a"].shared
    finally:
        c.close()


def test_dedicating_a_small_share_still_raises_it_to_the_pool(tiny_models):
    c = DrivenCore(32)
    try:
        c.prewarm(tiny_models["tiny-llama"], "a")
        lm = c.core.models["a"].lm
        c.reply(c.send(P.Activate, name="a", shared=True, kv_blocks=1, kv_target_free_blocks=0))
        got = c.reply(c.send(P.Dedicate, model="a"))
        assert got.kv.kv_blocks_total == lm.kv_capacity_blocks > 1
    finally:
        c.close()


def test_a_tensor_parallel_activation_does_not_count_another_models_load(tiny_models):
    """Each rank's Activated.copied_bytes is its own slot's: a load finishing in the rank's pool while the rank
    waits for the others in the activation's first collective is another model's (ParallelGroup.min_int is
    entered after the count is taken, in either version of the code)."""
    from concurrent.futures import ThreadPoolExecutor

    from warmserve.engine.parallel import ParallelGroup
    from warmserve.worker import InProcessWorker

    workers = [InProcessWorker("cpu", memory_gib=0.125, prefault=False, worker_id=f"rank{r}") for r in range(2)]
    data = torch.arange(1 << 20, dtype=torch.int32).numpy().tobytes()
    target = ParallelGroup.min_int.__code__
    errors = []

    def other_load(pool):
        slot = pool.create_slot(len(data), "prewarm:other")
        slot.load([(data, 0, 0, len(data))]).wait(10.0)
        slot.close()

    def activate(r: int):
        w = workers[r]
        if r == 1:
            def hook(frame, event, arg):
                if event == "call" and frame.f_code is target:
                    sys.setprofile(None)
                    try:
                        other_load(w.core.pool)
                    except BaseException as e:  # reaches the test through the list
                        errors.append(e)
            sys.setprofile(hook)
        try:
            return w.activate("tiny-llama", group_id="g")
        finally:
            sys.setprofile(None)

    try:
        port = workers[0].host_group_store()
        with ThreadPoolExecutor(2) as ex:
            for f in [ex.submit(w.join_group, "g", r, 2, port, group_timeout_s=20.0) for r, w in enumerate(workers)]:
                f.result(60)
            for r, w in enumerate(workers):
                w.prewarm(tiny_models["tiny-llama"], "tiny-llama", tp=2, rank=r)
            loaded = workers[1].core.pool.stats()["bytes_loaded"]
            acts = [f.result(60) for f in [ex.submit(activate, r) for r in range(2)]]
        assert not errors, errors
        assert workers[1].core.pool.stats()["bytes_loaded"] == loaded + len(data)
        assert [a.copied_bytes for a in acts] == [0, 0]
    finally:
        for w in workers:
            w.close()
