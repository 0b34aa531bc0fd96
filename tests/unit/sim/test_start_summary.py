"""One naming of the start counters for the run's summary, its warm-up block and the replay twin's fold."""

from warmserve.sim.metrics import START_FIELDS, fold_warmup_starts, start_summary

COUNTS = {"total": 4, "hit": 1, "loading": 1, "cold": 2, "evictions": 3, "migrated": 5}


def test_start_summary_names_and_hit_rate():
    s = start_summary(COUNTS)
    assert list(s) == ["prewarm_hit_rate", "instance_starts", "starts_from_prewarm", "starts_from_loading_prewarm",
                       "starts_cold", "evictions", "requests_migrated"]
    assert s["prewarm_hit_rate"] == 0.25 and s["instance_starts"] == 4 and s["requests_migrated"] == 5
    assert "prewarm_hit_rate" not in start_summary(COUNTS, hit_rate=False)
    assert start_summary(dict.fromkeys(START_FIELDS, 0))["prewarm_hit_rate"] == 0.0


def test_fold_adds_the_warmup_block_and_drops_it():
    measured = {"requests": 10, **start_summary(COUNTS)}
    warm = {"requests": 3, "refused": 0, **start_summary(dict(COUNTS, total=2, hit=2, loading=0, cold=0),
                                                         hit_rate=False)}
    s = fold_warmup_starts({**measured, "warmup": warm})
    assert "warmup" not in s and s["requests"] == 10  # requests stay the measured span's
    assert s["instance_starts"] == 6 and s["starts_from_prewarm"] == 3 and s["prewarm_hit_rate"] == 0.5
    assert s["evictions"] == 6 and s["requests_migrated"] == 10
    assert list(s) == list(measured)
    assert fold_warmup_starts(measured) == measured
