import numpy as np
import pytest

from warmserve.workload.recipes import paper_workload, power_law_shares, regamma, servegen_workload


def test_power_law_shares():
    s = power_law_shares(4, 1.0)
    assert s.sum() == pytest.approx(1)
    assert s[0] / s[1] == pytest.approx(2) and s[0] / s[3] == pytest.approx(4)
    assert np.allclose(power_law_shares(3, 0.0), 1 / 3)


def test_paper_recipe_split_cut_and_history():
    w = paper_workload("conv", 6, alpha=1.0, total_rate_rps=12.0, seed=3, history_days=2)
    assert w.duration_s == 1200 and w.models == [f"conv-{i}" for i in range(6)]
    tr = w.trace
    assert tr.arrival_s.min() >= 0 and tr.arrival_s.max() < 1200
    assert tr.prompt_tokens.max() <= 1024
    assert len(tr) / 1200 == pytest.approx(12.0, rel=0.1)
    counts = np.bincount(tr.model, minlength=6)
    share = counts / counts.sum()
    assert share == pytest.approx(power_law_shares(6, 1.0), abs=0.05)
    # each model replays its own stretch: the per-minute count series differ between models
    per_min = [np.bincount((tr.arrival_s[tr.model == m] // 60).astype(int), minlength=20) for m in (0, 1)]
    assert not np.array_equal(per_min[0] / per_min[0].sum(), per_min[1] / per_min[1].sum())
    # history: the pre-replay stretch and the same slot of 2 earlier days
    h = w.history.arrival_s
    assert h.max() < 0 and (h >= -600).any()
    for k in (1, 2):
        day = h[(h >= -k * 86400 - 600) & (h < -k * 86400 + 1200)]
        assert len(day) > 0.8 * len(tr)
    assert w.warmup_s == 600 and w.clock0_s % 86400 == 18 * 3600 + 15 * 60


def test_paper_recipe_deterministic_by_seed():
    a = paper_workload("code", 4, seed=7)
    b = paper_workload("code", 4, seed=7)
    c = paper_workload("code", 4, seed=8)
    assert np.array_equal(a.trace.arrival_s, b.trace.arrival_s)
    assert np.array_equal(a.history.prompt_tokens, b.history.prompt_tokens)
    assert not np.array_equal(a.trace.arrival_s, c.trace.arrival_s) or len(a.trace) != len(c.trace)


def test_rate_and_time_scale():
    base = paper_workload("conv", 3, total_rate_rps=6.0, seed=1)
    double = paper_workload("conv", 3, total_rate_rps=6.0, rate_scale=2.0, seed=1)
    assert len(double.trace) / len(base.trace) == pytest.approx(2.0, rel=0.1)
    half = paper_workload("conv", 3, total_rate_rps=6.0, time_scale=0.5, seed=1)
    assert half.duration_s == 600 and half.trace.arrival_s.max() < 600
    assert len(half.trace) == len(base.trace)
    # history stays on whole days so the daily season of the forecasts still lines up
    h = half.history.arrival_s
    assert ((h > -86400 - 300) & (h < -86400 + 600)).any() and not ((h > -86400 + 600) & (h < -1000)).any()


def test_burstiness_knob_sets_cv():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 1000, 20000))
    for cv in (0.5, 1.0, 4.0):
        iat = np.diff(regamma(t, 0, 1000, cv, rng))
        assert iat.std() / iat.mean() == pytest.approx(cv, rel=0.1)
    w = paper_workload("conv", 2, burst_cv=3.0, seed=0)
    iat = np.diff(w.trace.arrival_s[w.trace.model == 0])
    assert iat.std() / iat.mean() == pytest.approx(3.0, rel=0.25)


def test_servegen_recipe():
    w = servegen_workload(6, total_rate_rps=20.0, history_days=2, seed=0)
    assert len(w.models) == 6 and all(".c" in m for m in w.models)
    assert {m.split(".")[0] for m in w.models} == {"m-large", "m-mid", "m-small"}
    assert len(w.trace) / w.duration_s == pytest.approx(20.0, rel=0.25)
    h = w.history.arrival_s
    assert ((h > -86400 - 600) & (h < -86400 + 1200)).any() and ((h > -2 * 86400 - 600) & (h < -2 * 86400 + 1200)).any()
    assert w.clock0_s == 13 * 86400 + 20 * 3600
    a = servegen_workload(6, total_rate_rps=20.0, history_days=2, seed=0)
    assert np.array_equal(a.trace.arrival_s, w.trace.arrival_s)
    with pytest.raises(ValueError, match="history"):
        servegen_workload(2, start_s=3600, history_days=1)


def test_servegen_series_repeat_with_day_shift():
    from warmserve.workload.recipes import servegen_series

    base = servegen_series(3)
    with pytest.raises(ValueError, match="series"):
        servegen_series(500)
    more = servegen_series(60, repeat_days=2)
    assert len({s.name for s in more}) == 60
    shifted = [s for s in more if s.day_shift == 1]
    orig = {s.name: s for s in servegen_series(56)}
    s = shifted[0]
    o = orig[s.name.rsplit(".d", 1)[0]]
    assert np.array_equal(s.t_s, o.t_s + 86400) and np.array_equal(s.rate_rps, o.rate_rps)
    assert base[0].day_shift == 0


def test_servegen_series_past_every_day_shift_are_refused_not_cut_short():
    # found by mutation testing: with repeat_days allowed, only a count the shifts could still fill was tried, so
    # the refusal after them was not pinned, and a recipe would have replayed fewer models than asked for
    from warmserve.workload.recipes import servegen_series

    assert [s.day_shift for s in servegen_series(112, repeat_days=1)] == [0] * 56 + [1] * 56
    with pytest.raises(ValueError, match=r"56 series \(x2 with day shifts\) .* asked for 113"):
        servegen_series(113, repeat_days=1)


def test_servegen_aggregates_hit_the_requested_total_rate():
    w = servegen_workload(4, include_aggregates=True, total_rate_rps=30.0, history_days=1, seed=2)
    assert w.models[:3] == ["m-large", "m-mid", "m-small"]
    assert len(w.trace) / w.duration_s == pytest.approx(30.0, rel=0.15)


def _numbered_trace(tmp_path, n=3600):
    """An Azure-layout trace of one request a second whose prompt length is its row number: rows can be told
    apart wherever the recipe puts them."""
    from datetime import datetime, timedelta

    t0 = datetime(2023, 11, 16, 18, 17, 0)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"{(t0 + timedelta(seconds=i)).strftime('%Y-%m-%d %H:%M:%S')}.5,{i + 1},1" for i in range(n)]
    p = tmp_path / "numbered.csv"
    p.write_text("\n".join(lines))
    return str(p)


def _parts(w, m):
    """(replay, warm-up, [history day 1, 2, ...]) of model m: (times, row numbers)."""
    tr, h = w.trace, w.history
    rep = (tr.arrival_s[tr.model == m], tr.prompt_tokens[tr.model == m])
    hm = h.model == m
    pre = (h.arrival_s >= -w.warmup_s) & hm
    days = []
    for k in range(1, 4):
        sel = hm & (h.arrival_s >= -k * 86400 - 1) & (h.arrival_s < -k * 86400 + w.duration_s)
        days.append((h.arrival_s[sel] + k * 86400, h.prompt_tokens[sel]))
    return rep, (h.arrival_s[pre], h.prompt_tokens[pre]), days


def test_history_days_never_show_the_replay(tmp_path):
    """Found in review: history day k was read 1800 k s before the replay in a trace of under an hour, i.e.
    98-328 s after it once read circularly, so the forecasts saw the measured load minutes early. A model whose
    stretch alone carries its rate (here: below the even trace's rate) now takes its history days from rows
    outside its replay and warm-up; a model above it (whose copies span the whole trace) has rows in both, but at
    no fixed lead (read backwards)."""
    path = _numbered_trace(tmp_path)
    w = paper_workload("code", 3, alpha=0.0, total_rate_rps=2.4, seed=0, path=path, max_prompt_tokens=10**6)
    for m in range(3):  # 0.8 rps each, one copy of the 1 rps trace
        rep, pre, days = _parts(w, m)
        seen = set(rep[1]) | set(pre[1])
        for t, ids in days:
            assert len(ids) > 0.5 * len(rep[1]) and not seen & set(ids)
    w = paper_workload("code", 2, alpha=0.0, total_rate_rps=6.0, seed=0, path=path, max_prompt_tokens=10**6)
    for m in range(2):  # 3 rps each: three copies, spanning the trace
        rep, _, days = _parts(w, m)
        when = dict(zip(rep[1].tolist(), rep[0].tolist()))
        for t, ids in days:
            leads = np.round([tt - when[i] for tt, i in zip(t, ids.tolist()) if i in when])
            assert len(leads) > 100
            assert np.unique(leads, return_counts=True)[1].max() < 0.05 * len(leads)  # no lead shows much


def test_each_model_gets_its_power_law_share_and_each_seed_its_own_stretches():
    """Found in review: thinning by the whole trace's mean rate gave dense stretches more than their share (one
    model of paper-code got 1.31x its share, another 0.50x), and every seed replayed the same stretches."""
    for kind in ("code", "conv"):
        w = paper_workload(kind, 7, alpha=1.0, total_rate_rps=24.0, seed=0)
        got = np.bincount(w.trace.model, minlength=7) / len(w.trace)
        assert got / power_law_shares(7, 1.0) == pytest.approx(np.ones(7), abs=0.08)
    a = paper_workload("code", 4, total_rate_rps=12.0, seed=0).trace
    b = paper_workload("code", 4, total_rate_rps=12.0, seed=1).trace
    same = np.isin(b.arrival_s, a.arrival_s).mean()
    assert same < 0.05


def test_a_replay_longer_than_the_trace_leaves_room_for_history_or_is_refused():
    with pytest.raises(ValueError, match="covers .* history days"):
        paper_workload("code", 2, duration_s=1800.0, history_days=1)
    with pytest.raises(ValueError, match="does not fit"):
        paper_workload("code", 2, duration_s=3600.0, history_days=0)
    assert paper_workload("code", 2, duration_s=3000.0, pre_s=300.0, history_days=0).duration_s == 3000.0


def test_the_warm_up_leads_into_the_replay_and_history_days_cover_the_warm_up_too(tmp_path):
    """Found in review of the fix above: history days had dropped the warm-up's lead (no forecast during the
    warm-up), and the warm-up and replay were drawn apart (a jump in the load at t = 0). Now the warm-up reads on
    into the replay (trace rows in order across t = 0) and each history day covers the lead and the slot."""
    path = _numbered_trace(tmp_path)
    w = paper_workload("code", 3, alpha=0.0, total_rate_rps=2.4, seed=0, path=path, max_prompt_tokens=10**6)
    for m in range(3):
        rep, pre, days = _parts(w, m)
        assert 0 < rep[1][0] - pre[1][-1] <= 10 or rep[1][0] + 3600 - pre[1][-1] <= 10  # the next rows on
        h = w.history.arrival_s[w.history.model == m]
        for k in (1, 2, 3):
            lead = h[(h >= -k * 86400 - 600) & (h < -k * 86400)]
            assert len(lead) > 0.5 * len(pre[1])


def test_a_rate_far_above_the_traces_is_delivered():
    """Found in review: copies stopped at 64, so rates above about 60x the trace's fell 4-13% short."""
    w = paper_workload("code", 1, total_rate_rps=2.57 * 80, seed=0, history_days=0, pre_s=0.0, duration_s=600.0)
    assert len(w.trace) / 600.0 == pytest.approx(2.57 * 80, rel=0.02)
