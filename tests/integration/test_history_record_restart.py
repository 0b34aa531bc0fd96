"""A server that records its load (``history_record_path``, `serve --record-history`) starts again from it: the
windows the first run measured are in the file, the second run's policy knows them, and the second run's windows
are added to the file beside them. Before, the controller never wrote its history: every restart forecast from
nothing (or from a file that aged by the restart)."""

from __future__ import annotations

import time

import numpy as np

from warmserve.controller.history_file import read_history

import serving

MODEL = "llama-20m"
#: Short windows: each run serves requests until two windows have closed, so the window's length is what the test
#: waits (and generates) for; 1 s still divides a day, as the policy requires.
WINDOW_S = 1.0


def _run(path, *, history: bool) -> tuple[int, int]:
    """Serve requests for a few windows with the record file ``path``; returns (the windows the policy knew at its
    start, the record file's writes)."""
    extra = {"history_path": str(path)} if history else {}
    from warmserve.policy.config import PolicyConfig

    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                              policy_config=PolicyConfig(window_s=WINDOW_S), history_record_path=str(path),
                              **extra) as c:
        policy = c.controller.policy
        known = int((~np.isnan(policy._hist.avg[policy._hist.index[MODEL]])).sum())
        record = c.controller.history_record
        deadline = time.monotonic() + 60
        while record.writes < 2 and time.monotonic() < deadline:
            assert c.generate(MODEL, [5, 17, 300], max_tokens=4, temperature=0).completion_tokens == 4
        assert record.writes >= 2, "no window closed in 60 s"
    return known, record.writes


def test_a_restart_forecasts_from_the_load_the_first_run_recorded(tmp_path):
    path = tmp_path / "load.csv"
    known_first, _ = _run(path, history=False)
    assert known_first == 0
    first = read_history(str(path))[MODEL]
    assert len(first[0]) >= 2 and np.nanmax(first[1]) > 0  # busy windows, measured
    assert np.all(np.diff(first[0]) == WINDOW_S)  # on the window grid, one row each

    known_second, _ = _run(path, history=True)
    assert known_second >= len(first[0])  # the first run's windows seed the second's policy
    second = read_history(str(path))[MODEL]
    assert set(first[0]) <= set(second[0]) and len(second[0]) > len(first[0])  # kept, and added to
