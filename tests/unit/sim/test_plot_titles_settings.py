"""Plot titles that name the settings behind a figure, and a P99 axis a reader can read (found in review): a rate
sweep's SLO panel gave attainment against an SLO it did not name, and P99s within one decade were labelled
1.28335x10^-1 on each tick; two `bench replay` plots at --time-scale 0.25 and 1 had the same title."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("matplotlib")

import warmserve.sim.plot as sim_plot  # noqa: E402
from warmserve import cli  # noqa: E402
from warmserve.bench.replay_report import plot_title  # noqa: E402


def _labels(axis, minor: bool) -> list[str]:
    ticks = axis.get_minor_ticks() if minor else axis.get_major_ticks()
    return [t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text()]


@pytest.mark.parametrize("flags, slo", [(["--ttft-slo-s", "2"], "SLO: TTFT within 2 s"),
                                        ([], "SLO: TTFT within 10x the model's prefill of 1024 tokens")])
def test_a_sweep_names_its_slo_under_the_title_and_labels_p99_in_plain_numbers(saved_figures, tmp_path, flags, slo):
    rc = cli.main(["simulate", "--preset", "paper-conv", "--sweep-rate", "0.05,0.1", "--seeds", "0", "--policy",
                   "warmserve", "--no-search", "--quiet", "--plot", str(tmp_path / "s.png"), *flags])
    assert rc == 0
    (fig,) = saved_figures
    title = fig._suptitle
    assert title.get_text().split("\n")[1] == slo
    box = title.get_window_extent()
    assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    assert all(box.y0 >= ax.get_tightbbox().y1 - 1 for ax in fig.axes)  # above both panels, clear of them
    ax_p99 = fig.axes[0]
    lo, hi = ax_p99.get_ylim()
    assert hi / lo < 10  # this run's P99s lie within a decade: the minor ticks are the labelled ones
    labels = _labels(ax_p99.yaxis, minor=False) + _labels(ax_p99.yaxis, minor=True)
    assert labels and all("10^" not in t and "times" not in t and "$" not in t for t in labels), labels


def test_p99s_over_decades_label_the_decades_alone(saved_figures, tmp_path):
    pts = [{"offered_rate_rps": r, "ttft_p99_s": p, "slo_attainment": 1.0} for r, p in ((1, 0.05), (2, 0.4), (4, 60))]
    sim_plot.plot_rate_sweep({"seeds": [0], "slo_target": 0.99, "policies": {"warmserve": {"points": pts}}},
                             str(tmp_path / "s.png"), "t")
    ax = saved_figures[0].axes[0]
    assert _labels(ax.yaxis, minor=True) == []
    assert {"0.1", "1", "10"} <= set(_labels(ax.yaxis, minor=False))


def test_a_replay_title_names_its_time_scale_span_and_seed():
    a = argparse.Namespace(endpoint=None, cpu_workers=2, duration_s=1200.0, time_scale=0.25, seed=3)
    title = plot_title("conv", 300, 300.0, a)
    assert title == ("TTFT CDF, conv replay (1.00 rps, 2 CPU workers)\n"
                     "1200 trace s at time scale 0.25 (300 wall s), seed 3")
    b = argparse.Namespace(**{**vars(a), "time_scale": 1.0, "endpoint": "http://h:8000"})
    assert plot_title("conv", 1200, 1200.0, b).split("\n") == [
        "TTFT CDF, conv replay (1.00 rps, http://h:8000)", "1200 trace s at time scale 1 (1200 wall s), seed 3"]
