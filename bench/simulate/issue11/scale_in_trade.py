"""The scale-in options side by side: each one's P99 TTFT over the registered policy's, paired by seed
(``paired_option.py`` files), in the two regimes it trades between. x: the code preset as traced (bursts longer
than an engine start, where holding GPUs keeps a wide model's bursts waiting); y: the conv preset at burst CV 4
(bursts that recur within seconds, where a 5 s scale-in stops the instances the next burst lacks). Below 1 on
both axes would win both; a point right of 1 is what keeps each option off. Prints the table it draws, with the
GPU-seconds ratio of each option's cells.

    python bench/simulate/issue11/scale_in_trade.py \
        "scale_in_window_s 15 s=bench/simulate/issue11/scale_in_window15_paired.json" ... \
        --plot bench/simulate/issue11/scale_in_trade.png > bench/simulate/issue11/scale_in_trade.txt
"""

from __future__ import annotations

import argparse
import json
import statistics

from warmserve.errors import InvalidArgumentError

#: (panel title, x cell, y cell); a cell is (preset, burst CV), None as traced.
PANELS = (("paper presets", ("paper-code", None), ("paper-conv", 4.0)),
          ("artifact presets", ("artifact-code", None), ("artifact-conv", 4.0)))


TICKS = (1 / 3, 0.5, 0.7, 1, 1.4, 2, 3)


def cells(path: str) -> dict[tuple[str, float | None], dict]:
    """(preset, burst CV) -> {"p99": median over seeds of P99 with / without, "gpu_s": mean GPU-seconds with /
    without, "worse": seeds where the option's P99 is the higher, "seeds": how many} of a paired_option.py file."""
    with open(path) as f:
        doc = json.load(f)
    out = {}
    for row in doc["rows"]:
        gpu = [w["gpu_seconds"] / wo["gpu_seconds"] for w, wo in zip(row["with"], row["without"])]
        out[(row["preset"], row["burst_cv"])] = {
            "p99": statistics.median(row["p99_ratio"]), "gpu_s": statistics.fmean(gpu),
            "worse": sum(r > 1 for r in row["p99_ratio"]), "seeds": len(row["p99_ratio"])}
    return out


def parse_inputs(specs: list[str]) -> list[tuple[str, dict]]:
    """``LABEL=FILE`` arguments -> [(label, cells(FILE))], checked: every panel's cells present in each file."""
    out = []
    for spec in specs:
        label, sep, path = spec.rpartition("=")
        if not sep or not label:
            raise InvalidArgumentError(f"{spec!r}: give each input as LABEL=FILE (a paired_option.py JSON)")
        got = cells(path)
        missing = [c for _, *xy in PANELS for c in xy if c not in got]
        if missing:
            raise InvalidArgumentError(f"{path} has no row for {missing}: run paired_option.py with "
                                       "--presets paper-conv,artifact-conv,paper-code,artifact-code --burst-cvs none,4")
        out.append((label, got))
    return out


def table(inputs: list[tuple[str, dict]]) -> str:
    def cell(c: dict) -> str:
        return f"{c['p99']:.2f}x ({c['worse']} of {c['seeds']})"

    order = [c for _, *xy in PANELS for c in xy]
    head = " | ".join(f"{p}, {'as traced' if cv is None else f'burst CV {cv:g}'}" for p, cv in order)
    lines = [f"| option | {head} | GPU-s with / without (range over the 8 cells) |",
             "|---" * (len(order) + 2) + "|"]
    for label, got in inputs:
        gpu = [c["gpu_s"] for c in got.values()]
        lines.append(f"| {label} | " + " | ".join(cell(got[c]) for c in order)
                     + f" | {min(gpu):.3f}-{max(gpu):.3f}x |")
    return "\n".join(lines)


def plot(inputs: list[tuple[str, dict]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from warmserve.outputs import save_figure

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 5.2))
    for ax, (title, xc, yc) in zip(axes, PANELS):
        ax.axhline(1, color="grey", lw=0.8)
        ax.axvline(1, color="grey", lw=0.8)
        ax.axvspan(0, 1, ymin=0, ymax=0.5, color="tab:green", alpha=0.06)  # wins both (log axes centred on 1)
        ax.plot([1], [1], "ks", label="registered")
        for (label, got), marker in zip(inputs, "ovD^<>phP*X"):
            ax.plot([got[xc]["p99"]], [got[yc]["p99"]], marker, ms=8, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(FixedLocator(TICKS))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}x"))
            axis.set_minor_locator(NullLocator())
        ax.set_xlim(1 / 3.2, 3.2)
        ax.set_ylim(1 / 3.2, 3.2)
        ax.set_xlabel(f"P99 TTFT over registered: {xc[0]}, as traced")
        ax.set_ylabel(f"P99 TTFT over registered: {yc[0]}, burst CV {yc[1]:g}")
        ax.set_title(title)
    both = [label for label, got in inputs if all(got[xc]["p99"] < 1 and got[yc]["p99"] < 1 for _, xc, yc in PANELS)]
    fig.suptitle("Scale-in options, paired by seed (medians): below 1 on both axes of both panels: "
                 + (", ".join(both) if both else "none"))
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", metavar="LABEL=FILE", help="a label and a paired_option.py JSON")
    ap.add_argument("--plot", default=None, help="PNG of the two panels")
    args = ap.parse_args()
    try:
        inputs = parse_inputs(args.inputs)
    except (InvalidArgumentError, OSError, KeyError, ValueError) as e:
        ap.error(str(e))
    print(table(inputs))
    if args.plot:
        plot(inputs, args.plot)


if __name__ == "__main__":
    main()
