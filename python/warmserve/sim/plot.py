"""The TTFT CDF plot shared by `warmserve simulate` and `warmserve bench replay`, and `simulate`'s rate sweep."""

from __future__ import annotations

import math

from warmserve.outputs import save_figure


def plot_ttft_cdf(curves, path: str, title: str, unanswered_ttft_s: float | None = None) -> None:
    """One line per curve on a log-TTFT axis. ``curves`` holds (label, ttft_s array, line style, colour or None).
    ``unanswered_ttft_s``: what an unanswered request counts as, for the axis label (None: the simulator's rule,
    until the end of the run).

    TTFTs are floored at 1 ms so that the log axis shows requests answered faster than that."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, data, style, color in curves:
        if data is None or not len(data):
            continue
        x = np.sort(np.maximum(np.asarray(data, float), 1e-3))
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), style, color=color, label=label, lw=1.5)
    ax.set_xscale("log")
    unanswered = "until the end of the run" if unanswered_ttft_s is None else f"{unanswered_ttft_s:.0f} s"
    ax.set_xlabel(f"TTFT (s, log scale; unanswered = {unanswered})")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def rate_sweep_title(preset: str, seeds: str, burst_cv: float | None, policy_options, *, ttft_slo_s: float = 0.0,
                     slo_scale: float | None = None) -> str:
    """The title of a --sweep-rate plot: ``seeds`` as given ("0,1,2"), the burst CV and policy options where set
    (`warmserve simulate --plot`, and bench/simulate/issue11/rerun_policies.py redrawing one), and on a second
    line the TTFT SLO the attainment counts (``SimConfig.ttft_slo_s``, else ``slo_scale`` x each model's
    1024-token prefill; found in review: the panel gave attainment against an SLO it did not name)."""
    extra = (f", burst CV {burst_cv:g}" if burst_cv else "") + "".join(f", {o}" for o in policy_options or ())
    head = f"{preset}: P99 TTFT and SLO attainment vs offered rate (seeds {seeds}{extra})"
    if ttft_slo_s:
        return f"{head}\nSLO: TTFT within {ttft_slo_s:g} s"
    if slo_scale:
        return f"{head}\nSLO: TTFT within {slo_scale:g}x the model's prefill of 1024 tokens"
    return head


def plot_rate_sweep(sweep: dict, path: str, title: str) -> None:
    """The paper's figure style for a rate sweep (``runner.rate_sweep``'s result): P99 TTFT against offered rate
    (log y) on the left, SLO attainment against offered rate on the right, one line per policy. A policy with a
    ``cold_start_band`` gets a shaded band between its runs at the low and high cold start (its line is the
    sweep's own cost model). With several seeds the line is the table's figure (P99: median over seeds; SLO: mean)
    and a bar spans the seeds' own figures, so that a reader sees how far one seed is from another."""
    from matplotlib.ticker import FixedLocator, NullLocator

    from warmserve.extras import pyplot

    plt = pyplot("the rate-sweep plot")
    fig, (ax_p99, ax_att) = plt.subplots(1, 2, figsize=(12, 4.5))
    n_seeds = len(sweep.get("seeds") or ())
    rates = set()
    for i, (name, pol) in enumerate(sweep["policies"].items()):
        pts = pol["points"]
        x = [p["offered_rate_rps"] for p in pts]
        rates.update(x)
        style = "-" if i < 10 else "--"
        for ax, key, floor in ((ax_p99, "ttft_p99_s", 1e-3), (ax_att, "slo_attainment", None)):
            y = [max(p[key], floor) if floor else p[key] for p in pts]
            ax.plot(x, y, style, marker="o", ms=3, color=f"C{i % 10}", label=name, lw=1.5)
            spread = _seed_spread(pts, key, floor)
            if spread:
                lo, hi = spread
                ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]], fmt="none",
                            ecolor=f"C{i % 10}", elinewidth=0.8, capsize=3)
        band = pol.get("cold_start_band")
        if band:
            lo, hi = band["low"], band["high"]
            bx = [p["offered_rate_rps"] for p in lo]
            label = f"{name}, cold start {band['cold_start_s'][0]:g}-{band['cold_start_s'][1]:g} s"
            ax_p99.fill_between(bx, [max(p["ttft_p99_s"], 1e-3) for p in lo],
                                [max(p["ttft_p99_s"], 1e-3) for p in hi], color=f"C{i % 10}", alpha=0.2, label=label)
            ax_att.fill_between(bx, [p["slo_attainment"] for p in lo], [p["slo_attainment"] for p in hi],
                                color=f"C{i % 10}", alpha=0.2, label=label)
    over = n_seeds > 1
    ax_p99.set_yscale("log")
    ax_p99.set_ylabel("P99 TTFT (s, log scale)")
    # found in review: P99s within one decade were labelled 1.28335x10^-1 on each minor tick; plain numbers, and
    # the minor ticks named only when no decade's own tick is on the axis (else they would crowd it)
    ax_p99.yaxis.set_major_formatter(lambda v, _: f"{v:.6g}")
    lo, hi = ax_p99.get_ylim()
    if math.floor(math.log10(hi)) == math.floor(math.log10(lo)):
        ax_p99.yaxis.set_minor_formatter(lambda v, _: f"{v:.6g}")
    target = sweep.get("slo_target", 0.99)
    ax_att.axhline(target, color="grey", lw=0.8, ls=":", label=f"SLO attainment target {target:g}")
    ax_att.set_ylabel("SLO attainment (share of requests)")
    if over:
        ax_p99.set_title(f"median over {n_seeds} seeds; bars: lowest to highest seed", fontsize=9)
        ax_att.set_title(f"mean over {n_seeds} seeds; bars: lowest to highest seed", fontsize=9)
    ax_att.set_ylim(0, 1.02)
    for ax in (ax_p99, ax_att):
        ax.set_xscale("log")  # sweeps double the rate: even steps
        # found in review: the log axis labelled the rates 6x10^0 and 2x10^1; the swept rates, as the table heads
        # its columns, say which points were run
        ax.xaxis.set_major_locator(FixedLocator(sorted(rates)))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:.3g}")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("offered rate (requests/s, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    # below both panels: inside one (lower left) it covered a band or line that reached down there
    handles, labels = ax_att.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 4), 1, 1))
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _seed_spread(points: list, key: str, floor: float | None):
    """The lowest and highest of each point's per-seed ``key`` (``KEY_per_seed``, floored like the line), or None
    where a point has no per-seed figures or only one seed (a sweep saved before they were kept)."""
    per = [p.get(f"{key}_per_seed") for p in points]
    if not all(per) or all(len(v) < 2 for v in per):
        return None
    clip = (lambda v: max(v, floor)) if floor else (lambda v: v)
    return [clip(min(v)) for v in per], [clip(max(v)) for v in per]
