"""`warmserve calibrate`: the prewarmed time to first token stops at the first token, as the cold start's does (found
in review: its clock stopped only after the ``with Engine(...)`` block had exited, so it included ``eng.close()``,
which the cold start's did not)."""

from __future__ import annotations

import time
import types

from warmserve.bench import calibrate as C
from warmserve.engine import Engine
from warmserve.engine.demo import write_demo_models
from warmserve.memory import PagePool

# Each Engine.close moves calibrate's clock on by this much: a close this long shows in any figure that holds it,
# while real first-token times on a busy CPU box (0.1-0.7 s measured) stay far below it.
CLOSE_S = 1000.0


def test_the_prewarmed_first_token_does_not_time_the_engine_close(monkeypatch):
    path = write_demo_models(None, ["llama-20m"])["llama-20m"]
    skipped = [0.0]
    monkeypatch.setattr(C, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + skipped[0]))
    real_close = Engine.close

    def slow_close(self):
        skipped[0] += CLOSE_S
        real_close(self)

    monkeypatch.setattr(Engine, "close", slow_close)
    with PagePool(256 << 20, backend="host") as pool:
        m = C.measure_model(path, "llama-20m", pool, prefill_tokens=[8], decode_batches=[1], decode_steps=1,
                            repeats=1)
    x = m["measured"]
    assert skipped[0] >= 2 * CLOSE_S  # both timed engines were closed on the moved clock
    assert x["prewarmed_first_token_s"] < CLOSE_S, x
    assert x["cold_start_first_token_s"] < CLOSE_S, x
