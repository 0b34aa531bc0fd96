"""A co-served instance's step is sized to its turn (Activate.turn_s, co-serving's TPOT target): found in review, a
long prompt on one co-served model was prefilled max_batch_tokens (2048) tokens a step, and the other model sharing
its worker got no token for the whole of each such step (on a CPU worker, 8-token requests took up to 15 s against
a 0.1 s target). The engine measures its cost per prompt token (step_meter.PrefillTokenMeter) and the worker gives
each shared instance's step the tokens that fit its share of the turn (step_meter.turn_tokens)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from warmserve import protocol as P
from warmserve.controller.controller import Controller
from warmserve.engine.step_meter import (DEFAULT_TURN_TOKENS, MIN_TURN_PROMPT_TOKENS, PrefillTokenMeter,
                                         turn_tokens)
from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool
from warmserve.policy.config import PolicyConfig
from warmserve.worker.core import WorkerCore

LONG = [10 + i % 500 for i in range(1500)]  # six 256-token KV blocks with its outputs
SHORT = [5, 6, 7, 8]
GREEDY = P.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Worker:
    """A WorkerCore over a real pool, ticked by hand; replies kept with the tick that sent them, and each step of
    each instance recorded as (tick, instance, budget, tokens scheduled)."""

    def __init__(self):
        self.pool = PagePool(256 << 20, prefault=False)
        self.replies: list[tuple[int, object]] = []
        self.steps: list[tuple[int, str, int | None, int]] = []
        self.ticks = 0
        self.core = WorkerCore(self.pool, device="cpu", worker_id="w-turns", emit=self._emit)
        self._id = 100

    def _emit(self, peer, msg) -> None:
        self.replies.append((self.ticks, msg))

    def send(self, msg) -> int:
        self.core.handle("client", msg)
        return msg.id

    def new_id(self) -> int:
        self._id += 1
        return self._id

    def of(self, rid: int, cls=object) -> list:
        return [m for _, m in self.replies if getattr(m, "id", None) == rid and isinstance(m, cls)]

    def prewarm(self, path: str) -> None:
        rid = self.send(P.Prewarm(id=self.new_id(), path=path))
        for _ in range(20000):
            if self.of(rid, (P.Prewarmed, P.Error)):
                break
            self.core.tick()
            time.sleep(0.001)
        (done,) = self.of(rid, (P.Prewarmed, P.Error))
        assert isinstance(done, P.Prewarmed), done

    def activate(self, name: str, **kw) -> None:
        (reply,) = self.of(self.send(P.Activate(id=self.new_id(), name=name, kv_blocks=8, **kw)))
        assert isinstance(reply, P.Activated), reply
        engine = self.core.instances[name].engine
        step = engine.step

        def recorded(max_tokens=None):
            scheduled = engine.scheduler.schedule

            def schedule(budget=None):
                chunks = scheduled(budget)
                self.steps.append((self.ticks, name, max_tokens, sum(c.n for c in chunks)))
                return chunks

            engine.scheduler.schedule = schedule
            try:
                return step(max_tokens)
            finally:
                del engine.scheduler.schedule

        engine.step = recorded

    def generate(self, model: str, prompt: list[int], sampling=GREEDY) -> int:
        return self.send(P.Generate(id=self.new_id(), model=model, prompt_ids=prompt, sampling=sampling))

    def run(self, *rids: int, ticks: int = 5000) -> None:
        while not all(self.finished(r) for r in rids):
            assert self.ticks < ticks, f"not finished after {ticks} ticks"
            self.ticks += 1
            self.core.tick()

    def finished(self, rid: int) -> bool:
        got = self.of(rid, (P.Tokens, P.Error))
        assert not any(isinstance(m, P.Error) for m in got), got
        return any(m.finished for m in got)

    def tokens(self, rid: int) -> list[int]:
        return [t for m in self.of(rid, P.Tokens) for t in m.token_ids]

    def first_token_tick(self, rid: int) -> int:
        return min(t for t, m in self.replies if getattr(m, "id", None) == rid and isinstance(m, P.Tokens)
                   and m.token_ids)

    def close(self) -> None:
        self.core.close()
        self.pool.close()


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.close()


def _alone(tiny_models) -> list[int]:
    """The long prompt's greedy tokens on a worker of its own, prefilled max_batch_tokens a step."""
    w = Worker()
    try:
        w.prewarm(tiny_models["tiny-deep"])
        w.activate("tiny-deep", shared=True, turn_s=1e-4)  # alone on its worker: no turn to keep
        rid = w.generate("tiny-deep", LONG)
        w.run(rid)
        prefill = [n for _, name, _, n in w.steps if n > 1]
        assert prefill == [len(LONG)], f"alone, the prompt is prefilled in one step: {prefill}"
        return w.tokens(rid)
    finally:
        w.close()


def test_a_long_prompt_is_prefilled_in_turns_while_the_other_model_decodes(worker, tiny_models):
    want = _alone(tiny_models)
    for name in ("tiny-llama", "tiny-deep"):
        worker.prewarm(tiny_models[name])
    # A turn too short for any prompt chunk: every step of the long prompt after its first (the default chunk,
    # before any was measured) is its floor (16 prompt tokens).
    worker.activate("tiny-llama", shared=True, turn_s=1e-4)
    worker.activate("tiny-deep", shared=True, turn_s=1e-4)
    long = worker.generate("tiny-deep", LONG)
    short = worker.generate("tiny-llama", SHORT, P.SamplingParams(max_tokens=16, temperature=0.0,
                                                                  ignore_eos=True))
    worker.run(long, short)

    deep = [(tick, budget, n) for tick, name, budget, n in worker.steps if name == "tiny-deep"]
    assert all(budget is not None and n <= budget for _, budget, n in deep), deep
    prefill = [n for _, _, n in deep if n > 1]
    assert prefill[0] == DEFAULT_TURN_TOKENS and sum(prefill) >= len(LONG), prefill
    assert max(prefill[1:]) <= 1 + MIN_TURN_PROMPT_TOKENS, prefill
    # The other model's tokens came between those chunks: its 16 all before the long prompt's first.
    assert len(worker.tokens(short)) == 16
    assert worker.first_token_tick(short) < worker.first_token_tick(long)
    llama_ticks = [tick for tick, name, _, n in worker.steps if name == "tiny-llama" and n]
    assert max(llama_ticks) < worker.first_token_tick(long), (llama_ticks, worker.first_token_tick(long))
    # Chunked prefill is exact: the same greedy tokens as the prompt prefilled in one step.
    assert worker.tokens(long) == want


def test_the_turn_is_shared_by_the_live_instances_at_the_measured_cost(worker, tiny_models):
    for name in ("tiny-llama", "tiny-deep"):
        worker.prewarm(tiny_models[name])
    worker.activate("tiny-llama", shared=True)  # turn_s 0: its own steps are not limited
    worker.activate("tiny-deep", shared=True, turn_s=0.02)
    engine = worker.core.instances["tiny-deep"].engine
    assert engine.prefill_meter.steps == 0
    long = worker.generate("tiny-deep", LONG)
    short = worker.generate("tiny-llama", SHORT, P.SamplingParams(max_tokens=64, temperature=0.0,
                                                                  ignore_eos=True))
    worker.run(long, short)
    deep = [budget for _, name, budget, _ in worker.steps if name == "tiny-deep"]
    # Before any measurement the first step runs the default chunk; then what 0.01 s (two live) or 0.02 s holds.
    assert deep[0] == DEFAULT_TURN_TOKENS
    assert engine.prefill_meter.steps >= 2 and engine.prefill_meter.token_s > 0
    assert all(b is not None and b < engine.scheduler.max_batch_tokens for b in deep), deep
    assert all(b is None for _, name, b, _ in worker.steps if name == "tiny-llama")


def test_turn_tokens_fit_the_turn_between_the_floor_and_max_batch_tokens():
    meter = PrefillTokenMeter()
    assert turn_tokens(0.1, meter, 3, 2048) == DEFAULT_TURN_TOKENS
    assert turn_tokens(0.1, meter, 3, 100) == 100
    meter.record(1.0, 1000)  # 1 ms a token
    assert meter.token_s == pytest.approx(1e-3)
    assert turn_tokens(0.1, meter, 3, 2048) == 100
    assert turn_tokens(10.0, meter, 3, 2048) == 2048
    assert turn_tokens(1e-6, meter, 3, 2048) == 3 + MIN_TURN_PROMPT_TOKENS
    meter.record(3.0, 1000)  # a plain mean of the first steps, then weighted to the latest
    assert meter.token_s == pytest.approx(2e-3)


def test_a_huge_turn_over_a_tiny_cost_is_the_whole_batch_and_an_endless_one_is_refused():
    meter = PrefillTokenMeter()
    meter.record(1e-6, 2_000_000)  # 5e-13 s a token
    assert turn_tokens(1e308, meter, 3, 2048) == 2048  # was OverflowError: inf to int, failing the step's requests
    with pytest.raises(InvalidArgumentError, match="coserve_tpot_s must be a finite number"):
        PolicyConfig(coserve_tpot_s=float("inf"))  # every shared Activate would be refused by the worker


def test_a_shared_activation_carries_the_coserving_tpot_target():
    ctl = SimpleNamespace(hub=SimpleNamespace(next_id=lambda: 7), engine_config=P.EngineConfig().resolved(32),
                          policy_config=SimpleNamespace(coserve_tpot_s=0.1, instance_capacity=32))
    assert Controller.activate_message(ctl, "m", 4, True).turn_s == 0.1
    assert Controller.activate_message(ctl, "m", None, False).turn_s == 0.0
    assert P.decode_request(P.encode(Controller.activate_message(ctl, "m", 4, True))).turn_s == 0.1


@pytest.mark.parametrize("turn_s", [-0.1, float("nan"), float("inf")])
def test_a_bad_turn_is_refused_with_the_number(worker, tiny_models, turn_s):
    worker.prewarm(tiny_models["tiny-llama"])
    (reply,) = worker.of(worker.send(P.Activate(id=worker.new_id(), name="tiny-llama", kv_blocks=8, shared=True,
                                                turn_s=turn_s)))
    assert isinstance(reply, P.Error) and reply.type == "InvalidArgumentError" and "turn_s" in reply.message, reply
