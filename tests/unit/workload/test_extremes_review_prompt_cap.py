"""Recipe and window arguments at their extremes, called directly (the CLIs guard their own flags; found in
review): `paper_workload(max_prompt_tokens=0)` cut every prompt to 0 tokens where `servegen_workload` reads 0 as no
cap, a negative cap made negative prompts in both, and `concurrency_windows(window_s=0)` raised a bare
OverflowError."""

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload.concurrency import concurrency_windows
from warmserve.workload.recipes import paper_workload, servegen_workload


def _prompts(w) -> np.ndarray:
    return np.concatenate([t.prompt_tokens for t in (w.trace, w.history) if t is not None])


@pytest.mark.parametrize("cap", [0, None])
def test_a_paper_workload_cap_of_0_or_none_cuts_no_prompt(cap):
    kw = dict(n_models=2, duration_s=300, pre_s=0, history_days=0, seed=1)
    capped, free = paper_workload("code", **kw), paper_workload("code", max_prompt_tokens=cap, **kw)
    p_capped, p_free = _prompts(capped), _prompts(free)
    assert len(p_free) == len(p_capped) and p_capped.max() == 1024  # the default cap, as before
    assert p_free.min() >= 1 and p_free.max() > 1024 and (p_free >= p_capped).all()


@pytest.mark.parametrize("fn, kw", [(paper_workload, dict(n_models=2, duration_s=300, pre_s=0, history_days=0)),
                                    (servegen_workload, dict(n_models=2, duration_s=600, pre_s=0, history_days=0))])
@pytest.mark.parametrize("cap", [-1, 2.5, True])
def test_a_cap_below_0_or_not_whole_is_refused_naming_it(fn, kw, cap):
    with pytest.raises(InvalidArgumentError, match=r"max_prompt_tokens=.*whole number of tokens >= 1, or 0 or None"):
        fn(max_prompt_tokens=cap, **kw)


@pytest.mark.parametrize("window_s", [0, -300, float("nan"), float("inf")])
def test_a_window_that_is_not_a_finite_positive_span_is_refused(window_s):
    with pytest.raises(InvalidArgumentError, match="finite window_s > 0"):
        concurrency_windows(np.zeros(2), np.ones(2), 0.0, 600.0, window_s)
    starts, avg, peak = concurrency_windows(np.zeros(2), np.ones(2), 0.0, 600.0, 300.0)
    assert list(starts) == [0.0, 300.0] and list(peak) == [2.0, 0.0]
