"""Multi-model workloads from single traces: the paper's power-law recipe and a ServeGen recipe.

Both return a ``Workload`` whose ``trace`` covers [0, duration_s) and whose ``history`` holds, for every model,
the same slot of ``history_days`` earlier days plus the ``pre_s`` seconds just before t=0: what the forecasts
learn from. Everything is drawn from one seeded ``numpy.random.Generator``, so a seed fixes the workload.
"""

from __future__ import annotations

import math

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.workload.azure import load_azure
from warmserve.workload.request import Trace, Workload
from warmserve.workload import servegen as sg

DAY_S = 86400.0


def power_law_shares(n_models: int, alpha: float) -> np.ndarray:
    """Share of model i proportional to (i+1)^-alpha, summing to 1."""
    if n_models < 1:
        raise InvalidArgumentError(f"need at least one model, got n_models={n_models}")
    w = (np.arange(n_models) + 1.0) ** -float(alpha)
    return w / w.sum()


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
    if n == 0 or period_s <= 0:
        raise ValueError("an empty trace cannot be replayed")
    pieces = [(0.0, split_s), (split_s, length_s)] if 0.0 < split_s < length_s else [(0.0, length_s)]
    wraps = math.ceil(length_s / period_s)
    copies = max(1, math.ceil(rate_rps / (n / period_s)))
    while True:
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


def regamma(arrival_s: np.ndarray, start_s: float, end_s: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """The burstiness knob: same number of arrivals over [start_s, end_s), inter-arrival times re-drawn from a
    Gamma distribution with coefficient of variation ``cv`` (1 is Poisson) and mean (end-start)/n."""
    n = len(arrival_s)
    if n == 0:
        return arrival_s
    if cv <= 0:
        raise InvalidArgumentError(f"burst cv must be > 0, got {cv}")
    shape = 1.0 / (cv * cv)
    iat = rng.gamma(shape, 1.0, n + 1)
    t = np.cumsum(iat)[:n] / iat.sum() * (end_s - start_s) + start_s
    return np.minimum(t, np.nextafter(end_s, start_s))


def _segments(duration_s: float, pre_s: float, history_days: int, day_s: float):
    """(start, end) of every span a model needs, replay first: then the pre-replay stretch, then earlier days."""
    segs = [(0.0, duration_s)]
    if pre_s > 0:
        segs.append((-pre_s, 0.0))
    for k in range(1, history_days + 1):
        segs.append((-k * day_s - pre_s, -k * day_s + duration_s))
    return segs


def _anchor(a: float, day_s: float) -> float:
    """The day offset a segment starting at ``a`` belongs to (0 for the replay and the pre-replay stretch)."""
    return -round(-a / day_s) * day_s if a < -day_s / 2 else 0.0


def _finish(name, models, parts, duration_s, pre_s, day_s, time_scale, clock0_s, meta, segs) -> Workload:
    """Merge the parts; ``time_scale`` stretches each segment around its day offset, so history stays on
    whole days (the forecasts' daily season) while the load inside a segment plays faster or slower."""
    if time_scale <= 0:
        raise InvalidArgumentError(f"time_scale must be > 0, got {time_scale}")
    if time_scale != 1.0:
        for p in parts:
            if len(p):
                d = _anchor(float(p.arrival_s[0]), day_s)
                p.arrival_s = d + (p.arrival_s - d) * time_scale
    full = Trace.concat(models, parts)
    replay = full.select(full.arrival_s >= 0)
    history = full.select(full.arrival_s < 0)
    meta = dict(meta, time_scale=time_scale)
    spans = []
    for a, b in segs[1:]:  # every segment but the replay, stretched like its arrivals
        d = _anchor(a, day_s)
        spans.append((d + (a - d) * time_scale, d + (b - d) * time_scale))
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
    Different models' stretches may overlap. Prompts are cut to ``max_prompt_tokens``.
    """
    src = load_azure(kind, path)
    names = list(model_names) if model_names else [f"{kind}-{i}" for i in range(n_models)]
    if len(names) != n_models:
        raise InvalidArgumentError(f"model_names has {len(names)} names for n_models={n_models}")
    total = (src.rate_rps() if total_rate_rps is None else float(total_rate_rps)) * rate_scale
    if total <= 0:
        raise InvalidArgumentError(f"total rate must be > 0, got {total} rps")
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
    parts = []
    segs = _segments(duration_s, pre_s, history_days, day_s)

    def add(name, t, idx, a):
        if burst_cv is not None:  # the lead (warm-up) and the slot each keep their number of arrivals
            t = np.concatenate([regamma(t[t < pre_s], 0.0, pre_s, burst_cv, rng),
                                regamma(t[t >= pre_s], pre_s, span, burst_cv, rng)])
        parts.append(Trace([name], t + a, np.zeros(len(t), np.int32),
                           np.minimum(src.prompt_tokens[idx], max_prompt_tokens), src.output_tokens[idx]))

    for i, name in enumerate(names):
        base = (rot + i * phi * period) % period
        rate = total * shares[i]
        t, idx = _circular_stretch(src.arrival_s, period, base - pre_s, span, rate, rng, split_s=pre_s)
        add(name, t, idx, -pre_s)
        if not history_days:
            continue
        # history days: the rest of the trace, [base + duration_s, base - pre_s), as a loop of its own, read at
        # offsets spread by the golden ratio and backwards in time
        rel = (src.arrival_s - (base + duration_s)) % period
        inside = np.nonzero(rel < rest)[0]
        order = np.argsort(rel[inside], kind="stable")
        sub_t, sub_i = rel[inside][order], inside[order]
        for k in range(1, history_days + 1):
            t, j = _circular_stretch(sub_t, rest, ((k - 1) * phi * rest) % rest, span, rate, rng,
                                     split_s=duration_s)  # read backwards below: the slot first
            # backwards: a model above the trace's rate overlays copies from all over the trace, its replay among
            # them, so only a reversed history shows no window of the replay at a fixed lead
            rev = np.minimum(span - t, np.nextafter(span, 0.0))
            back = np.argsort(rev, kind="stable")
            t, idx = rev[back], sub_i[j[back]]
            add(name, t, idx, -k * day_s - pre_s)
    meta = {"recipe": "paper", "kind": kind, "alpha": alpha, "total_rate_rps": total, "burst_cv": burst_cv,
            "shares": shares.tolist(), "seed": seed, "max_prompt_tokens": max_prompt_tokens,
            "source": "Azure LLM inference trace 2023 (Patel et al., Splitwise, ISCA 2024; CC-BY 4.0)"}
    # the Azure trace starts at 18:17 local time: replay from 18:15 (on the 5-minute window grid the forecasts
    # use); whole days before it leave room for the history
    clock0 = (history_days + 1) * day_s + 18 * 3600 + 15 * 60
    return _finish(f"paper-{kind}", names, parts, duration_s, pre_s, day_s, time_scale, clock0, meta, segs)


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


def servegen_workload(n_models: int = 32, *, start_s: float = SERVEGEN_LAST_DAY_S + 20 * 3600,
                      duration_s: float = 1200.0, pre_s: float = 600.0, history_days: int = 7, total_rate_rps: float | None = None,
                      rate_scale: float = 1.0, max_prompt_tokens: int | None = None, burst_cv: float | None = None,
                      time_scale: float = 1.0, models: tuple[str, ...] = sg.LANGUAGE_MODELS,
                      include_aggregates: bool = False, seed: int = 0, path: str | None = None,
                      pmf_path: str | None = None, repeat_days: int = 0) -> Workload:
    """The ServeGen recipe: each client series (and optionally each model's aggregate) becomes a distinct
    model; arrivals from the published per-window Gamma/Weibull fits; token lengths from the published PMF of
    the ServeGen model the series belongs to; history from the same slot of earlier days.

    ``start_s`` is the replay start in ServeGen time (t=0 is local midnight of day 0; default day 13, 20:00).
    ``total_rate_rps`` rescales all series together so the replayed span's expected total rate is that value.
    """
    series = servegen_series(n_models, models, path, include_aggregates, repeat_days)
    if history_days < 0:
        raise InvalidArgumentError(f"history_days must be >= 0, got {history_days}")
    shift = max((s.day_shift for s in series), default=0)
    if start_s - (history_days + shift) * DAY_S - pre_s < 0:
        raise InvalidArgumentError(f"start_s={start_s} leaves no room for {history_days} history days (+{shift} "
                                   f"days of shifted series) and pre_s={pre_s:g} s of warm-up: it needs start_s >= "
                                   f"{(history_days + shift) * DAY_S + pre_s:.0f}; start later or give fewer history "
                                   f"days")
    # expected total rate over the replayed span: each window's rate counts for the part of the span it covers
    # (a window half inside brings half its requests), windows without a row carry no traffic, and an aggregate
    # series' rows (one per client and window) add up
    expected = 0.0
    for s in series:
        overlap = np.minimum(s.t_s + sg.WINDOW_S, start_s + duration_s) - np.maximum(s.t_s, start_s)
        expected += float((s.rate_rps * np.clip(overlap, 0.0, None)).sum()) / duration_s
    scale = rate_scale * (total_rate_rps / expected if total_rate_rps is not None and expected > 0 else 1.0)
    pmfs = sg.load_length_pmfs(pmf_path)
    rng = np.random.default_rng(seed)
    names = [s.name for s in series]
    parts = []
    for s in series:
        inp, out = pmfs.get((s.model, "input_tokens")), pmfs.get((s.model, "output_tokens"))
        if inp is None or out is None:
            raise ValueError(f"no input/output token PMF for ServeGen model {s.model!r}")
        for a, b in _segments(duration_s, pre_s, history_days, DAY_S):
            t = sg.sample_arrivals(s, start_s + a, start_s + b, scale, rng) - start_s
            if burst_cv is not None:
                t = regamma(t, a, b, burst_cv, rng)
            p = inp.sample(rng, len(t))
            if max_prompt_tokens:
                p = np.minimum(p, max_prompt_tokens)
            parts.append(Trace([s.name], t, np.zeros(len(t), np.int32), p, out.sample(rng, len(t))))
    meta = {"recipe": "servegen", "series": names, "start_s": start_s, "rate_scale": scale, "burst_cv": burst_cv,
            "seed": seed, "expected_rate_rps": expected * scale,
            "source": "ServeGen (Xiang et al., arXiv:2505.09999; Apache-2.0), Alibaba Bailian"}
    segs = _segments(duration_s, pre_s, history_days, DAY_S)
    return _finish("servegen", names, parts, duration_s, pre_s, DAY_S, time_scale, start_s, meta, segs)
