"""The runner's single runs and sweeps: ``run_once`` quiet unless asked, its offered rate; ``_point``'s medians
and means over seeds, by hand; a rate exactly at the SLO target meeting it; the sweep's progress total."""

import numpy as np
import pytest

from warmserve import extras
from warmserve.sim.metrics import RunResult
from warmserve.sim.presets import paper_preset
from warmserve.sim.runner import _point, highest_rate_meeting, rate_sweep, run_once, swept_rate_is_lower_bound


def test_run_once_shows_no_progress_unless_asked_and_gives_the_offered_rate(capsys):
    """Without ``progress`` a run writes nothing to stderr (no tqdm bar); its summary's offered rate is the
    trace's requests over its span, and the result carries the policy's name."""
    p = paper_preset("conv", total_rate_rps=1.0, n_models=2, history_days=1)
    w = p.build(1.0, 0)
    r = run_once(p, "dedicated", workload=w)
    assert capsys.readouterr().err == ""
    assert r.policy == "dedicated"
    assert r.summary["offered_rate_rps"] == pytest.approx(len(w.trace) / w.duration_s)
    assert r.summary["requests"] == len(w.trace)


def _run(p99, p50, att, gpu_s, unanswered, offered):
    s = {"ttft_p99_s": p99, "ttft_p50_s": p50, "slo_attainment": att, "gpu_seconds": gpu_s,
         "unanswered": unanswered, "offered_rate_rps": offered}
    return RunResult("p", s, {}, np.zeros(0))


def test_a_sweep_point_takes_medians_of_latency_and_means_of_attainment_and_rate():
    """Three seeds: P99, P50, GPU-seconds and unanswered are medians; SLO attainment and offered rate means;
    the per-seed lists are kept in seed order."""
    runs = [_run(3.0, 0.3, 0.9, 100.0, 4, 10.0), _run(1.0, 0.1, 1.0, 300.0, 0, 11.0),
            _run(2.0, 0.2, 0.8, 200.0, 1, 12.0)]
    pt = _point(runs, 2.0, [5, 6, 7])
    assert pt["rate_scale"] == 2.0 and pt["seeds"] == [5, 6, 7]
    assert pt["ttft_p99_s"] == 2.0 and pt["ttft_p50_s"] == 0.2
    assert pt["gpu_seconds"] == 200.0 and pt["unanswered"] == 1
    assert pt["slo_attainment"] == pytest.approx(0.9) and pt["offered_rate_rps"] == pytest.approx(11.0)
    assert pt["ttft_p99_s_per_seed"] == [3.0, 1.0, 2.0] and pt["slo_attainment_per_seed"] == [0.9, 1.0, 0.8]


def test_a_sweep_rate_exactly_at_the_target_meets_it():
    """An attainment equal to the target meets it, as the max-rate search's ``>=``: the highest swept rate then
    counts, and a sweep whose every rate is exactly at the target reports only a lower bound."""
    pts = [{"offered_rate_rps": 1.0, "slo_attainment": 0.99}, {"offered_rate_rps": 2.0, "slo_attainment": 0.99}]
    assert highest_rate_meeting(pts, 0.99) == 2.0
    assert swept_rate_is_lower_bound(pts, 0.99)
    assert not swept_rate_is_lower_bound(pts, 0.995) and not swept_rate_is_lower_bound([], 0.99)


def test_a_sweep_s_progress_counts_the_cold_start_band_s_runs(capsys, monkeypatch):
    """One rate, one seed, `autoscale` with a cold-start band: its run and the band's two ends, 3 runs, all
    counted by the sweep's bar and its total."""
    monkeypatch.setattr(extras, "LOG_PROGRESS_INTERVAL_S", 0.0)  # each count written, as on a terminal
    p = paper_preset("conv", total_rate_rps=1.0, n_models=2, history_days=1)
    sw = rate_sweep(p, ["autoscale"], [1.0], seeds=[0], band_cold_start_s=(5.0, 30.0), progress=True)
    band = sw["policies"]["autoscale"]["cold_start_band"]
    assert len(band["low"]) == len(band["high"]) == 1
    err = capsys.readouterr().err
    assert "| 3/3 [" in err and "0/3" in err, err
