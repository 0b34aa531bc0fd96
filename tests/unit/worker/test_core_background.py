"""WorkerCore's background work (worker/background.py) against the real pool, loader and engine, ticked by hand:
a converting load does not stop the other instances' steps, a stage's failure stays with what it concerns, and an
engine's own failure is not blamed on its requesters."""

from __future__ import annotations

import time

import pytest
import torch

from warmserve import _C
from warmserve import protocol as P
from warmserve.memory import PagePool
from warmserve.worker.core import WorkerCore

GREEDY = P.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
C = "client"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two cores shared by several jobs: the load's thread and the engine's steps each get one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Harness:
    """A WorkerCore over a real pool, its replies kept by request id."""

    def __init__(self, pool_mib: int = 256):
        self.pool = PagePool(pool_mib << 20, prefault=False)
        self.replies: list[tuple[float, object]] = []
        self.core = WorkerCore(self.pool, device="cpu", worker_id="w-bg", emit=self._emit)
        self._next_id = 100

    def _emit(self, peer, msg) -> None:
        self.replies.append((time.perf_counter(), msg))

    def of(self, rid: int, cls=object) -> list:
        return [m for _, m in self.replies if getattr(m, "id", None) == rid and isinstance(m, cls)]

    def send(self, msg) -> int:
        self.core.handle(C, msg)
        return msg.id

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def until(self, rid: int, cls, ticks: int = 2000):
        for _ in range(ticks):
            got = self.of(rid, (cls, P.Error))
            if got:
                assert isinstance(got[-1], cls), got[-1]
                return got[-1]
            if not self.core.tick():
                time.sleep(0.001)
        raise AssertionError(f"no {cls.__name__} for request {rid} after {ticks} ticks")

    def prewarm(self, path: str, **kw) -> P.Prewarmed:
        return self.until(self.send(P.Prewarm(id=self.new_id(), path=path, **kw)), P.Prewarmed)

    def activate(self, name: str, **kw) -> P.Activated:
        rid = self.send(P.Activate(id=self.new_id(), name=name, **kw))
        (reply,) = self.of(rid)
        assert isinstance(reply, P.Activated), reply
        return reply

    def generate(self, model: str, prompt: list[int], sampling=GREEDY) -> int:
        return self.send(P.Generate(id=self.new_id(), model=model, prompt_ids=prompt, sampling=sampling))

    def tokens(self, rid: int) -> list[int]:
        return [t for m in self.of(rid, P.Tokens) for t in m.token_ids]

    def close(self) -> None:
        self.core.close()
        self.pool.close()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def f32_checkpoint(tmp_path_factory) -> str:
    """About 100 MiB of float32 weights, so that converting them to bfloat16 takes a measurable while."""
    from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint

    spec = DemoSpec("llama", 768, 2048, 12, 8, 2, vocab_size=1024)
    return write_checkpoint(str(tmp_path_factory.mktemp("f32")), "f32-convert", config_dict(spec),
                            dtype="float32", tokenizer=build_tokenizer(1024), device="cpu")


def test_a_converting_load_does_not_stop_the_other_instances_steps(h, tiny_models, f32_checkpoint):
    """Found in review: the dtype conversion ran inside the wait(0.0) of the worker's poll, so the tick that found
    the copies done converted every tensor on the worker's thread while every other instance's steps waited."""
    h.core.progress_interval_s = 0.0  # every change of the load's progress is reported
    h.prewarm(tiny_models["tiny-llama"])
    h.activate("tiny-llama", kv_blocks=8)
    serving = h.generate("tiny-llama", [1, 2, 3, 4], P.SamplingParams(max_tokens=1500, temperature=0.0,
                                                                      ignore_eos=True))
    h.core.tick()  # its prefill
    assert h.tokens(serving)

    t0 = time.perf_counter()
    load = h.send(P.Prewarm(id=h.new_id(), path=f32_checkpoint, dtype="bfloat16"))
    ticks_s = []
    while not h.of(load, (P.Prewarmed, P.Error)):
        t = time.perf_counter()
        h.core.tick()
        ticks_s.append(time.perf_counter() - t)
        assert len(ticks_s) < 100_000
    total_s = time.perf_counter() - t0
    (done,) = h.of(load, (P.Prewarmed, P.Error))
    assert isinstance(done, P.Prewarmed), done
    assert max(ticks_s) < total_s / 4, (max(ticks_s), total_s, len(ticks_s))
    during = [m for at, m in h.replies if isinstance(m, P.Tokens) and m.id == serving and t0 <= at]
    assert len(during) >= 3, f"the serving instance stepped {len(during)} times during a {total_s:.3f} s load"
    partial = [m.loaded_bytes for m in h.of(load, P.PrewarmProgress) if 0 < m.loaded_bytes < m.total_bytes]
    assert partial, "no progress was reported while the load converted"

    lm = h.core.models["f32-convert"].lm
    from safetensors import safe_open

    with safe_open(f"{f32_checkpoint}/model.safetensors", framework="pt") as f:
        want = f.get_tensor("model.layers.3.mlp.down_proj.weight").to(torch.bfloat16)
    views = lm.weight_views()
    assert lm.dtype == torch.bfloat16 and torch.equal(views["layers.3.down.weight"], want)
    del views


def _disarm() -> None:
    for op in ("mmap", "mremap"):
        _C._debug_fail_after(op, 0)


def test_a_failed_idle_kv_growth_stays_with_its_instance(h, tiny_models, caplog):
    """Found in review: the tick's stages ran unguarded, so a failure in one (here an idle instance's KV growth,
    failed by the driver) left tick() and skipped the later ones; an in-process worker's caller got it. The
    instance that failed tries again later; the others step on."""
    h.prewarm(tiny_models["tiny-llama"])
    h.prewarm(tiny_models["tiny-qwen2"])
    one_block_a_tick = P.EngineConfig(kv_map_blocks_per_step=1)
    h.activate("tiny-llama", shared=True, kv_blocks=16, kv_target_free_blocks=12, engine=one_block_a_tick)
    h.activate("tiny-qwen2", shared=True, kv_blocks=4, kv_target_free_blocks=1)
    for _ in range(3):
        h.core.tick()
    serving = h.generate("tiny-qwen2", [1, 2, 3, 4])
    h.core.tick()  # its prefill takes the mapped free block and maps the next: no mapping is left to its decodes
    idle = h.core.instances["tiny-llama"].engine.kv
    mapped = idle.num_mapped
    assert mapped < 12
    h.core.idle_grow_retry_s = 0.0
    _C._debug_fail_after("mmap", 1)  # the next page run mapped fails as the kernel would (ENOMEM)
    _C._debug_fail_after("mremap", 1)
    try:
        h.core.tick()  # the idle instance's growth is the only mapping of this tick
    finally:
        _disarm()
    assert idle.num_mapped == mapped  # its growth failed, with nothing half done
    assert "idle KV growth of tiny-llama failed" in caplog.text and "DriverError" in caplog.text
    for _ in range(50):
        h.core.tick()
        if any(m.finished for m in h.of(serving, P.Tokens)):
            break
    assert not h.of(serving, P.Error)
    assert len(h.tokens(serving)) == 8 and h.of(serving, P.Tokens)[-1].finished
    assert idle.num_mapped > mapped  # tried again
    ok = h.generate("tiny-llama", [5, 6, 7])
    for _ in range(50):
        h.core.tick()
    assert len(h.tokens(ok)) == 8 and not h.of(ok, P.Error)


def test_an_engine_failure_in_a_step_is_not_blamed_on_the_request(h, tiny_models):
    """Found in review: an engine bug's IndexError in a step reached the requester as InvalidArgumentError (a 400:
    "your request is wrong"). It is the worker's failure: EngineError; a request that is wrong stays
    InvalidArgumentError; the instance serves the next request."""
    h.prewarm(tiny_models["tiny-llama"])
    h.activate("tiny-llama", kv_blocks=8)
    vocab = h.core.models["tiny-llama"].lm.config.vocab_size
    bad_input = h.generate("tiny-llama", [1, vocab + 3])
    (err,) = h.of(bad_input)
    assert isinstance(err, P.Error) and err.type == "InvalidArgumentError", err

    victim = h.generate("tiny-llama", [1, 2, 3, 4])
    h.core.tick()  # prefill: one token sampled
    (seq,) = h.core.instances["tiny-llama"].engine.scheduler.running
    seq.output[-1] = vocab + 5  # as a sampler bug would leave it: the next step embeds a token past the vocabulary
    h.core.tick()
    (err,) = h.of(victim, P.Error)
    assert err.type == "EngineError", err
    assert err.fields["model"] == "tiny-llama" and err.fields["cause"] == "IndexError"
    assert "Not the request's fault" in err.message
    assert not h.core.generations  # answered and forgotten

    after = h.generate("tiny-llama", [1, 2, 3, 4])
    for _ in range(20):
        h.core.tick()
    assert len(h.tokens(after)) == 8 and not h.of(after, P.Error)
