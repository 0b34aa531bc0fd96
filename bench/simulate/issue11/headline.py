"""Print README.md's "Results at a glance" table from the JSON files in this folder, so that every figure there is
the file's own (run from anywhere: python bench/simulate/issue11/headline.py [--plot headline.png]). Medians over
the files' seeds; ratios are of the medians, as `warmserve simulate` prints them. A missing file prints as "-".
``--plot``: the P99 ratio autoscale / warmserve against the engine start (0, 14, 35 s), per preset, as traced and
at burst CV 4, against the registered autoscale and its best setting."""

from __future__ import annotations

import json
import os

from autoscale_best import CELLS, SETTINGS  # this folder's script: cell -> (file suffix, burst CV, engine start)

#: the P99 rows' labels, per cell of autoscale_best.CELLS
LABELS = {"traced_14s": "as traced, 14 s engine start", "traced_35s": "as traced, 35 s",
          "traced_0s": "as traced, 0 s (weights only)", "cv4_14s": "burst CV 4, 14 s", "cv4_35s": "burst CV 4, 35 s"}
HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("paper_conv", "paper_code", "artifact_conv", "artifact_code")
TARGETS = ("0.99", "0.98", "0.95")


def load(name: str):
    p = os.path.join(HERE, name + ".json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def pol(name: str, policy: str, key: str):
    d = load(name)
    if d is None or policy not in d["policies"]:
        return None
    return d["policies"][policy].get(key)


def ratio(a, b) -> str:
    return "-" if a is None or b is None or not b else f"{a / b:.2f}x"


def best_autoscale() -> dict:
    d = load("autoscale_best")
    return {} if d is None else {(r["preset"].replace("-", "_"), r["cell"]): r for r in d["rows"]}


def p99_rows(best: dict) -> list[list[str]]:
    rows = []
    for cell, (suffix, _, _) in CELLS.items():
        row = [f"P99 TTFT autoscale / warmserve, {LABELS[cell]}: registered autoscale; **its best of "
               f"{len(SETTINGS)} settings** (its GPU-s / warmserve's); its best within warmserve's GPU-s"]
        for p in PRESETS:
            reg = ratio(pol(p + suffix, "autoscale", "ttft_p99_s"), pol(p + suffix, "warmserve", "ttft_p99_s"))
            b = best.get((p, cell))
            if b is None:
                row.append(reg)
                continue
            frugal = b.get("ratio_best_within_gpu_s")
            row.append(f"{reg}; **{b['ratio_best']:.2f}x** ({b['gpu_ratio_best']:.2f}x); "
                       + ("none" if frugal is None else f"{frugal:.2f}x"))
        row.append(f"`P{suffix}.json`, `autoscale_best.json`")
        rows.append(row)
    return rows


def overflow_rows() -> list[list[str]]:
    """``autoscale_overflow.json``: its best with prefill-overflow routing at the long windows offered too."""
    d = load("autoscale_overflow")
    best = {} if d is None else {(r["preset"].replace("-", "_"), r["cell"]): r for r in d["rows"]}
    rows = []
    for label, cells in (("as traced, 14 s; 35 s; 0 s", ("traced_14s", "traced_35s", "traced_0s")),
                         ("burst CV 4, 14 s; 35 s", ("cv4_14s", "cv4_35s"))):
        row = [f"P99 TTFT autoscale / warmserve, {label}: **its best of {len(SETTINGS)} settings and of "
               "prefill-overflow routing at 30-300 s windows** (its GPU-s / warmserve's)"]
        for p in PRESETS:
            got = [best.get((p, c)) for c in cells]
            row.append("; ".join("-" if b is None else f"**{b['ratio_best']:.2f}x** ({b['gpu_ratio_best']:.2f}x)"
                                 for b in got))
        row.append("`autoscale_overflow.json`")
        rows.append(row)
    return rows


def window_rows(best: dict) -> list[list[str]]:
    """warmserve at autoscale's long load windows: whether the setting that helps the baseline helps it too; and
    both at their best window (14 s engine start)."""
    rows = []
    for label, suffix in (("as traced", ""), ("burst CV 4", "_burst4")):
        row = [f"P99 TTFT warmserve at `load_window_s` 30 / 60 s over its registered 5 s, {label}"]
        for p in PRESETS:
            base = pol(p + suffix, "warmserve", "ttft_p99_s")
            row.append(" / ".join(ratio(pol(f"{p}{suffix}_warmserve_window{w}", "warmserve", "ttft_p99_s"), base)
                                  for w in (30, 60)))
        row.append(f"`P{suffix}_warmserve_window30.json`, `..._window60.json`")
        rows.append(row)
    row = ["P99 TTFT autoscale's best of its settings / warmserve's best of its three windows, 14 s: as traced; "
           "burst CV 4"]
    for p in PRESETS:
        cells = []
        for cell, suffix in (("traced_14s", ""), ("cv4_14s", "_burst4")):
            ws = [pol(f"{p}{suffix}{w}", "warmserve", "ttft_p99_s") for w in ("", "_warmserve_window30",
                                                                              "_warmserve_window60")]
            b = best.get((p, cell))
            cells.append("-" if b is None or None in ws else f"{b['best']['ttft_p99_s'] / min(ws):.2f}x")
        row.append("; ".join(cells))
    row.append("`autoscale_best.json`, `P[_burst4][_warmserve_window30|60].json`")
    rows.append(row)
    return rows


def rate_rows() -> list[list[str]]:
    rows = []
    for label, wfile in (("max rate under the SLO, warmserve / shared, at targets 0.99 / 0.98 / 0.95",
                          "_search_targets"),
                         ("the same, warmserve with `scale_out_now=true`", "_search_targets_scale_out_now")):
        row = [label]
        for p in PRESETS:
            w = pol(p + wfile, "warmserve", "max_rate_by_slo_target") or {}
            s = pol(p + "_search_targets", "shared", "max_rate_by_slo_target") or {}
            row.append(" / ".join(ratio(w.get(t), s.get(t)) for t in TARGETS))
        row.append(f"`P{wfile}.json`" + ("" if wfile == "_search_targets" else ", shared from `P_search_targets.json`"))
        rows.append(row)
    bound = load("static_bound") or []
    row = ["ceiling over the best static layout of any policy moving GPUs every 1 s / 30 s (trace alone)"]
    for p in PRESETS:
        g = {(b["bin_s"], b["react_s"]): b["gain"] for b in bound
             if b["preset"] == p.replace("_", "-") and b["burst_cv"] is None}
        row.append(" / ".join(f"{g[k]:.2f}x" if k in g else "-" for k in ((1.0, 1.0), (5.0, 30.0))))
    row.append("`static_bound.json`")
    rows.append(row)
    return rows


def dedicated_rows() -> list[list[str]]:
    rows = []
    for label, f, key in (("P99 TTFT warmserve / dedicated, as traced", "", "ttft_p99_s"),
                          ("the same, burst CV 4", "_burst4", "ttft_p99_s"),
                          ("GPU-seconds warmserve / dedicated (GPUs serving)", "", "gpu_seconds"),
                          ("the same, counting GPUs that hold only prewarms", "", "gpu_seconds_holding"),
                          ("GPU-seconds with `idle_to_zero=true`: serving; holding", "_idle0", None),
                          ("the same with B = 64 and `load_window_s=1`", "_idle0_cap64_window1", None)):
        row = [label]
        for p in PRESETS:
            if key is not None:
                row.append(ratio(pol(p + f, "warmserve", key), pol(p + f, "dedicated", key)))
            else:
                row.append("; ".join(ratio(pol(p + f, "warmserve", k), pol(p + f, "dedicated", k))
                                     for k in ("gpu_seconds", "gpu_seconds_holding")))
        row.append(f"`P{f}.json`")
        rows.append(row)
    return rows


def plot(path: str, best: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True)
    for ax, (title, cv) in zip(axes, (("as traced", None), ("burst CV 4", 4.0))):
        for p, colour in zip(PRESETS, ("C0", "C1", "C2", "C3")):
            xs, reg, bst = [], [], []
            # in order of the engine start (None: the cost model's 14 s)
            for x, cell, suffix, cell_cv in sorted((14.0 if st is None else st, c, sf, v)
                                                   for c, (sf, v, st) in CELLS.items()):
                a, w = pol(p + suffix, "autoscale", "ttft_p99_s"), pol(p + suffix, "warmserve", "ttft_p99_s")
                if cell_cv != cv or a is None or w is None:
                    continue
                b = best.get((p, cell))
                xs.append(x)
                reg.append(a / w)
                bst.append(b["ratio_best"] if b else a / w)
            ax.plot(xs, reg, "o--", color=colour, alpha=0.5, label=f"{p}, registered autoscale")
            ax.plot(xs, bst, "o-", color=colour, label=f"{p}, autoscale's best setting")
        ax.axhline(50.8, color="grey", lw=0.8, ls=":")
        ax.axhline(10, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("autoscale's engine start before its weights load (s)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("P99 TTFT, autoscale / warmserve (log)")
    # below the panels, not on one: it hid paper_conv's registered points at burst CV 4
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=4)
    fig.suptitle("The gain is the engine start a prewarmed worker skips (dotted: 10x and the paper's 50.8x)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", default=None, help="write the P99 ratio against the engine start to this PNG")
    args = ap.parse_args()
    best = best_autoscale()
    if args.plot:
        plot(args.plot, best)
    print("| figure | paper-conv | paper-code | artifact-conv | artifact-code | file (issue11/) |")
    print("|---|---|---|---|---|---|")
    for r in p99_rows(best) + overflow_rows() + window_rows(best) + rate_rows() + dedicated_rows():
        print("| " + " | ".join(x if x.strip("-; ") else "-" for x in r) + " |")
    print()
    print("| 12 models on 16 GPUs: SLO attainment / P99 TTFT | warmserve | warmserve, rules only "
          "(`colocate_when_oversubscribed=false`) | warmserve, tp > 1 models alone (`colocate_tp=false`, as live "
          "runs) | shared | autoscale | files (issue11/) |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("conv", "code"):
        for r in ("x025", "x05"):
            name, rules, alone = (f"paper_{kind}_m12_{r}_{v}" for v in ("colocate", "rules", "colocate_tp_off"))
            cells = []
            for f, p in ((name, "warmserve"), (rules, "warmserve"), (alone, "warmserve"), (name, "shared"),
                         (name, "autoscale")):
                a, q = pol(f, p, "slo_attainment"), pol(f, p, "ttft_p99_s")
                cells.append("-" if a is None else f"{a:.3f} / {q:.2f} s")
            print(f"| paper-{kind}, rate x{r[1:2]}.{r[2:]} | " + " | ".join(cells)
                  + f" | `{name}.json`, `{rules}.json`, `{alone}.json` |")
        name, rules = f"paper_{kind}_m12_search_colocate", f"paper_{kind}_m12_search_rules"
        w = pol(name, "warmserve", "max_rate_under_slo_rps")
        o = pol(rules, "warmserve", "max_rate_under_slo_rps")
        s = pol(name, "shared", "max_rate_under_slo_rps")
        cells = ["-" if v is None or s is None else f"{v:.2f} rps: {v / s:.2f}x `shared`" for v in (w, o)]
        print(f"| paper-{kind}, max rate under the SLO | " + " | ".join(cells)
              + f" | not run | {'-' if s is None else f'{s:.2f} rps'} | | `{name}.json`, `{rules}.json` |")

if __name__ == "__main__":
    main()
