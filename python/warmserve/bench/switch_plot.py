"""The --plot of `warmserve bench switch`: activation of prewarmed weights against a cold load, per checkpoint size.
Moved out of ``bench.switch`` (at its 600-line limit) when review found the figure unreadable: the y axis named no
quantity ("ms (log)"), the activation bars, a fraction of a millisecond at the foot of a log axis, carried no
figure, and nothing said which ratio the "135x" over each pair was or how many repeats each median took."""

from __future__ import annotations

import numpy as np

from warmserve.bench.switch_print import weights_gib


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 100 else f"{v:.3g} ms"


def plot(res: dict, path: str) -> None:
    from warmserve.extras import pyplot
    from warmserve.outputs import save_figure

    plt = pyplot("the switch benchmark's plot")

    rows = res["activation_vs_cold_load"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    act = ax.bar(x - 0.2, [r["activation_ms"] for r in rows], 0.4, label="activate prewarmed")
    cold = ax.bar(x + 0.2, [r["cold_load_ms"] for r in rows], 0.4, label="cold load (page cache)")
    # a log axis shows bars a hundred times apart side by side, but its bar lengths are not readable: each bar
    # carries its figure, the cold load's with its ratio to the activation (the table's "ratio" column)
    ax.bar_label(act, [_ms(r["activation_ms"]) for r in rows], fontsize=7)
    ax.bar_label(cold, [f"{_ms(r['cold_load_ms'])}\n{r['ratio']:.0f}x activate" for r in rows], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(top=max(r["cold_load_ms"] for r in rows) * 30)  # room for the labels and the legend above the bars
    ax.set_xticks(x, [f"{weights_gib(r)} GiB" for r in rows])  # the checkpoint's size, not the size asked
    ax.set_xlabel("checkpoint size (weights measured)")
    ax.set_ylabel("time until weights are ready (ms, log scale)")
    n = rows[0].get("repeats", {})
    reps = (f", medians of {n['activation']} activations, {n['cold_load']} cold loads"
            if "activation" in n and "cold_load" in n else "")
    ax.set_title(f"making weights ready to serve ({res['machine']['backend']}{reps})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
