"""Random sequences of worker requests against a plain model of what the worker should hold: every request gets
the answer the model predicts, the pool's pages add up after every step, and nothing leaks at the end."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import InProcessWorker

pytestmark = pytest.mark.slow

NAMES = ("tiny-llama", "tiny-qwen2", "tiny-deep")
PAGE = 2 << 20


@pytest.fixture(scope="module")
def machine(tiny_models):
    class WorkerMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            # 40 pages: the three models' weights (43 pages) never fit at once, KV blocks compete with prewarms.
            self.w = InProcessWorker("cpu", memory_gib=0.08)
            self.total = self.w.stats().pool.total_bytes
            self.prewarmed: set[str] = set()
            self.running: dict[str, bool] = {}  # name -> shared
            self.streams: list = []

        @rule(name=st.sampled_from(NAMES))
        def prewarm(self, name):
            try:
                self.w.prewarm(tiny_models[name])
            except errors.ModelStateError:
                assert name in self.prewarmed
            except errors.OutOfMemoryError as e:
                assert e.asked_bytes > e.free_bytes
                assert name not in self.prewarmed
            else:
                assert name not in self.prewarmed
                self.prewarmed.add(name)

        @rule(name=st.sampled_from(NAMES))
        def evict(self, name):
            try:
                self.w.evict(name)
            except errors.UnknownModelError:
                assert name not in self.prewarmed
            except errors.ModelStateError:
                assert name in self.running
            else:
                assert name in self.prewarmed and name not in self.running
                self.prewarmed.discard(name)

        @rule(name=st.sampled_from(NAMES), shared=st.booleans(), kv_blocks=st.sampled_from([None, 1, 3]))
        def activate(self, name, shared, kv_blocks):
            try:
                self.w.activate(name, kv_blocks=kv_blocks, shared=shared)
            except errors.UnknownModelError:
                assert name not in self.prewarmed
            except errors.ModelStateError:
                exclusive = [n for n, sh in self.running.items() if not sh]
                assert name in self.running or (self.running and (not shared or exclusive))
            except errors.InvalidArgumentError:
                assert shared and kv_blocks is None
            else:
                assert name in self.prewarmed and name not in self.running
                self.running[name] = shared

        @rule(name=st.sampled_from(NAMES))
        def deactivate(self, name):
            try:
                d = self.w.deactivate(name)
            except (errors.UnknownModelError, errors.ModelStateError):
                assert name not in self.running
            else:
                assert name in self.running
                del self.running[name]
                live = [s for s in self.streams if s.model == name]
                assert d.aborted <= len(live)
                for s in live:  # their streams end: finished before, or aborted now
                    events = list(s.stream)
                    assert s.stream.done and (not events or events[-1].finished)
                    self.streams.remove(s)

        @rule(name=st.sampled_from(NAMES), n=st.integers(1, 6))
        def generate(self, name, n):
            stream = self.w.generate(name, [1, 2, 3], P.SamplingParams(max_tokens=n, ignore_eos=True))
            if name not in self.running:
                with pytest.raises((errors.UnknownModelError, errors.ModelStateError)):
                    list(stream)
                return
            first = next(iter(stream))
            assert first.token_ids or first.finished
            self.streams.append(_Live(name, stream))

        # Rules that pick among what exists, so the successful paths are taken as often as the refusals.
        @precondition(lambda self: self.running)
        @rule(data=st.data(), n=st.integers(1, 6))
        def generate_running(self, data, n):
            self.generate(data.draw(st.sampled_from(sorted(self.running))), n)

        @precondition(lambda self: set(self.prewarmed) - set(self.running))
        @rule(data=st.data(), shared=st.booleans())
        def activate_prewarmed(self, data, shared):
            idle = sorted(set(self.prewarmed) - set(self.running))
            self.activate(data.draw(st.sampled_from(idle)), shared, 2 if shared else None)

        @precondition(lambda self: set(self.prewarmed) - set(self.running))
        @rule(data=st.data())
        def evict_prewarmed(self, data):
            self.evict(data.draw(st.sampled_from(sorted(set(self.prewarmed) - set(self.running)))))

        @precondition(lambda self: self.streams)
        @rule(data=st.data())
        def finish_or_abort_one(self, data):
            s = self.streams.pop(data.draw(st.integers(0, len(self.streams) - 1)))
            if data.draw(st.booleans()):
                s.stream.abort()
            events = list(s.stream)
            assert s.stream.done and (not events or events[-1].finished)

        @invariant()
        def pages_add_up(self):
            st_ = self.w.stats()
            assert {m.name for m in st_.models} == self.prewarmed
            assert {i.name for i in st_.instances} == set(self.running)
            used = sum(m.pages for m in st_.models) + sum(i.kv_pages for i in st_.instances)
            assert st_.pool.total_bytes - st_.pool.free_bytes == used * PAGE
            by_tag = dict(st_.pool.pages_by_tag)
            assert by_tag.pop("free") * PAGE == st_.pool.free_bytes
            assert sum(by_tag.values()) == used

        def teardown(self):
            for s in self.streams:
                s.stream.abort()
            for name in list(self.running):
                self.w.deactivate(name)
            for name in list(self.prewarmed):
                self.w.evict(name)
            st_ = self.w.stats()
            assert st_.pool.free_bytes == self.total and st_.in_flight == 0
            self.w.close()

    return WorkerMachine


class _Live:
    def __init__(self, model, stream):
        self.model, self.stream = model, stream


def test_random_request_sequences_keep_the_pool_exact(machine):
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(machine, settings=settings(
        max_examples=8, stateful_step_count=20, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    ))
