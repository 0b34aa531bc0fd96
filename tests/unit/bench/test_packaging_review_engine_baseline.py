"""`warmserve bench engine` on an install without transformers (the `test` extra brings it, `bench` does not).

Found in the packaging review (2026-12-07): from a wheel with the `bench` extra only, the benchmark measured its own
engine, then ended in a ModuleNotFoundError traceback at the transformers baseline. The argument checks now name
the extra and ``--no-hf`` before anything runs.
"""

from __future__ import annotations

import argparse
import sys

import pytest

from warmserve.extras import MissingExtraError


def _args(*extra: str) -> argparse.Namespace:
    from warmserve.bench import engine

    p = argparse.ArgumentParser()
    engine.add_arguments(p)
    return p.parse_args(["--models", "llama-20m", "--device", "cpu", "--prompt-tokens", "1", "--new-tokens", "2",
                         *extra])


def test_no_transformers_is_refused_first_naming_the_extra_and_no_hf(monkeypatch):
    from warmserve.bench import engine

    monkeypatch.setitem(sys.modules, "transformers", None)  # as on an install without it: import raises
    with pytest.raises(MissingExtraError) as e:
        engine.check_args(_args())
    assert "warmserve[test]" in str(e.value) and "--no-hf" in str(e.value), e.value
    engine.check_args(_args("--no-hf"))  # the baseline skipped: nothing to refuse
