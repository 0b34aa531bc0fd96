"""The figures of `warmserve bench overhead | switch | forecast | engine`, read as a reader reads them (found in
review): the overhead CDF's legend lay over three of its curves and named them otherwise than the printed table;
the switch bars named no quantity on the y axis and gave no figure for the activation bars, slivers at the foot of a
log axis; the forecast panels drew a forecast of 0 (and a client's idle window) as a plunge off the foot of a log
axis, their legend lay over the first series' lines and no title said which --dispersion drew them; the engine's
log axes labelled ticks 2x10^2 and 6x10^1 and its title gave no prompt, tokens or repeats."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from warmserve.bench import engine as bench_engine  # noqa: E402
from warmserve.bench import forecast as bench_forecast  # noqa: E402
from warmserve.bench import overhead as bench_overhead  # noqa: E402


def _inside(fig, box) -> bool:
    whole = fig.bbox
    return whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1


def _plain_ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels() if t.get_text()]


# ------------------------------------------------------------------------------------------------- overhead

def _overhead_result() -> dict:
    rng = np.random.default_rng(0)
    med_ms = {"zmq_rtt": 0.86, "direct": 14.7, "http": 17.5, "added": 2.07, "in_controller": 0.8}
    return {"model": "llama-20m", "machine": {"cpus": 2}, "goals": {"added_p99_ms": 2.0, "req_per_s": 2000},
            "_raw_s": {k: list(rng.lognormal(np.log(m / 1e3), 0.3, 60)) for k, m in med_ms.items()}}


def test_the_overhead_cdf_names_its_curves_as_the_table_does_and_covers_none(saved_figures, tmp_path):
    bench_overhead.plot(_overhead_result(), str(tmp_path / "o.png"))
    fig = saved_figures[0]
    ax = fig.axes[0]
    leg = ax.get_legend()
    names = [t.get_text() for t in leg.get_texts()]
    # the rows of the printed table (overhead.main); before: "Generate straight to worker", "controller's share, ..."
    assert names[:5] == ["ZeroMQ round trip (bare)", "worker direct (ZMQ + engine step)", "through controller (HTTP)",
                         "added by the controller", "of which inside the controller"]
    assert names[5] == "goal: added by the controller, p99 < 2 ms"
    assert not leg.get_window_extent().overlaps(ax.get_window_extent())  # before: lower centre, over three curves
    assert _inside(fig, leg.get_window_extent())
    assert "ms" in ax.get_xlabel() and "log scale" in ax.get_xlabel() and ax.get_xscale() == "log"
    assert ax.get_ylabel() == "fraction of requests"
    assert "60 sequential requests per path" in ax.get_title()


# --------------------------------------------------------------------------------------------------- switch

def test_the_switch_bars_each_carry_their_time_and_the_axes_name_their_quantity(saved_figures, tmp_path):
    from warmserve.bench import switch_plot

    GiB = 1 << 30
    rows = [{"weights_bytes": int(w * GiB), "activation_ms": a, "cold_load_ms": c, "ratio": c / a,
             "repeats": {"activation": 15, "cold_load": 2}} for w, a, c in ((0.286, 0.212, 28.6), (1.02, 0.708, 80.2))]
    switch_plot.plot({"activation_vs_cold_load": rows, "machine": {"backend": "host"}}, str(tmp_path / "s.png"))
    fig = saved_figures[0]
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "0.212 ms" in texts and "0.708 ms" in texts  # before: only "135x" and "113x"
    assert "28.6 ms\n135x activate" in texts and "80.2 ms\n113x activate" in texts
    assert "(ms, log scale)" in ax.get_ylabel() and ax.get_ylabel() != "ms (log)"
    assert "checkpoint size" in ax.get_xlabel()
    assert "15 activations, 2 cold loads" in ax.get_title()
    for t in ax.texts:  # every figure inside the axes, under the top the plot leaves for them
        assert _inside(fig, t.get_window_extent()) and t.get_window_extent().y1 <= ax.get_window_extent().y1


# ------------------------------------------------------------------------------------------------- forecast

def _forecast_input():
    n = 2 * bench_forecast.PERIOD
    actual = np.full(n, 300.0)
    actual[10] = 0.0  # an idle window
    actual[20] = np.nan  # a missing one
    paper = np.full(n, 280.0)
    paper[30] = 0.0  # the paper's forecast of 0
    auto = np.full(n, 310.0)
    steady = np.full(n, 3000.0)
    curves = {"m-large": (actual, {"paper": paper, "auto": auto}),
              "m-mid": (steady, {"paper": steady * 1.1, "auto": steady * 0.9})}
    rows = [{"series": name, "kind": "model", "acf_24h": 0.1,
             "methods": {"paper": {"peak_mre": 0.326}, "auto": {"peak_mre": 0.274}}} for name in curves]
    return curves, rows


def test_a_forecast_of_zero_is_drawn_at_zero_and_the_title_names_the_dispersion(saved_figures, tmp_path):
    curves, rows = _forecast_input()
    bench_forecast._plot(str(tmp_path / "f.png"), curves, rows, "poisson")
    fig = saved_figures[0]
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"  # before: log, on which 0 has no place
    assert ax.get_ylim()[0] <= 0 < ax.get_ylim()[1]
    assert fig.axes[1].get_ylim()[0] > 1  # a panel that never reaches 0 spends no decades on it
    assert "requests in flight" in ax.get_ylabel()
    assert "--dispersion poisson" in fig._suptitle.get_text()  # before: no title for the whole figure
    assert "paper 32.6%" in ax.get_title() and "auto 27.4%" in ax.get_title()
    legends = fig.legends + [a.get_legend() for a in fig.axes if a.get_legend()]
    assert [t.get_text() for t in legends[0].get_texts()] == ["actual peak", "forecast: paper", "forecast: auto"]
    for a in fig.axes:  # before: the legend in the first panel's upper right, over its lines
        assert not legends[0].get_window_extent().overlaps(a.get_window_extent())
    assert _inside(fig, legends[0].get_window_extent())


# --------------------------------------------------------------------------------------------------- engine

def test_the_engine_panels_label_their_ticks_as_plain_numbers_and_the_title_its_settings(saved_figures, tmp_path):
    def model(ours, hf, warm, cold, new):
        return {"ours_b4": {"decode_tok_s": ours[0]}, "hf_b4": {"decode_tok_s": hf[0]},
                "ours_b1": {"decode_tok_s": ours[1]}, "hf_b1": {"decode_tok_s": hf[1]},
                "ttft_prewarmed_s": warm, "ttft_cold_load_s": cold, "ttft_new_process_s": new}

    # this run's figures (bench engine --models llama-20m qwen2-30m --batches 1 4 --repeats 1): within one decade
    results = {"machine": {"cpu": "AMD EPYC", "threads": 1},
               "args": {"prompt_tokens": 16, "new_tokens": 8, "repeats": 1},
               "models": {"llama-20m": model((194, 97), (196, 56), 0.018, 0.030, 1.54),
                          "qwen2-30m": model((147, 57), (129, 52), 0.040, 0.058, 1.66)}}
    bench_engine.plot(results, str(tmp_path / "e.png"))
    fig = saved_figures[0]
    for ax in fig.axes:
        ticks = _plain_ticks(ax)
        assert ticks and all("times" not in t and "^" not in t for t in ticks), ticks  # before: 2\times10^{2}
        assert all(float(t) > 0 for t in ticks)
        assert "log scale" in ax.get_ylabel()
        assert _inside(fig, ax.get_legend().get_window_extent())
    assert "tokens/s" in fig.axes[0].get_ylabel() and "(ms" in fig.axes[1].get_ylabel()
    assert "prompt 16 + 8 new tokens, median of 1 repeat(s)" in fig._suptitle.get_text()
