"""`warmserve bench forecast`: forecast error per series and method on ServeGen's 14 days.

Series: the three language models of ServeGen (model-level totals) and the largest per-client series (each client
stands for one model). ServeGen publishes request rates per 10-minute window; they are turned into in-flight
concurrency (what WarmServe forecasts) with Little's law and a dispersion bound, as bench/forecast/README.md
explains. Rolling origin over the last 7 days, one window ahead: each forecast uses only the windows before it.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import sys
import time

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.policy.forecast import METHODS, mean_relative_error, one_step
# a model-level window below GAP_SHARE of the model's median rate is missing data: the rule by which the ServeGen
# recipe refuses replays
from warmserve.workload import servegen as sg
from warmserve.workload.servegen import GAP_SHARE

WINDOW_S = 600.0
PERIOD = 144  # 10-minute windows per day
DAYS = 14
EVAL_DAYS = 7
SELECT_DAYS = 2  # the selector's backtest: the two days before each evaluation day
MIN_BUSY_DAYS = 13  # a client series needs traffic on this many of the DAYS days
#: ServeGen's language models, each given one of the paper's latency profiles (prefill s, decode s per token)
#: by size: m-large as the 70B model, m-mid as the 13B, m-small as the 7B.
PROFILES = {"m-large": (0.100, 0.030), "m-mid": (0.070, 0.020), "m-small": (0.035, 0.015)}
ALL_METHODS = METHODS + ("auto", "seasonal-naive")


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def default_traces() -> str:
    """The copy vendored in the package when present, else ../shared/traces beside the repository."""
    vendored = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
    if os.path.exists(os.path.join(vendored, "servegen_model_rates_10min.csv")):
        return vendored
    return os.path.join(_repo_root(), "..", "shared", "traces")


def _find(d: str, *names: str) -> str:
    for sub in ("", "servegen"):
        for n in names:
            p = os.path.join(d, sub, n)
            if os.path.exists(p):
                return p
    raise FileNotFoundError(f"none of {names} under {d} (or {d}/servegen): pass --traces DIR pointing at the "
                            f"ServeGen files (../shared/traces or warmserve/data)")



def busy_days(rate: np.ndarray) -> int:
    """Days (of PERIOD windows) with a request rate > 0 in at least one window; NaN (missing) is no traffic."""
    days = np.nan_to_num(rate[: len(rate) // PERIOD * PERIOD]).reshape(-1, PERIOD)
    return int((days > 0).any(axis=1).sum())


def load_series(traces: str, n_clients: int) -> tuple[dict, dict]:
    """Per series: rate (req/s) per 10-minute window (NaN where missing) and the index of dispersion of its
    arrival counts; and per model the request-weighted mean output tokens over the 14 days. Found in review: times
    in milliseconds dropped all but 3 windows silently, a negative t_s overwrote the last window, and a blank cell
    gave a bare ValueError; each is refused naming the file, line and column (servegen's loader and checks)."""
    n = DAYS * PERIOD
    rates: dict[str, dict] = {}
    rates_path = _find(traces, "servegen_model_rates_10min.csv")
    for model, (t, rate, _) in sg.load_model_rates(rates_path, end_s=n * WINDOW_S).items():
        if model not in PROFILES:
            continue
        if len(t) < n / 2:  # a model mostly without data would score nan% and look periodic
            raise InvalidArgumentError(
                f"ServeGen model rates {rates_path}: model {model} has data in {len(t)} of the {n} 10-minute "
                f"windows of the {DAYS} days: are its t_s in milliseconds, or the file cut short? t_s is seconds from "
                f"day 0's midnight; give the whole file derive_servegen.py writes", path=rates_path, model=model,
                windows=len(t), need=n)
        s = rates[model] = {"model": model, "rate": np.full(n, np.nan), "disp_num": np.zeros(n),
                            "disp_den": np.zeros(n)}
        s["rate"][(t // WINDOW_S).astype(np.int64)] = rate
        s["span"] = (float(t.min()), float(t.max()) + WINDOW_S)
    for s in rates.values():  # exactly 0, or a sliver of the usual rate: a hole in the data, not an idle window
        med = np.nanmedian(s["rate"])
        s["rate"][s["rate"] < GAP_SHARE * med] = np.nan
    clients: dict[str, dict] = {}
    for key, (model, t, rate, cv) in _client_rows(_find(traces, "servegen_client_windows.csv.gz",
                                                        "servegen_client_windows_top.csv.gz"), rates).items():
        s = clients[key] = {"model": model, "rate": np.zeros(n), "disp": np.ones(n)}
        i = (t // WINDOW_S).astype(np.int64)
        s["rate"][i] = rate
        s["disp"][i] = cv * cv
        np.add.at(rates[model]["disp_num"], i, rate * cv * cv)
        np.add.at(rates[model]["disp_den"], i, rate)
    for s in clients.values():  # a client without a row sent nothing, unless its whole model's data is missing
        s["rate"][np.isnan(rates[s["model"]]["rate"])] = np.nan
    for s in rates.values():
        # Independent clients add their count variances: the total's index of dispersion is the rate-weighted
        # mean of the clients' CV^2 (over the clients the file lists; Poisson where it lists none).
        s["disp"] = np.where(s["disp_den"] > 0, s["disp_num"] / np.maximum(s["disp_den"], 1e-12), 1.0)
    # the largest clients with traffic on at least 13 of the 14 days (as the README says; found in review, this
    # counted 13 x 144 busy windows instead, which left out clients that pause for hours every day)
    ok = [k for k, s in clients.items() if busy_days(s["rate"]) >= MIN_BUSY_DAYS]
    ok.sort(key=lambda k: -np.nansum(clients[k]["rate"]))
    series = {k: rates[k] for k in sorted(rates)}
    series.update({k: clients[k] for k in ok[:n_clients]})
    if n_clients > len(ok):  # found in review: --clients 100000 ran on the 50 there are, unsaid
        print(f"forecast: --clients {n_clients}: the traces hold {len(ok)} clients busy on at least "
              f"{MIN_BUSY_DAYS} of the 14 days; all of them are used", file=sys.stderr)
    tokens: dict[str, list] = {}
    stats = _find(traces, "servegen_length_stats_6h.csv")
    with sg._open(stats) as f:
        reader = csv.DictReader(f)
        sg._header(stats, reader, ("model", "expected_requests_all_clients", "out_mean"), _STATS)
        for r in reader:
            if r["model"] in PROFILES and r["out_mean"]:
                try:
                    tokens.setdefault(r["model"], []).append((float(r["expected_requests_all_clients"]),
                                                              float(r["out_mean"])))
                except (TypeError, ValueError):
                    raise sg._bad_cell(stats, _STATS, reader.line_num, r, _STATS_CELLS) from None
    out_tokens = {m: float(np.average([v for _, v in t], weights=[w for w, _ in t])) for m, t in tokens.items()}
    return series, out_tokens


_STATS = "ServeGen length statistics"
_STATS_CELLS = (("expected_requests_all_clients", float, "a number of requests"),
                ("out_mean", float, "a mean output length (a number)"))
_CW = "ServeGen client windows"
_CW_CELLS = (("client_id", int, "a client id (a whole number)"), ("t_s", float, "a window start (seconds)"),
             ("rate_rps", float, "a rate (a number of requests/s)"), ("cv", lambda v: float(v or 1.0), "a number"))


def _client_rows(path: str, rates: dict) -> dict[str, tuple]:
    """``model.cCLIENT`` -> (model, window starts, rates, CVs; a blank CV is 1) of the models in ``rates``, each
    window checked as the model rates are, and inside its model's span there (servegen.check_starts)."""
    rows: dict[str, list] = {}
    with sg._open(path) as f:
        reader = csv.DictReader(f)
        sg._header(path, reader, ("model", "client_id", "t_s", "rate_rps", "cv"), _CW)
        for r in reader:
            if r["model"] not in PROFILES:
                continue
            try:
                row = (float(r["t_s"]), float(r["rate_rps"]), float(r["cv"] or 1.0), reader.line_num)
                key = f"{r['model']}.c{int(r['client_id'])}"
            except (TypeError, ValueError):
                raise sg._bad_cell(path, _CW, reader.line_num, r, _CW_CELLS) from None
            if r["model"] not in rates:
                raise InvalidArgumentError(f"{_CW} {path}, line {reader.line_num}: model {r['model']} has no rows in "
                                           f"the model rates file beside it: give the files of one derivation",
                                           path=path, line=reader.line_num, model=r["model"])
            rows.setdefault(key, [r["model"]]).append(row)
    out = {}
    for key, (model, *v) in rows.items():
        t, rate, cv, lines = (np.array(c) for c in zip(*v))
        sg.check_starts(path, _CW, lines, t, span=rates[model]["span"], model=model)
        sg._refuse(path, _CW, lines, ~(np.isfinite(rate) & (rate >= 0)), "rate_rps", rate, "a rate >= 0 requests/s")
        out[key] = (model, t, rate, cv)
    return out


def to_concurrency(rate: np.ndarray, disp: np.ndarray, out_tokens: float, profile) -> tuple[np.ndarray, np.ndarray]:
    """(avg, peak) in-flight requests per window from the arrival rate (see README): Little's law for the
    average; the peak is the average plus sqrt(2 ln k) standard deviations of the in-flight count (variance
    avg x the index of dispersion) over the k = window / service time independent looks a window holds, and
    never more than the requests the window holds."""
    prefill_s, decode_s = profile
    service_s = prefill_s + out_tokens * decode_s
    avg = rate * service_s
    k = max(WINDOW_S / service_s, 2.0)
    peak = avg + math.sqrt(2 * math.log(k)) * np.sqrt(avg * disp)
    return avg, np.maximum(np.minimum(peak, rate * WINDOW_S), avg)


def wape(pred: np.ndarray, actual: np.ndarray) -> float:
    """sum |pred - actual| / sum actual over windows with both: the error weighted by load."""
    ok = ~np.isnan(pred) & ~np.isnan(actual)
    return float(np.abs(pred[ok] - actual[ok]).sum() / max(actual[ok].sum(), 1e-12))


def common_windows(preds: dict, actual: np.ndarray) -> np.ndarray:
    """Windows with an actual value where every method has a forecast: each method is scored on these alone, so
    the columns compare on the same ground (found in review: each was scored where it had a forecast, and
    seasonal-naive, with none where the same slot yesterday is missing, left out the hard windows right after each
    gap in the data: m-mid 876 of 930). The relative error further skips an actual 0, as every method's."""
    ok = ~np.isnan(actual)
    for m in ALL_METHODS:
        ok &= ~np.isnan(preds[m])
    return ok


def _simple(method: str, y: np.ndarray, start: int) -> np.ndarray:
    """The same slot yesterday (a reference, not a candidate of the selector)."""
    f = np.full(len(y) + 1, np.nan)
    f[PERIOD:] = y[: len(y) + 1 - PERIOD]
    f[:start] = np.nan
    return f


def evaluate(y: np.ndarray, start: int) -> tuple[dict, dict]:
    """One-step forecasts of y for t >= start - SELECT_DAYS days by every method (the days before the
    evaluation feed the selector), and each method's fit time."""
    preds, fit_s = {}, {}
    lo = start - SELECT_DAYS * PERIOD
    for m in METHODS:
        t0 = time.perf_counter()
        # next_step=False: f[len(y)] is past the data, and its fit (found in review: one a method and series, ~10%
        # of the fit time) would be thrown away
        preds[m] = one_step(m, y, PERIOD, lo, next_step=False)[: len(y)]
        fit_s[m] = time.perf_counter() - t0
    preds["seasonal-naive"] = _simple("seasonal-naive", y, lo)[: len(y)]
    fit_s["seasonal-naive"] = 0.0
    chosen: list[str] = []
    auto = np.full(len(y), np.nan)  # each evaluation day: the method with the least error on the days before
    for d0 in range(start, len(y), PERIOD):
        w = slice(d0 - SELECT_DAYS * PERIOD, d0)
        errs = {m: mean_relative_error(preds[m][w], y[w]) for m in METHODS}
        best = min(METHODS, key=lambda m: (np.nan_to_num(errs[m], nan=np.inf), METHODS.index(m)))
        chosen.append(best)
        auto[d0: d0 + PERIOD] = preds[best][d0: d0 + PERIOD]
    preds["auto"] = auto
    fit_s["auto"] = sum(fit_s[m] for m in METHODS)
    preds["auto_chosen"] = chosen
    return preds, fit_s


def daily_acf(y: np.ndarray) -> float:
    """Autocorrelation at 24 h of the hourly means (gaps filled by interpolation): how periodic a series is."""
    h = y[: len(y) // 6 * 6].reshape(-1, 6)
    ok = ~np.isnan(h)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(ok, h, 0.0).sum(axis=1) / ok.sum(axis=1)
    ok = ~np.isnan(h)
    h = np.interp(np.arange(len(h)), np.nonzero(ok)[0], h[ok])
    h = h - h.mean()
    return float(np.dot(h[:-24], h[24:]) / np.dot(h, h))


def add_arguments(p) -> None:
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--plot", metavar="PNG", help="forecast against actual for a few series")
    p.add_argument("--traces", metavar="DIR", default=None,
                   help="folder with the ServeGen files (default: the vendored copy, else ../shared/traces)")
    p.add_argument("--clients", type=int, default=16, help="per-client series to add to the three models")
    p.add_argument("--dispersion", choices=("cv", "poisson"), default="cv",
                   help="peak model: the published inter-arrival CVs (cv) or Poisson arrivals (index of dispersion 1)")
    p.add_argument("--periodic-acf", type=float, default=0.3,
                   help="a series whose 24 h autocorrelation reaches this counts as periodic")


def main(args) -> int:
    from warmserve.outputs import (check_at_least, check_distinct_outputs, check_output, check_plot,
                                   write_json_atomic)

    check_at_least("--clients", args.clients, 0)
    # found in review: nan was taken, and no series was then periodic; so was 5, which no autocorrelation reaches
    if not (math.isfinite(args.periodic_acf) and -1.0 <= args.periodic_acf <= 1.0):
        raise InvalidArgumentError(f"--periodic-acf must be an autocorrelation, from -1 to 1, got {args.periodic_acf}",
                                   periodic_acf=args.periodic_acf)
    if args.traces is not None and not os.path.isdir(args.traces):  # found in review: a FileNotFoundError, exit 1
        raise InvalidArgumentError(f"--traces {args.traces}: no such folder; give the folder with the ServeGen files",
                                   flag="--traces", path=args.traces)
    check_output("--json", args.json)  # before the minute of fitting, not after it
    check_distinct_outputs(args.json, args.plot)
    check_plot("--plot", args.plot)
    traces = args.traces or default_traces()
    t_all = time.perf_counter()
    series, out_tokens = load_series(traces, args.clients)
    n = DAYS * PERIOD
    start = n - EVAL_DAYS * PERIOD
    rows, curves = [], {}
    # progress on stderr, so stdout stays the table
    print(f"forecast: {len(series)} series from {traces}, {len(ALL_METHODS)} methods each", file=sys.stderr,
          flush=True)
    for i, (name, s) in enumerate(series.items()):
        t_series = time.perf_counter()
        disp = s["disp"] if args.dispersion == "cv" else np.ones_like(s["rate"])
        avg, peak = to_concurrency(s["rate"], disp, out_tokens[s["model"]], PROFILES[s["model"]])
        pa, fa = evaluate(avg, start)
        pp, fp = evaluate(peak, start)
        row = {"series": name, "model": s["model"], "kind": "model" if "." not in name else "client",
               "acf_24h": daily_acf(avg), "missing_windows": int(np.isnan(avg).sum()),
               "mean_avg_concurrency": float(np.nanmean(avg[start:])),
               "mean_peak_concurrency": float(np.nanmean(peak[start:])), "methods": {}}
        row["periodic"] = row["acf_24h"] >= args.periodic_acf
        row["auto_chosen_peak"] = pp.pop("auto_chosen")
        pa.pop("auto_chosen")
        pp = {m: f[start:] for m, f in pp.items()}
        pa = {m: f[start:] for m, f in pa.items()}
        on_p, on_a = common_windows(pp, peak[start:]), common_windows(pa, avg[start:])
        row["windows_scored"] = {"peak_mre": int((on_p & (peak[start:] > 0)).sum()),
                                 "avg_mre": int((on_a & (avg[start:] > 0)).sum()), "peak_wape": int(on_p.sum())}
        for m in ALL_METHODS:
            row["methods"][m] = {
                "peak_mre": mean_relative_error(np.where(on_p, pp[m], np.nan), peak[start:]),
                "avg_mre": mean_relative_error(np.where(on_a, pa[m], np.nan), avg[start:]),
                "peak_wape": wape(np.where(on_p, pp[m], np.nan), peak[start:]),
                "fit_s": fa[m] + fp[m],
            }
        rows.append(row)
        curves[name] = (peak[start:], {m: pp[m] for m in ("paper", "auto")})
        print(f"forecast: [{i + 1}/{len(series)}] {name}: {time.perf_counter() - t_series:.1f} s, peak MRE auto "
              f"{row['methods']['auto']['peak_mre']:.1%}", file=sys.stderr, flush=True)
    cols = ["paper", "holt-winters", "stl", "last-value", "auto", "seasonal-naive"]
    print("peak MRE per series (10-minute windows, 7 days, one window ahead); avg MRE of `auto` and of `paper`; "
          "every method on the same windows: those with an actual peak > 0 where every method has a forecast")
    print(f"{'series':<16} {'acf24':>5} {'windows':>7} " + " ".join(f"{c[:12]:>12}" for c in cols)
          + f" {'avg auto':>9} {'avg paper':>9}")
    for r in rows:
        print(f"{r['series']:<16} {r['acf_24h']:>5.2f} {r['windows_scored']['peak_mre']:>7} "
              + " ".join(f"{r['methods'][c]['peak_mre']:>12.1%}" for c in cols)
              + f" {r['methods']['auto']['avg_mre']:>9.1%} {r['methods']['paper']['avg_mre']:>9.1%}")
    summary = {}
    for group, sel in (("all", rows), ("periodic", [r for r in rows if r["periodic"]]),
                       ("strongly_periodic", [r for r in rows if r["acf_24h"] >= 0.7]),
                       ("not_periodic", [r for r in rows if not r["periodic"]])):
        if not sel:
            continue
        summary[group] = {"series": len(sel), **{
            m: {"peak_mre_mean": float(np.mean([r["methods"][m]["peak_mre"] for r in sel])),
                "peak_mre_median": float(np.median([r["methods"][m]["peak_mre"] for r in sel])),
                "avg_mre_mean": float(np.mean([r["methods"][m]["avg_mre"] for r in sel])),
                "peak_wape_mean": float(np.mean([r["methods"][m]["peak_wape"] for r in sel])),
                "fit_s_per_series": float(np.mean([r["methods"][m]["fit_s"] for r in sel]))}
            for m in ALL_METHODS}}
    print()
    print(f"{'group':<17} {'n':>3} " + " ".join(f"{c[:12]:>12}" for c in cols) +
          "   peak MRE: mean / median over series")
    for g, s in summary.items():
        print(f"{g:<17} {s['series']:>3} " + " ".join(
            f"{s[c]['peak_mre_mean']:>5.1%}/{s[c]['peak_mre_median']:<5.1%}".rjust(12) for c in cols))
    fit = summary["all"]
    print(f"fit time per series (s, avg + peak, {EVAL_DAYS + SELECT_DAYS} days of origins): " +
          ", ".join(f"{m} {fit[m]['fit_s_per_series']:.2f}" for m in METHODS))
    res = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
           "traces": os.path.abspath(traces), "dispersion": args.dispersion, "window_s": WINDOW_S,
           "eval_days": EVAL_DAYS, "series": rows,
           "summary": summary, "goal_peak_mre": 0.073, "wall_s": time.perf_counter() - t_all}
    if args.json:
        write_json_atomic(args.json, res, indent=1, default=float)
    if args.plot:
        _plot(args.plot, curves, rows, args.dispersion)
    return 0


def _plot(path: str, curves: dict, rows: list, dispersion: str = "cv") -> None:
    from warmserve.extras import pyplot
    from warmserve.outputs import save_figure

    plt = pyplot("the forecast benchmark's plot")

    pick = [r["series"] for r in rows if r["kind"] == "model"]
    pick += [r["series"] for r in sorted((r for r in rows if r["kind"] == "client"), key=lambda r: -r["acf_24h"])][:2]
    by_name = {r["series"]: r for r in rows}
    fig, axes = plt.subplots(len(pick), 1, figsize=(11, 2.6 * len(pick) + 0.6), sharex=True)
    days = np.arange(2 * PERIOD) / PERIOD
    for ax, name in zip(np.atleast_1d(axes), pick):
        actual, preds = curves[name]
        ax.plot(days, actual[-2 * PERIOD:], color="black", lw=1.2, label="actual peak")
        for m, c in (("paper", "tab:blue"), ("auto", "tab:orange")):
            ax.plot(days, preds[m][-2 * PERIOD:], color=c, lw=0.9, alpha=0.85, label=f"forecast: {m}")
        mre = by_name[name]["methods"]
        ax.set_title(f"{name}: peak MRE over the {EVAL_DAYS} days, paper {mre['paper']['peak_mre']:.1%}, "
                     f"auto {mre['auto']['peak_mre']:.1%}", fontsize=9)
        # symlog, not log: found in review, a log axis drew a forecast (or a peak) of 0 as a plunge off the foot
        # of the panel, the same as a small one, and dropped a client's idle windows; linear below 1 request
        ax.set_yscale("symlog", linthresh=1.0)
        drawn = np.concatenate([actual[-2 * PERIOD:]] + [preds[m][-2 * PERIOD:] for m in ("paper", "auto")])
        if np.nanmin(drawn) <= 0:  # only then: a panel that never reaches 0 keeps its decades for its data
            ax.set_ylim(bottom=0)
        ax.set_ylabel("requests in flight\n(symlog: linear < 1)", fontsize=8)
    # under the panels: in the first panel's corner it covered that series' lines (found in review)
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    np.atleast_1d(axes)[-1].set_xlabel("days (the last two of the evaluation)")
    fig.suptitle(f"peak requests in flight per {WINDOW_S / 60:.0f}-minute window, actual and forecast one window "
                 f"ahead (--dispersion {dispersion})", fontsize=10)
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
    save_figure(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    add_arguments(ap)
    raise SystemExit(main(ap.parse_args()))
