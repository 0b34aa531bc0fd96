"""bench/simulate/issue11/burst_oracle.py: misses of one model's requests when its instances join at given times,
on hand-made requests and on a real preset's request stream."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[3] / "bench" / "simulate" / "issue11" / "burst_oracle.py"
_spec = importlib.util.spec_from_file_location("burst_oracle", _PATH)
BO = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BO)


def test_three_half_second_prefills_at_once_miss_a_1_s_slo_once_on_one_instance():
    reqs = [(0.0, 0.5)] * 3  # first tokens at 0.5, 1.0 (on time) and 1.5 s
    assert BO.misses(reqs, [0.0], 1.0, pooled=True) == BO.misses(reqs, [0.0], 1.0, pooled=False) == 1
    # a second instance from 0.2 s: a shared queue gives it the second request (done 0.7 s), a router that sends
    # at arrival has only the first instance then
    assert BO.misses(reqs, [0.0, 0.2], 1.0, pooled=True) == 0
    assert BO.misses(reqs, [0.0, 0.2], 1.0, pooled=False) == 1
    assert BO.misses(reqs, [0.0], 1.0, pooled=True, window=(1.0, 2.0)) == 0  # none arrived in the window
    for pooled in (True, False):  # the join times in any order (found in review: unsorted ones were misread)
        assert BO.misses(reqs, [0.2, 0.0], 1.0, pooled) == BO.misses(reqs, [0.0, 0.2], 1.0, pooled)


def test_on_a_preset_instances_that_join_earlier_miss_fewer_of_its_busiest_burst():
    import numpy as np

    reqs, slo, n_all = BO.requests_of("paper-code", "llama2-70b-a", 0.62, 0)
    assert slo == 1.0 and 0 < len(reqs) < n_all
    counts = np.histogram([r[0] for r in reqs], bins=np.arange(0.0, 1201.0, 10.0))[0]
    t = 10.0 * int(counts.argmax())  # the start of its busiest 10 s
    late, early = (BO.misses(reqs, joins, slo, pooled=False) for joins in ([0.0, t + 3, t + 6], [0.0, t - 2, t]))
    assert late > early
