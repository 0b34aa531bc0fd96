"""The engine's measure of its decode steps (``Engine.decode_meter``: ``step_meter.DecodeStepMeter``), which
workers report for co-serving's TPOT rule: only steps that ran decodes alone are timed (a prefill's step, or one
mixing a prefill in, is not what a token of a running sequence waits for each step), as a recent mean of wall time
and batch. The clock is faked so that each timed step takes exactly 10 ms."""

from __future__ import annotations

import itertools
import types

import pytest

import warmserve.engine.engine as engine_mod
from warmserve.engine import Engine, SamplingParams


@pytest.fixture
def clock_10ms(monkeypatch):
    """Each reading of the engine's clock is 10 ms after the one before."""
    ticks = itertools.count()
    monkeypatch.setattr(engine_mod, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) * 0.01))


def test_decode_steps_are_timed_with_their_batch_and_prefill_steps_are_not(lm, clock_10ms):
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    with Engine(lm) as eng:
        assert (eng.decode_meter.step_s, eng.decode_meter.batch, eng.decode_meter.steps) == (0.0, 0.0, 0)
        for k in range(3):
            eng.add_request(f"r{k}", [5, 17, 30 + k], params)
        eng.step()  # the three prompts' prefill (and their first tokens): not a decode step
        assert eng.decode_meter.steps == 0 and eng.decode_meter.step_s == 0.0
        while eng.has_unfinished():
            eng.step()
        # tokens 2 to 5 of each: four decode steps of three sequences, 10 ms each
        assert eng.decode_meter.steps == 4
        assert eng.decode_meter.step_s == pytest.approx(0.01) and eng.decode_meter.batch == pytest.approx(3.0)


def test_a_step_that_mixes_in_a_prefill_is_not_timed(lm, clock_10ms):
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    with Engine(lm) as eng:
        eng.add_request("a", [5, 17, 30], params)
        eng.step()  # a's prefill
        eng.step()  # a decodes alone: batch 1
        assert (eng.decode_meter.steps, eng.decode_meter.batch) == (1, 1.0)
        eng.add_request("b", [6, 18, 31], params)
        eng.step()  # b's prefill beside a's decode
        assert eng.decode_meter.steps == 1
        eng.step()  # both decode: batch 2; a mean of the first ones, 1 and 2
        assert eng.decode_meter.steps == 2 and eng.decode_meter.batch == pytest.approx(1.5)


def test_the_mean_follows_recent_steps(lm, monkeypatch):
    # steps of 10 ms, then of 50 ms: the recent mean moves to the latter (weight step_meter.DECODE_STEP_WEIGHT each)
    step_s = [0.01]
    now = [0.0]

    def perf_counter():
        now[0] += step_s[0]  # a timed step reads the clock as it starts and as it ends
        return now[0]

    monkeypatch.setattr(engine_mod, "time", types.SimpleNamespace(perf_counter=perf_counter))
    with Engine(lm) as eng:
        eng.add_request("a", [5, 17, 30], SamplingParams(max_tokens=60, ignore_eos=True))
        for _ in range(20):
            eng.step()
        assert eng.decode_meter.step_s == pytest.approx(0.01)
        step_s[0] = 0.05
        for _ in range(30):
            eng.step()
        assert eng.decode_meter.step_s == pytest.approx(0.05, rel=0.01)
        assert eng.decode_meter.steps == 49
