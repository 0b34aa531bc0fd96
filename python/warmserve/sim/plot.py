"""The TTFT CDF plot shared by `warmserve simulate` and `warmserve bench replay`."""

from __future__ import annotations


def plot_ttft_cdf(curves, path: str, title: str, unanswered_ttft_s: float = 999.0) -> None:
    """One line per curve on a log-TTFT axis. ``curves`` holds (label, ttft_s array, line style, colour or None).

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
    ax.set_xlabel(f"TTFT (s, log scale; unanswered = {unanswered_ttft_s:.0f} s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
