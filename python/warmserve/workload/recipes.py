"""Multi-model workloads from single traces: the paper's power-law recipe and a ServeGen recipe.

Both return a ``Workload`` whose ``trace`` covers [0, duration_s) and whose ``history`` holds, for every model,
the same slot of ``history_days`` earlier days plus the ``pre_s`` seconds just before t=0: what the forecasts
learn from. Everything is drawn from one seeded ``numpy.random.Generator``, so a seed fixes the workload.

Rates in a workload's ``meta`` (``total_rate_rps``, ``expected_rate_rps``, and ``realised_rate_rps``: the
replay's requests over its duration) are requests per second of trace time, before ``time_scale``;
``meta["offered_rate_rps"]`` is the rate the replay offers per second of its own clock (that rate /
``time_scale``: compressing time keeps the requests and shortens the span).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.workload.azure import load_azure, trace_source
from warmserve.workload.recipe_args import (check_history_room, check_rates_and_span, check_request_budget,
                                            check_stretch_args, check_time_scale, check_total_rate, prompt_cap)
from warmserve.workload.request import Trace, Workload
from warmserve.workload import servegen as sg

DAY_S = 86400.0


def power_law_shares(n_models: int, alpha: float) -> np.ndarray:
    """Share of model i proportional to (i+1)^-alpha, summing to 1."""
    if n_models < 1:
        raise InvalidArgumentError(f"need at least one model, got n_models={n_models}")
    if not math.isfinite(alpha):  # NaN shares ended later in "cannot convert float NaN to integer"
        raise InvalidArgumentError(f"alpha {alpha}: the power-law exponent must be a finite number, e.g. 1",
                                   alpha=alpha)
    with np.errstate(over="ignore"):
        w = (np.arange(n_models) + 1.0) ** -float(alpha)
    if not np.isfinite(w.sum()):  # found in review: alpha -1000 overflowed, NaN shares, NaN rates
        raise InvalidArgumentError(f"alpha {alpha:g}: (i+1)^-alpha overflows a float for {n_models} models: give a "
                                   f"larger exponent, e.g. 1", alpha=alpha, n_models=n_models)
    return w / w.sum()


#: the most copies ``_circular_stretch`` overlays, and the most rows they may hold together (copies x rows x wraps).
#: Found in review: one Azure timestamp typed a year late made a 5,000-row trace span 31.6 Ms, and 24 rps took
#: ~150,000 copies of it: MemoryError. The presets need at most a few hundred copies (the CLI's request budget,
#: 10 million, allows ~2,200 copies of the code trace for one model)
MAX_STRETCH_COPIES = 10_000
MAX_STRETCH_ROWS = 1 << 25
#: the most rows the search for copies reads in all its passes (found in review: a 1e-7 s replay got no row, and the
#: search re-read 5, 6, ... copies up to the rows limit: ~3e10 rows, hours). A last pass of up to MAX_STRETCH_ROWS and
#: as many before it; the presets' searches take a few passes of well under a million rows
MAX_STRETCH_SEARCH_ROWS = 2 * MAX_STRETCH_ROWS


def _check_copies(n: int, period_s: float, wraps: int, rate_rps: float, copies: int, read: int = 0,
                  pieces=()) -> None:
    """Raise InvalidArgumentError when a stretch needs more copies of its trace than ``MAX_STRETCH_COPIES`` or rows
    than ``MAX_STRETCH_ROWS``, or, having read ``read`` rows in its earlier passes over ``pieces`` ((start, end)
    each), more than ``MAX_STRETCH_SEARCH_ROWS`` in all."""
    if copies > MAX_STRETCH_COPIES or copies * n * wraps > MAX_STRETCH_ROWS:
        raise InvalidArgumentError(
            f"the trace spans {period_s:.0f} s with {n} requests ({n / period_s:.3g} rps): {rate_rps:.3g} rps needs "
            f"{copies} copies of it ({copies * n * wraps} rows; at most {MAX_STRETCH_COPIES} copies and "
            f"{MAX_STRETCH_ROWS} rows): lower total_rate_rps or rate_scale, or check the trace for a timestamp far "
            f"from the rest (a span much longer than its traffic)", span_s=period_s, trace_rate_rps=n / period_s,
            rate_rps=rate_rps, copies=copies)
    if read + copies * n * wraps > MAX_STRETCH_SEARCH_ROWS:
        spans = " and ".join(f"{b - a:.3g} s" for a, b in pieces)
        raise InvalidArgumentError(
            f"the stretch's pieces ({spans} long) hold too few of the trace's rows ({n} over {period_s:.0f} s) for "
            f"{rate_rps:.3g} rps even with {copies - 1} copies, and more would read over {MAX_STRETCH_SEARCH_ROWS} "
            f"rows: a piece is shorter than the trace's gaps; lengthen it (duration_s, pre_s) or lower the rate",
            span_s=period_s, rate_rps=rate_rps, copies=copies, rows_read=read)


def _circular_stretch(arrival_s: np.ndarray, period_s: float, offset_s: float, length_s: float, rate_rps: float,
                      rng: np.random.Generator, split_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Arrivals (relative, in [0, length_s)) and row indices of a stretch of a one-model trace (``arrival_s`` in
    [0, period_s), sorted) read circularly from ``offset_s`` (wrapping as often as ``length_s`` needs), thinned,
    or overlaid with copies read from spread offsets, to ``rate_rps`` on average: over [0, split_s) and over
    [split_s, length_s) each (a warm-up and its replay), every row the copies cover there kept with one
    probability, so the stretch's own density sets it (found in review: thinning by the whole trace's mean rate
    gave stretches of uneven density uneven loads, breaking the power law's order). Copies are other parts of
    the trace, so a model above the trace's rate sums independent stretches, whose bursts partly average out
    (bench/simulate/README.md, "Presets")."""
    n = len(arrival_s)
    if n == 0:
        raise ValueError("an empty trace cannot be replayed")
    check_stretch_args(period_s, offset_s, length_s, rate_rps, split_s)
    pieces = [(0.0, split_s), (split_s, length_s)] if 0.0 < split_s < length_s else [(0.0, length_s)]
    wraps = math.ceil(length_s / period_s)
    copies = max(1, math.ceil(rate_rps / (n / period_s)))
    read = 0  # rows the search's earlier passes read
    while True:
        _check_copies(n, period_s, wraps, rate_rps, copies, read, pieces)
        read += copies * n * wraps
        rels = []
        for j in range(copies):
            r = (arrival_s - (offset_s + j * period_s / copies)) % period_s
            rels.append(np.concatenate([r + w * period_s for w in range(wraps)]))
        covered = [sum(int(np.count_nonzero((r >= a) & (r < b))) for r in rels) for a, b in pieces]
        if all(c >= rate_rps * (b - a) for c, (a, b) in zip(covered, pieces)):
            break
        copies += 1  # a sparse stretch cannot carry its share of the rate: one copy more (each adds rows)
    rows = np.tile(np.arange(n), wraps)
    ts, idx = [], []
    for rel in rels:
        keep = np.zeros(len(rel))
        for c, (a, b) in zip(covered, pieces):
            keep[(rel >= a) & (rel < b)] = rate_rps * (b - a) / c
        pick = np.nonzero(rng.random(len(rel)) < keep)[0]
        ts.append(rel[pick])
        idx.append(rows[pick])
    t = np.concatenate(ts)
    i = np.concatenate(idx)
    order = np.argsort(t, kind="stable")
    return t[order], i[order]


#: the largest burst CV the recipes take. Above a CV of about 8 a Gamma draw of shape 1/cv^2 underflows to 0 often
#: enough that all of a small segment's draws can (cv 30: 44% of draws; cv 100: 93%), which gave 0/0 = NaN arrival
#: times (found in review: the recipes then dropped them without a word); ``regamma`` redraws such a segment in log
#: space, so every CV up to this one is sound. Beyond it a segment is one burst all the same (the realised CV of n
#: gaps cannot pass sqrt(n)), so a larger one is a mistake, not more burstiness
MAX_BURST_CV = 100.0


def check_burst_cv(cv: float) -> None:
    """Raise InvalidArgumentError unless ``cv`` is a finite burst CV in (0, ``MAX_BURST_CV``]."""
    if not (math.isfinite(cv) and 0 < cv <= MAX_BURST_CV):  # nan too
        why = "must be > 0" if not cv > 0 else f"must be finite and at most {MAX_BURST_CV:g}"
        raise InvalidArgumentError(f"burst cv {why}, got {cv:g}: give a CV in (0, {MAX_BURST_CV:g}] (1: Poisson; a "
                                   f"larger one bunches a segment into one burst all the same), or None for the "
                                   f"trace's own inter-arrivals", burst_cv=cv)


def regamma(arrival_s: np.ndarray, start_s: float, end_s: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """The burstiness knob: same number of arrivals over [start_s, end_s), inter-arrival times re-drawn from a
    Gamma distribution with coefficient of variation ``cv`` (1 is Poisson; at most ``MAX_BURST_CV``) and mean
    (end-start)/n."""
    n = len(arrival_s)
    if n == 0:
        return arrival_s
    check_burst_cv(cv)
    shape = 1.0 / (cv * cv)
    iat = rng.gamma(shape, 1.0, n + 1)
    total = iat.sum()
    if not total >= np.finfo(np.float64).tiny:
        # every draw underflowed (to 0 or subnormals: a few arrivals at a large CV): redraw in log space, as
        # Gamma(a) = Gamma(a + 1) * U^(1/a), and scale by the largest gap (found in review: 0/0 gave NaN times).
        # Only here, so that draws which were sound, and the results built on them, stay as they were
        log_iat = np.log(rng.gamma(shape + 1.0, 1.0, n + 1)) + np.log(1.0 - rng.random(n + 1)) / shape  # U in (0, 1]
        iat = np.exp(log_iat - log_iat.max())
        total = iat.sum()
    t = np.cumsum(iat)[:n] / total * (end_s - start_s) + start_s
    return np.minimum(t, np.nextafter(end_s, start_s))


def _segments(duration_s: float, pre_s: float, history_days: int, day_s: float):
    """(start, end, day offset) of every span a model needs, replay first: then the pre-replay stretch, then
    earlier days. The day is given, not inferred from the start (found in review: rounding the start to the
    nearest day put a pre_s over half a day on the day before, so ``time_scale`` moved that stretch a day)."""
    segs = [(0.0, duration_s, 0.0)]
    if pre_s > 0:
        segs.append((-pre_s, 0.0, 0.0))
    for k in range(1, history_days + 1):
        segs.append((-k * day_s - pre_s, -k * day_s + duration_s, -k * day_s))
    return segs


def offered_rate_rps(meta: dict) -> float:
    """``meta["offered_rate_rps"]`` derived from a workload's other meta fields: its rate per second of trace time
    (the paper recipe's ``total_rate_rps``, the ServeGen one's ``expected_rate_rps``) over ``time_scale`` (1 when
    not recorded). The one definition, so that runs recorded before the field can be given it the same way."""
    for field in ("total_rate_rps", "expected_rate_rps"):
        if field in meta:
            return float(meta[field]) / float(meta.get("time_scale", 1.0))
    raise InvalidArgumentError(f"workload meta has neither total_rate_rps nor expected_rate_rps (keys "
                               f"{sorted(meta)}): not a recipe's meta, so no offered rate can be derived")


def _finish(name, models, parts, duration_s, pre_s, day_s, time_scale, clock0_s, meta, segs,
            known=None, days=None) -> Workload:
    """Merge the parts; ``time_scale`` stretches each part around its day offset (``days``, one per part, from
    ``_segments``; default every part on day 0), so history stays on whole days (the forecasts' daily season)
    while the load inside a segment plays faster or slower. ``meta`` holds the replay's rate per second of trace
    time (read by ``offered_rate_rps``); ``known``: the history's known pieces as (day offset of their segment,
    start, end), default every segment of ``segs`` (start, end, day) but the replay whole."""
    check_time_scale(duration_s, pre_s, time_scale)
    days = [0.0] * len(parts) if days is None else list(days)
    if len(days) != len(parts):
        raise ValueError(f"{len(days)} day offsets for {len(parts)} parts")
    if time_scale != 1.0:
        for p, d in zip(parts, days):
            p.arrival_s = d + (p.arrival_s - d) * time_scale
    for p in parts:
        # a NaN arrival is neither >= 0 nor < 0, so the split below put it in neither the replay nor the history
        # (found in review: requests dropped without a word); refuse it, and an infinite one, here
        bad = ~np.isfinite(p.arrival_s)
        if bad.any():
            raise InvalidArgumentError(
                f"workload {name!r}: {int(bad.sum())} of model {p.models[0]!r}'s {len(p)} arrival times are not "
                f"finite (burst_cv {meta.get('burst_cv')}, time_scale {time_scale:g}): give a burst_cv in (0, "
                f"{MAX_BURST_CV:g}] and a time_scale that keeps times finite", burst_cv=meta.get("burst_cv"),
                time_scale=time_scale)
    full = Trace.concat(models, parts)
    replay = full.select(full.arrival_s >= 0)
    history = full.select(full.arrival_s < 0)
    # the recipes' rates are per second of trace time; compressing time by s offers 1/s times as many per second
    meta = dict(meta, time_scale=time_scale)
    meta["offered_rate_rps"] = offered_rate_rps(meta)
    # what the draws gave, per second of trace time, next to what was asked (found in review: the two differed 2x)
    meta["realised_rate_rps"] = len(replay) / duration_s
    spans = []
    for d, a, b in known if known is not None else [(d, a, b) for a, b, d in segs[1:]]:
        spans.append((d + (a - d) * time_scale, d + (b - d) * time_scale))  # stretched like its segment's arrivals
    return Workload(name, replay, history, duration_s * time_scale, day_s, meta, warmup_s=pre_s * time_scale,
                    clock0_s=clock0_s, history_spans=sorted(spans))


def paper_workload(kind: str = "conv", n_models: int = 12, *, alpha: float = 1.0, total_rate_rps: float | None = None,
                   rate_scale: float = 1.0, duration_s: float = 1200.0, pre_s: float = 600.0, history_days: int = 3,
                   max_prompt_tokens: int = 1024, burst_cv: float | None = None, time_scale: float = 1.0,
                   model_names: list[str] | None = None, seed: int = 0, path: str | None = None,
                   day_s: float = DAY_S) -> Workload:
    """The paper's recipe on an Azure 2023 trace (``kind`` "conv" or "code").

    Model i gets share (i+1)^-alpha of the total rate (``total_rate_rps``, default: the trace's own mean rate,
    times ``rate_scale``), on average over each stretch. Each model replays a different stretch of the trace
    (offsets spread by the golden ratio from a rotation the seed draws, read circularly), after ``pre_s`` of
    warm-up read on from just before it. The trace covers under an hour, so it has no earlier days: a model's
    history days (warm-up lead and slot) are read from the rest of the trace (found in review: they overlapped
    the replay, so the forecasts saw the measured load minutes early), as a loop of its own (the days overlap one
    another), and backwards in time: a model whose replay needs a second copy (a rate above the trace's, or a
    locally sparse stretch: 18 of 105 models at or below the trace's rate over the presets' seeds 0-2) overlays
    copies from all over the trace, its history region among them, so such a model shares rows with its history,
    but at no fixed lead (the most common 1 s lead holds under 1% of the shared rows). History days carry the
    model's rate level and the trace's burst statistics, not a view of the replay.
    Different models' stretches may overlap. Prompts are cut to ``max_prompt_tokens`` (None, 0: no cap). With
    history days, (pre_s + duration_s) x time_scale past ``day_s`` is refused (history day 1 would overlap them).
    """
    if burst_cv is not None:  # before the work, and whether or not a segment has arrivals to re-draw
        check_burst_cv(burst_cv)
    check_rates_and_span("paper_workload", rate_scale=rate_scale, total_rate_rps=total_rate_rps,
                         duration_s=duration_s, pre_s=pre_s)
    check_time_scale(duration_s, pre_s, time_scale)
    cap = prompt_cap("paper_workload", max_prompt_tokens)
    check_history_room("paper_workload", duration_s, pre_s, history_days, day_s, time_scale, trace_days=False)
    src = load_azure(kind, path)
    names = list(model_names) if model_names else [f"{kind}-{i}" for i in range(n_models)]
    if len(names) != n_models:
        raise InvalidArgumentError(f"model_names has {len(names)} names for n_models={n_models}")
    total = (src.rate_rps() if total_rate_rps is None else float(total_rate_rps)) * rate_scale
    check_total_rate("paper_workload", total, rate_scale, duration_s=duration_s, pre_s=pre_s, history_days=history_days)
    shares = power_law_shares(n_models, alpha)
    rng = np.random.default_rng(seed)
    period = float(src.arrival_s[-1]) + 1e-6
    span = pre_s + duration_s  # a model's warm-up and replay: one stretch, so the load carries on across t = 0
    rest = period - span  # the trace outside it, where its history days come from
    if span > period:
        raise InvalidArgumentError(f"the {kind} trace covers {period:.0f} s: a replay of {duration_s:.0f} s after "
                                   f"{pre_s:.0f} s of warm-up does not fit: shorten duration_s or pre_s")
    if history_days and rest < duration_s:
        raise InvalidArgumentError(f"the {kind} trace covers {period:.0f} s: a replay of {duration_s:.0f} s after "
                                   f"{pre_s:.0f} s of warm-up leaves {rest:.0f} s of it for history days, which need "
                                   f"at least {duration_s:.0f} s: shorten duration_s or pre_s, or pass history_days=0")
    phi = (math.sqrt(5) - 1) / 2
    rot = rng.random() * period  # each seed replays its own stretches
    parts, days = [], []
    segs = _segments(duration_s, pre_s, history_days, day_s)
    hist_segs = [(a, d) for a, _, d in segs if d < 0]  # history day k: (its start, -k days)

    def add(name, t, idx, a, day):
        if burst_cv is not None:  # the lead (warm-up) and the slot each keep their number of arrivals
            t = np.concatenate([regamma(t[t < pre_s], 0.0, pre_s, burst_cv, rng),
                                regamma(t[t >= pre_s], pre_s, span, burst_cv, rng)])
        parts.append(Trace([name], t + a, np.zeros(len(t), np.int32),
                           src.prompt_tokens[idx] if cap is None else np.minimum(src.prompt_tokens[idx], cap),
                           src.output_tokens[idx]))
        days.append(day)

    for i, name in enumerate(names):
        base = (rot + i * phi * period) % period
        rate = total * shares[i]
        t, idx = _circular_stretch(src.arrival_s, period, base - pre_s, span, rate, rng, split_s=pre_s)
        add(name, t, idx, -pre_s, 0.0)  # the warm-up and the replay: one part, on day 0
        if not history_days:
            continue
        # history days: the rest of the trace, [base + duration_s, base - pre_s), as a loop of its own, read at
        # offsets spread by the golden ratio and backwards in time
        rel = (src.arrival_s - (base + duration_s)) % period
        inside = np.nonzero(rel < rest)[0]
        order = np.argsort(rel[inside], kind="stable")
        sub_t, sub_i = rel[inside][order], inside[order]
        for k, (a, day) in enumerate(hist_segs, 1):
            t, j = _circular_stretch(sub_t, rest, ((k - 1) * phi * rest) % rest, span, rate, rng,
                                     split_s=duration_s)  # read backwards below: the slot first
            # backwards: a model above the trace's rate overlays copies from all over the trace, its replay among
            # them, so only a reversed history shows no window of the replay at a fixed lead
            rev = np.minimum(span - t, np.nextafter(span, 0.0))
            back = np.argsort(rev, kind="stable")
            t, idx = rev[back], sub_i[j[back]]
            add(name, t, idx, a, day)
    meta = {"recipe": "paper", "kind": kind, "alpha": alpha, "total_rate_rps": total, "burst_cv": burst_cv,
            "shares": shares.tolist(), "seed": seed, "max_prompt_tokens": max_prompt_tokens,
            "source": trace_source(path)}
    # the Azure trace starts at 18:17 on its own clock (no zone given; azure.py reads it as UTC): replay from 18:15
    # (on the 5-minute window grid the forecasts use); whole days before it leave room for the history
    clock0 = (history_days + 1) * day_s + 18 * 3600 + 15 * 60
    return _finish(f"paper-{kind}", names, parts, duration_s, pre_s, day_s, time_scale, clock0, meta, segs,
                   days=days)


#: the start of ServeGen's last (14th) day, seconds after its first midnight
SERVEGEN_LAST_DAY_S = 13 * DAY_S


def servegen_series(n_models: int, models: tuple[str, ...] = sg.LANGUAGE_MODELS, path: str | None = None,
                    include_aggregates: bool = False, repeat_days: int = 0) -> list[sg.ClientWindows]:
    """The largest client series of the given ServeGen models, round-robin over models (so every model is
    represented), optionally preceded by each model's aggregate (all its clients together). With
    ``repeat_days`` > 0 and too few series, series are reused shifted by 1, 2, ... days (named ``...dK``)."""
    cw = sg.load_client_windows(path, models)
    by_model = {m: sorted((c for c in cw.values() if c.model == m), key=lambda c: -c.total_requests())
                for m in models}
    out: list[sg.ClientWindows] = []
    if include_aggregates:
        for m in models:
            out.append(_aggregate(m, by_model[m]))
    k = 0
    while len(out) < n_models and any(k < len(v) for v in by_model.values()):
        for m in models:
            if k < len(by_model[m]) and len(out) < n_models:
                out.append(by_model[m][k])
        k += 1
    if len(out) < n_models and not repeat_days:
        raise InvalidArgumentError(f"ServeGen data has {len(out)} series for models {models}, asked for {n_models}: "
                                   f"pass path= to the full client windows file, allow repeat_days, or ask for "
                                   f"fewer models")
    base, k = list(out), 1
    while len(out) < n_models and k <= repeat_days:
        # the same client k days earlier: a distinct, equally real load pattern
        for s in base[: n_models - len(out)]:
            out.append(sg.ClientWindows(s.model, s.client_id, s.t_s + k * DAY_S, s.rate_rps, s.cv, s.is_gamma,
                                        s.shape, s.scale, day_shift=k))
        k += 1
    if len(out) < n_models:
        raise InvalidArgumentError(f"ServeGen data has {len(base)} series (x{repeat_days + 1} with day shifts) for "
                                   f"models {models}, asked for {n_models}")
    return out[:n_models]


def _aggregate(model: str, clients: list[sg.ClientWindows]) -> sg.ClientWindows:
    """A model's aggregate series: its clients' windows concatenated (sampled client by client). With the
    vendored extract that is the sum of its largest clients only; pass the full file for the whole model."""
    cols = [np.concatenate([getattr(c, f) for c in clients]) for f in
            ("t_s", "rate_rps", "cv", "is_gamma", "shape", "scale")]
    order = np.argsort(cols[0], kind="stable")
    return sg.ClientWindows(model, -1, *(c[order] for c in cols))


def _clock(t_s: float) -> str:
    """ServeGen time (seconds from day 0's midnight) as "day D HH:MM"."""
    d, r = divmod(float(t_s), DAY_S)
    return f"day {int(d)} {int(r // 3600):02d}:{int(r % 3600 // 60):02d}"


@dataclass
class _SeriesData:
    """Where one series' ServeGen model has data: [lo_s, hi_s), and its gap windows' starts (shifted with the
    series)."""

    series: sg.ClientWindows
    lo_s: float
    hi_s: float
    gaps_s: np.ndarray


def _series_data(series: list[sg.ClientWindows]) -> list[_SeriesData]:
    gaps, spans = sg.data_gaps(), sg.data_spans()
    out = []
    for s in series:
        shift = s.day_shift * DAY_S
        if s.model in spans:
            lo, hi = spans[s.model]
            out.append(_SeriesData(s, lo + shift, hi + shift, gaps[s.model] + shift))
        else:  # a model the rates file does not know (a custom path=): its own windows bound it, no known gaps
            out.append(_SeriesData(s, float(s.t_s.min()), float(s.t_s.max()) + sg.WINDOW_S, np.zeros(0)))
    return out


def _gap_run(gaps_s: np.ndarray, t_s: float) -> tuple[float, float]:
    """The run of consecutive gap windows that holds the window starting at ``t_s``: [start, end)."""
    i = j = int(np.searchsorted(gaps_s, t_s))
    while i > 0 and gaps_s[i - 1] == gaps_s[i] - sg.WINDOW_S:
        i -= 1
    while j + 1 < len(gaps_s) and gaps_s[j + 1] == gaps_s[j] + sg.WINDOW_S:
        j += 1
    return float(gaps_s[i]), float(gaps_s[j]) + sg.WINDOW_S


def _replay_problem(data: list[_SeriesData], start_s: float, duration_s: float, pre_s: float,
                    history_days: int) -> tuple[str, dict] | None:
    """Why a replay from ``start_s`` cannot be built from these series (a message and its numbers), or None."""
    a, b = start_s - pre_s, start_s + duration_s  # the replay and its warm-up: both are replayed
    shift = max(d.series.day_shift for d in data)
    if a - (history_days + shift) * DAY_S < 0:
        need = (history_days + shift) * DAY_S + pre_s
        return (f"it leaves no room for {history_days} history days (+{shift} days of shifted series) and the "
                f"warm-up before it, which need start_s >= {need:.0f}", {"needs_start_s": need})
    for d in data:
        name = d.series.name + (f", its data shifted {d.series.day_shift} days" if d.series.day_shift else "")
        first = a - history_days * DAY_S
        if first < d.lo_s or b > d.hi_s:
            return (f"ServeGen model {d.series.model} has data from {_clock(d.lo_s)} to {_clock(d.hi_s)} only (series "
                    f"{name}), and the replay with its history needs {_clock(first)} to {_clock(b)}",
                    {"model": d.series.model, "data_span_s": (d.lo_s, d.hi_s)})
        k = int(np.searchsorted(d.gaps_s, a - sg.WINDOW_S, side="right"))
        if k < len(d.gaps_s) and d.gaps_s[k] < b:
            g0, g1 = _gap_run(d.gaps_s, d.gaps_s[k])
            return (f"ServeGen model {d.series.model} has a data gap from {_clock(g0)} to {_clock(g1)} (all its "
                    f"clients 0 or nearly: missing data, SOURCES.md; series {name}), inside the replay's "
                    f"{_clock(a)} to {_clock(b)} (warm-up included)", {"model": d.series.model, "gap_s": (g0, g1)})
    if not any(((d.series.t_s + sg.WINDOW_S > start_s) & (d.series.t_s < b)).any() for d in data):
        have = [(float(d.series.t_s.min()), float(d.series.t_s.max()) + sg.WINDOW_S) for d in data]
        lo, hi = min(x for x, _ in have), max(y for _, y in have)
        return (f"the {len(data)} series have no request from {_clock(start_s)} to {_clock(b)}: their windows with "
                f"traffic span {_clock(lo)} to {_clock(hi)}", {"traffic_span_s": (lo, hi)})
    return None


def _check_replay(data: list[_SeriesData], start_s: float, duration_s: float, pre_s: float,
                  history_days: int) -> None:
    """Raise InvalidArgumentError, with the nearest start on the same 10-minute phase that works, when the replay
    (warm-up included) leaves no room for its history days, runs outside a chosen model's data, into one of its
    data gaps (replayed as zero traffic, which it is not), or over no traffic at all (an empty workload)."""
    why = _replay_problem(data, start_s, duration_s, pre_s, history_days)
    if why is None:
        return
    msg, fields = why
    fix = None
    for k in range(1, int(15 * DAY_S / sg.WINDOW_S)):
        for c in (start_s + k * sg.WINDOW_S, start_s - k * sg.WINDOW_S):
            if c >= 0 and _replay_problem(data, c, duration_s, pre_s, history_days) is None:
                fix = c
                break
        if fix is not None:
            break
    hint = (f"start elsewhere, e.g. start_s={fix:.0f} ({_clock(fix)}; replay to {_clock(fix + duration_s)})"
            if fix is not None else f"no start fits: choose other models, or fewer history days than {history_days}")
    raise InvalidArgumentError(f"servegen_workload start_s={start_s:.0f} ({_clock(start_s)}), duration_s="
                               f"{duration_s:g}, pre_s={pre_s:g}: {msg}; {hint}", start_s=start_s,
                               suggested_start_s=fix, **fields)


def _history_holes(data: list[_SeriesData], start_s: float, segs) -> list[tuple[float, float, float]]:
    """Pieces of the history segments (relative to ``start_s``) inside a data gap of any chosen series, as
    (day offset of their segment, start, end), merged and sorted."""
    holes = []
    for a, b, day in segs[1:]:
        cut = []
        for d in data:
            for g in d.gaps_s[(d.gaps_s + sg.WINDOW_S > start_s + a) & (d.gaps_s < start_s + b)]:
                cut.append((float(max(g - start_s, a)), float(min(g + sg.WINDOW_S - start_s, b))))
        for lo, hi in sorted(cut):
            if holes and holes[-1][0] == day and lo <= holes[-1][2]:
                holes[-1] = (day, holes[-1][1], max(holes[-1][2], hi))
            else:
                holes.append((day, lo, hi))
    return holes


def _known_pieces(segs, holes) -> list[tuple[float, float, float]]:
    """The history segments minus the holes, as (day offset of their segment, start, end)."""
    out = []
    for a, b, day in segs[1:]:
        t = a
        for d, lo, hi in holes:
            if d == day:
                if lo > t:
                    out.append((day, t, lo))
                t = max(t, hi)
        if t < b:
            out.append((day, t, b))
    return out


def _regamma_windows(t: np.ndarray, a: float, b: float, cv: float, rng: np.random.Generator,
                     start_s: float) -> np.ndarray:
    """``regamma`` within each ServeGen window of [a, b) (relative to ``start_s``): the burstiness changes, every
    window keeps its count, so the published rate profile stays (one regamma over the span flattened it)."""
    bounds = np.concatenate([[a], sg.window_edges(start_s + a, start_s + b) - start_s, [b]])
    pieces = np.split(t, np.searchsorted(t, bounds[1:-1], side="left"))
    return np.concatenate([regamma(p, lo, hi, cv, rng) for p, lo, hi in zip(pieces, bounds[:-1], bounds[1:])])


#: seeds the draws ``_expected_rate`` estimates partly covered windows with
_COVER_SEED = 0x5E4E


def _expected_rate(series: list[sg.ClientWindows], start_s: float, duration_s: float, rate_scale: float,
                   total_rate_rps: float | None) -> tuple[float, float]:
    """(expected total rate over the replayed span at rate scale 1, the rate scale that makes it
    ``total_rate_rps``, or ``rate_scale`` without one). Each window's rate counts for the seconds of the span it
    covers (``sg.covered_s``: a window the span covers in part brings the share of its requests the sampler puts
    there), windows without a row carry no traffic, and an aggregate series' rows (one per client and window) add
    up. A window's share depends on its number of requests, so on the scale: found by iterating from the even
    share (at most 3 rounds, each with the same private draws, until the scale holds to 2%: a window's share
    is known to about that; a span of whole windows needs none)."""
    expected, scale = 0.0, rate_scale
    for rounds in range(4):
        rng = np.random.default_rng(_COVER_SEED)  # not the workload's: its draws stay as they were
        before, expected_before, expected, partial = scale, expected, 0.0, False
        for s in series:
            if rounds == 0:
                overlap = np.clip(np.minimum(s.t_s + sg.WINDOW_S, start_s + duration_s) - np.maximum(s.t_s, start_s),
                                  0.0, None)
            else:
                overlap = sg.covered_s(s, start_s, start_s + duration_s, scale, rng)
            partial |= bool(((overlap > 0) & (overlap < sg.WINDOW_S)).any())
            expected += float((s.rate_rps * overlap).sum()) / duration_s
        if rounds and expected <= 0:  # a scale too small for any request in the span: the last scale stands (found
            return expected_before, before  # in review: 0 here reset it to 1, an unscaled replay at 128 rps)
        scale = rate_scale * (total_rate_rps / expected if total_rate_rps is not None and expected > 0 else 1.0)
        if not partial or (rounds and abs(scale - before) <= 0.02 * before):
            break
    return expected, scale


def servegen_workload(n_models: int = 32, *, start_s: float = SERVEGEN_LAST_DAY_S + 20 * 3600,
                      duration_s: float = 1200.0, pre_s: float = 600.0, history_days: int = 7,
                      total_rate_rps: float | None = None, rate_scale: float = 1.0,
                      max_prompt_tokens: int | None = None, burst_cv: float | None = None, time_scale: float = 1.0,
                      models: tuple[str, ...] = sg.LANGUAGE_MODELS, include_aggregates: bool = False, seed: int = 0,
                      path: str | None = None, pmf_path: str | None = None, repeat_days: int = 0) -> Workload:
    """The ServeGen recipe: each client series (and optionally each model's aggregate) becomes a distinct
    model; arrivals from the published per-window Gamma/Weibull fits; token lengths from the published PMF of
    the ServeGen model the series belongs to; history from the same slot of earlier days.

    ``start_s`` is the replay start in ServeGen time (t=0 is local midnight of day 0; default day 13, 20:00).
    ``total_rate_rps`` rescales all series together so the replayed span's expected total rate is that value.
    ``burst_cv`` re-draws inter-arrivals within each 10-minute window (its count kept).

    ServeGen's data gaps (windows in which all of a model's clients are 0 or nearly, ``servegen.data_gaps``) are
    missing data: a replay (warm-up included) that touches one of a chosen series' gaps is refused with a start
    that works, and history windows in one are left out of the history and of ``history_spans`` (unknown, not
    zero) for every model, since the spans are the workload's, not per model (``meta["history_gaps_s"]``).
    A replay without room for its history days before it, outside a chosen model's data, or over no traffic at
    all, is refused the same way; with history days, so is a warm-up and replay longer than a day (times
    ``time_scale`` where above 1), which history day 1 would overlap (``recipe_args.check_history_room``)."""
    if burst_cv is not None:
        check_burst_cv(burst_cv)
    check_rates_and_span("servegen_workload", rate_scale=rate_scale, total_rate_rps=total_rate_rps,
                         duration_s=duration_s, pre_s=pre_s)
    check_time_scale(duration_s, pre_s, time_scale)
    cap = prompt_cap("servegen_workload", max_prompt_tokens)
    check_history_room("servegen_workload", duration_s, pre_s, history_days, DAY_S, time_scale, trace_days=True)
    series = servegen_series(n_models, models, path, include_aggregates, repeat_days)
    pmfs = sg.load_length_pmfs(pmf_path)
    no_pmf = sorted({s.model for s in series if (s.model, "input_tokens") not in pmfs
                     or (s.model, "output_tokens") not in pmfs})
    if no_pmf:  # found in review: a plain ValueError, after the replay's checks, naming no argument
        have = sorted({m for m, f in pmfs if f == "input_tokens" and (m, "output_tokens") in pmfs})
        raise InvalidArgumentError(f"servegen_workload models={tuple(models)}: no input/output token-length PMF for "
                                   f"ServeGen model(s) {', '.join(no_pmf)} in "
                                   f"{pmf_path or 'the vendored servegen_length_pmf_io.csv.gz'}: choose models among "
                                   f"{', '.join(have)}, or pass pmf_path= to a PMF file that has them",
                                   models=tuple(models), missing=no_pmf)
    data = _series_data(series)
    _check_replay(data, start_s, duration_s, pre_s, history_days)
    expected, scale = _expected_rate(series, start_s, duration_s, rate_scale, total_rate_rps)
    rng = np.random.default_rng(seed)
    names = [s.name for s in series]
    segs = _segments(duration_s, pre_s, history_days, DAY_S)
    check_request_budget("servegen_workload", sg.expected_draws(series, start_s, segs, scale), expected * scale,
                         duration_s=duration_s, pre_s=pre_s, history_days=history_days)
    holes = _history_holes(data, start_s, segs)
    parts, days = [], []
    for s in series:
        inp, out = pmfs[(s.model, "input_tokens")], pmfs[(s.model, "output_tokens")]  # checked above
        for a, b, day in segs:
            t = sg.sample_arrivals(s, start_s + a, start_s + b, scale, rng) - start_s
            if burst_cv is not None:
                t = _regamma_windows(t, a, b, burst_cv, rng, start_s)
            p = inp.sample(rng, len(t)) if cap is None else np.minimum(inp.sample(rng, len(t)), cap)
            tr = Trace([s.name], t, np.zeros(len(t), np.int32), p, out.sample(rng, len(t)))
            missing = np.zeros(len(t), bool)
            for _, lo, hi in holes:
                missing |= (t >= lo) & (t < hi)
            parts.append(tr.select(~missing) if missing.any() else tr)
            days.append(day)
    # in the replay's time, as _finish stretches the spans and the arrivals around their day
    gaps = [[d + (lo - d) * time_scale, d + (hi - d) * time_scale] for d, lo, hi in holes]
    meta = {"recipe": "servegen", "series": names, "start_s": start_s, "rate_scale": scale, "burst_cv": burst_cv,
            "seed": seed, "expected_rate_rps": expected * scale, "history_gaps_s": gaps,
            "source": "ServeGen (Xiang et al., arXiv:2505.09999; Apache-2.0), Alibaba Bailian"}
    return _finish("servegen", names, parts, duration_s, pre_s, DAY_S, time_scale, start_s, meta, segs,
                   known=_known_pieces(segs, holes), days=days)
