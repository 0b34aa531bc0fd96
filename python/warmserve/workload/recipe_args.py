"""Checks the recipes (``recipes.paper_workload``, ``recipes.servegen_workload``) run on their arguments before any
work: each raises ``InvalidArgumentError`` naming the argument, its value and the fix."""

from __future__ import annotations

import math

from warmserve.errors import InvalidArgumentError


def check_rates_and_span(fn: str, *, rate_scale: float, total_rate_rps: float | None, duration_s: float,
                         pre_s: float) -> None:
    """rate_scale, total_rate_rps (None: the recipe's own) and duration_s finite and > 0, pre_s finite and >= 0.
    Found in review: a rate <= 0 or NaN gave an empty workload without a word, a duration_s of 0 a
    ZeroDivisionError and a NaN one "cannot convert float NaN to integer"."""
    for name, value, low in (("rate_scale", rate_scale, None), ("total_rate_rps", total_rate_rps, None),
                             ("duration_s", duration_s, None), ("pre_s", pre_s, 0.0)):
        if value is None and name == "total_rate_rps":
            continue
        v = float(value)
        if math.isfinite(v) and (v > 0 if low is None else v >= low):
            continue
        want = "> 0" if low is None else ">= 0"
        eg = {"rate_scale": "1 (as published)", "total_rate_rps": "24, or None for the trace's own rate",
              "duration_s": "1200", "pre_s": "600, or 0 for no warm-up"}[name]
        raise InvalidArgumentError(f"{fn} {name}={v:g}: must be a finite number {want}, e.g. {eg}", **{name: v})


def check_time_scale(duration_s: float, pre_s: float, time_scale: float) -> None:
    """time_scale finite, > 0, and keeping the stretched workload a finite float. Found in review: nan made an empty
    workload; inf an OverflowError in the simulator's driver, as does a finite one that scales the span past a
    float."""
    if not (math.isfinite(time_scale) and time_scale > 0 and math.isfinite((duration_s + pre_s) * time_scale)):
        why = ("must be > 0" if not time_scale > 0 else "must be finite" if not math.isfinite(time_scale)
               else f"stretches the {duration_s + pre_s:g} s workload past any float")
        raise InvalidArgumentError(f"time_scale {why}, got {time_scale:g}: give a finite factor > 0 (1: as traced; "
                                   f"--time-scale)", time_scale=time_scale, flag="--time-scale")


def check_history_room(fn: str, duration_s: float, pre_s: float, history_days: int, day_s: float,
                       time_scale: float, *, trace_days: bool) -> None:
    """Refuse history days that would overlap the warm-up and the replay. History day k covers [-k day - pre_s,
    -k day + duration_s), stretched by ``time_scale`` around its day, so once (pre_s + duration_s) x time_scale
    passes a day it reaches the warm-up and the replay and is sampled on top of them (found in review: the replay
    of `simulate --workload servegen --duration-s 36000 --time-scale 2.5` went from 288,010 to 305,275 requests).
    ``trace_days``: history day k is read from the trace a day before the replay (the ServeGen recipe), so
    pre_s + duration_s past a day also overlaps in trace time, whatever the time_scale: history day 1 would
    re-draw the warm-up's and the replay's own windows (the paper recipe reads its history days elsewhere)."""
    if history_days < 0:
        raise InvalidArgumentError(f"history_days must be >= 0, got {history_days}")
    if history_days == 0:
        return
    trace_s = duration_s + pre_s
    stretch = max(time_scale, 1.0) if trace_days else time_scale
    if trace_s * stretch <= day_s:
        return
    if trace_s * time_scale > day_s:
        what = (f"span {trace_s * time_scale:.0f} s, more than a day ({day_s:.0f} s): history day 1 ([-day - pre_s, "
                f"-day + duration_s), stretched around its day like them) would overlap the warm-up and the replay, "
                f"sampling them twice and making history requests measured ones")
    else:
        what = (f"are more than a day ({day_s:.0f} s) of trace: history day 1, read from the day "
                f"before, would overlap the warm-up and the replay in trace time, re-drawing their own windows as "
                f"history (the forecasts would see the replay's load)")
    max_ts = day_s / trace_s
    fix = (f"a time_scale of at most {max_ts:.4g} (--time-scale), " if not trace_days or max_ts >= 1.0 else "")
    raise InvalidArgumentError(
        f"{fn} history_days={history_days}: at time_scale {time_scale:g} the warm-up and the replay (pre_s "
        f"{pre_s:g} + duration_s {duration_s:g} = {trace_s:.0f} s of trace) {what}; give {fix}a duration_s and "
        f"pre_s of at most {day_s / stretch:.0f} s together (--duration-s), or history_days=0 "
        f"(--history-days 0)", history_days=history_days, duration_s=duration_s, pre_s=pre_s,
        time_scale=time_scale, span_s=trace_s * stretch, day_s=day_s, max_time_scale=max_ts)


def check_stretch_args(period_s: float, offset_s: float, length_s: float, rate_rps: float, split_s: float) -> None:
    """The numbers ``recipes._circular_stretch`` reads a trace by: the trace's period and the stretch's length
    finite and > 0, its offset and split finite, its rate finite and >= 0. Found in review, on direct calls (the
    recipes pass checked values): a NaN or infinite rate, length or period ended in "cannot convert float NaN to
    integer", an OverflowError or a ZeroDivisionError; a zero length in numpy's "need at least one array"; and a
    NaN offset put no row in the stretch, so the search for copies that cover it added one copy at a time up to
    its limit, re-reading every copy each time (minutes)."""
    for name, value, low in (("period_s", period_s, "> 0"), ("length_s", length_s, "> 0"),
                             ("rate_rps", rate_rps, ">= 0"), ("offset_s", offset_s, None),
                             ("split_s", split_s, None)):
        v = float(value)
        if math.isfinite(v) and (low is None or (v > 0 if low == "> 0" else v >= 0)):
            continue
        raise InvalidArgumentError(f"circular stretch {name}={v:g}: must be a finite number{' ' + low if low else ''}",
                                   **{name: v})


#: the most requests a recipe draws (warm-up, replay and history days together). Found in review: `warmserve bench
#: replay --rate 1e5 --duration-s 3600 --history-days 0` drew arrivals until memory ran out (a MemoryError at 3 GB
#: for ~4e8 requests), as did the recipes called with such a rate; `warmserve simulate` refuses its runs earlier,
#: at half this (``sim.cli_checks.MAX_REQUESTS``, on its own estimate, which this exact count must not undercut)
MAX_WORKLOAD_REQUESTS = 20_000_000


def check_request_budget(fn: str, expected: float, rate_rps: float, *, duration_s: float, pre_s: float,
                         history_days: int) -> None:
    """Refuse a workload of about ``expected`` requests (its warm-up, replay and history days at ``rate_rps``, its
    total rate per second of trace time) above ``MAX_WORKLOAD_REQUESTS``, before any is drawn."""
    if expected <= MAX_WORKLOAD_REQUESTS:
        return
    most = rate_rps * MAX_WORKLOAD_REQUESTS / expected
    raise InvalidArgumentError(
        f"{fn}: a total rate of {rate_rps:.3g} requests/s over the warm-up and replay (pre_s {pre_s:g} + duration_s "
        f"{duration_s:g} s) and {history_days} history days would draw about {expected:.3g} requests, more than a "
        f"workload holds ({MAX_WORKLOAD_REQUESTS:.0e}): give a total rate of at most {most:.3g} requests/s here "
        f"(total_rate_rps, rate_scale; `bench replay --rate`: that / --time-scale), or a shorter duration_s "
        f"(--duration-s) or fewer history_days (--history-days)", expected_requests=expected,
        limit=MAX_WORKLOAD_REQUESTS, rate_rps=rate_rps, max_rate_rps=most)


def check_total_rate(fn: str, total: float, rate_scale: float, *, duration_s: float, pre_s: float,
                     history_days: int) -> None:
    """The paper recipe's total rate (``total_rate_rps`` or the trace's own, times ``rate_scale``): finite, > 0 (NaN
    passed `total <= 0` and failed later, naming nothing), and within ``check_request_budget``."""
    if not (math.isfinite(total) and total > 0):
        raise InvalidArgumentError(f"total rate must be a finite number > 0, got {total} rps (rate scale "
                                   f"{rate_scale})", total_rate_rps=total, rate_scale=rate_scale)
    check_request_budget(fn, total * (pre_s + duration_s) * (1 + history_days), total, duration_s=duration_s,
                         pre_s=pre_s, history_days=history_days)


def prompt_cap(fn: str, max_prompt_tokens) -> int | None:
    """The prompt cap of a recipe: a whole number of tokens, None or 0 for none (found in review:
    paper_workload read 0 as "cut every prompt to 0 tokens" where servegen_workload read it as no cap, and a
    negative cap made negative prompts in both)."""
    if max_prompt_tokens is None:
        return None
    if isinstance(max_prompt_tokens, bool) or not float(max_prompt_tokens).is_integer() or max_prompt_tokens < 0:
        raise InvalidArgumentError(f"{fn} max_prompt_tokens={max_prompt_tokens!r}: must be a whole number of tokens "
                                   f">= 1, or 0 or None for no cap (1024: the paper's cap; --max-prompt-tokens)",
                                   max_prompt_tokens=max_prompt_tokens)
    return int(max_prompt_tokens) or None
