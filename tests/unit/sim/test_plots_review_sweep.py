"""`warmserve simulate --sweep-rate ... --plot`, read as a reader reads it (found in review): the table gives the
median P99 and mean SLO attainment over --seeds, but the figure showed no seed's own figure, so one seed's outlier
could not be told from a steady result; the log rate axis labelled its ticks 6x10^0 and 2x10^1, not the rates
swept; the legend sat inside the SLO panel, over any line or band that reached its lower left, and the dotted
line of the SLO target had no legend entry."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from matplotlib.container import ErrorbarContainer  # noqa: E402

import warmserve.sim.plot as sim_plot  # noqa: E402


def _point(rate, p99, att, p99_seeds, att_seeds):
    return {"offered_rate_rps": rate, "ttft_p99_s": p99, "slo_attainment": att, "ttft_p99_s_per_seed": p99_seeds,
            "slo_attainment_per_seed": att_seeds, "seeds": [0, 1]}


#: two policies over three rates and seeds 0,1, autoscale with a cold-start band whose low run reaches SLO 0.26
SWEEP = {"rate_scales": [0.25, 0.5, 1.0], "seeds": [0, 1], "slo_target": 0.99, "policies": {
    "warmserve": {"points": [_point(5.86, 0.51, 1.0, [0.44, 0.58], [1.0, 1.0]),
                             _point(12.06, 0.49, 0.998, [0.45, 0.56], [0.997, 0.999]),
                             _point(24.12, 1.34, 0.975, [0.97, 1.71], [0.97, 0.98])]},
    "autoscale": {"points": [_point(5.86, 16.0, 0.79, [15.6, 16.4], [0.75, 0.83]),
                             _point(12.06, 23.7, 0.74, [22.0, 25.4], [0.73, 0.75]),
                             _point(24.12, 41.1, 0.60, [36.0, 46.2], [0.59, 0.61])],
                  "cold_start_band": {"cold_start_s": [14, 35],
                                      "low": [_point(r, 16.0, a, [16.0, 16.0], [a, a])
                                              for r, a in ((5.86, 0.26), (12.06, 0.41), (24.12, 0.39))],
                                      "high": [_point(r, 60.0, 0.79, [60.0, 60.0], [0.79, 0.79])
                                               for r in (5.86, 12.06, 24.12)]}}}}


def _saved_figure(monkeypatch, tmp_path, sweep: dict, title: str):
    """``sweep``'s Figure as plot_rate_sweep saved it, laid out (drawn) for the extents of its parts."""
    saved = {}

    def keep(fig, path, **kw):
        fig.canvas.draw()
        saved["fig"] = fig

    monkeypatch.setattr(sim_plot, "save_figure", keep)
    sim_plot.plot_rate_sweep(sweep, str(tmp_path / "s.png"), title)
    return saved["fig"]


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    fig = _saved_figure(monkeypatch, tmp_path, SWEEP, "paper-code: sweep (seeds 0,1)")
    return fig, fig.axes[0], fig.axes[1]


def _spans(ax):
    """(x, low, high) of every error bar drawn on ``ax``, by position."""
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for seg in c.lines[2][0].get_segments():
                out.append((round(seg[0][0], 2), round(min(seg[0][1], seg[1][1]), 3),
                            round(max(seg[0][1], seg[1][1]), 3)))
    return sorted(out)


def test_each_point_over_several_seeds_shows_the_seeds_range(drawn):
    _, ax_p99, ax_att = drawn
    points = [p for pol in SWEEP["policies"].values() for p in pol["points"]]
    want = sorted((p["offered_rate_rps"], round(min(p["ttft_p99_s_per_seed"]), 3),
                   round(max(p["ttft_p99_s_per_seed"]), 3)) for p in points)
    assert _spans(ax_p99) == want  # before: no error bars at all
    want_att = sorted((p["offered_rate_rps"], round(min(p["slo_attainment_per_seed"]), 3),
                       round(max(p["slo_attainment_per_seed"]), 3)) for p in points)
    assert _spans(ax_att) == want_att
    assert "median over 2 seeds" in ax_p99.get_title() and "mean over 2 seeds" in ax_att.get_title()


def test_the_rate_axis_is_labelled_with_the_rates_swept(drawn):
    _, ax_p99, ax_att = drawn
    for ax in (ax_p99, ax_att):
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert labels == ["5.86", "12.1", "24.1"], labels  # before: $\mathdefault{6\times10^{0}}$ and the like
        assert "requests/s" in ax.get_xlabel()
    assert "(s, log scale)" in ax_p99.get_ylabel() and ax_p99.get_yscale() == "log"
    assert "share of requests" in ax_att.get_ylabel()


def test_the_legend_covers_no_panel_names_every_series_and_stays_in_the_figure(drawn):
    fig, ax_p99, ax_att = drawn
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1
    box = legends[0].get_window_extent()
    for ax in (ax_p99, ax_att):
        assert not box.overlaps(ax.get_window_extent()), "the legend lies over a panel"  # before: inside ax_att
    whole = fig.bbox
    assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1
    names = [t.get_text() for t in legends[0].get_texts()]
    assert names == ["warmserve", "autoscale", "autoscale, cold start 14-35 s", "SLO attainment target 0.99"]


def test_a_sweep_saved_without_per_seed_figures_draws_its_rates_and_no_spread(monkeypatch, tmp_path):
    """A sweep JSON from before per-seed figures were kept (bench/simulate/issue11/rerun_policies.py redraws them)."""
    sweep = {"slo_target": 0.99, "policies": {"warmserve": {"points": [
        {"offered_rate_rps": r, "ttft_p99_s": 0.5, "slo_attainment": 0.99} for r in (1.0, 2.0)]}}}
    for ax in _saved_figure(monkeypatch, tmp_path, sweep, "sweep").axes:
        assert not any(isinstance(c, ErrorbarContainer) for c in ax.containers)
        assert [t.get_text() for t in ax.get_xticklabels() if t.get_text()] == ["1", "2"]  # before: 10^0, 2x10^0
