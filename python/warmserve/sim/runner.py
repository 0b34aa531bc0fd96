"""Run policies over a preset: one run at the preset's rate, and the search for the highest rate under the SLO."""

from __future__ import annotations

import math

from warmserve.errors import InvalidArgumentError
from warmserve.sim.cli_checks import MAX_REQUESTS, search_scale_cap
from warmserve.sim.config import SimConfig
from warmserve.sim.costmodel import CostModel
from warmserve.sim.metrics import RunResult
from warmserve.sim.presets import Preset
from warmserve.sim.simulator import simulate

#: the highest rate scale the max-rate search runs (``max_rate_under_slo``'s ``hi``), below the request budget
SEARCH_HI = 16.0


def policy_names() -> tuple[str, ...]:
    from warmserve.policy import POLICY_NAMES

    return POLICY_NAMES


def resolve(name: str, config: SimConfig) -> tuple[str, SimConfig]:
    """Check a policy name (one of the registry's ``POLICY_NAMES``); returns it and ``config`` as they are (every
    variant is registered in the policy core, so a name needs no config of its own)."""
    from warmserve.policy import POLICY_NAMES

    if name not in POLICY_NAMES:
        raise InvalidArgumentError(f"unknown policy {name!r}: choose from {', '.join(policy_names())}", policy=name)
    return name, config


class _SimBar:
    """A tqdm bar over simulated seconds. The drain after the last arrival can run past the total; tqdm then
    drops the total (None) and the bar format fails on it, so progress stops at the total. ``desc``: where the run
    begins with a layout search (``searching``), the description after it; the bar says so until then, and its
    clock starts at the run (found in review: `shared` sat at 0% through its ~40 s search, then showed a 21-minute
    ETA)."""

    def __init__(self, bar, desc: str | None = None):
        self.bar, self.desc = bar, desc

    def update(self, dt_s: float) -> None:
        if self.desc is not None:  # the first simulated seconds: the search is over
            self.bar.set_description_str(self.desc, refresh=False)
            self.bar.reset(total=self.bar.total)
            self.desc = None
        self.bar.update(max(min(dt_s, self.bar.total - self.bar.n), 0.0))

    def close(self) -> None:
        self.bar.close()


def _bar(total_s: float, desc: str, enabled: bool, searching: bool = False):
    """The progress bar of one run (None where not ``enabled``); ``searching``: the run first searches a layout
    (`shared`, `dedicated`: ``Simulator._choose_static_layout``)."""
    from warmserve.extras import progress_bar

    fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} sim-s [{elapsed}<{remaining}]"
    shown = f"{desc} (searching its layout)" if searching else desc
    # None without tqdm, which comes with the bench extra (found in review: where it was absent, `simulate` raised
    # ModuleNotFoundError here unless --quiet)
    bar = progress_bar(enabled, total=round(total_s), desc=shown, unit="sim-s", leave=False, dynamic_ncols=True,
                       bar_format=fmt)
    return None if bar is None else _SimBar(bar, desc if searching else None)


def run_once(preset: Preset, policy: str, *, rate_scale: float = 1.0, seed: int = 0, cost: CostModel | None = None,
             progress: bool = False, workload=None) -> RunResult:
    resolve(policy, preset.config)
    w = workload if workload is not None else preset.build(rate_scale, seed)
    searching = preset.config.shared_search and policy in ("shared", "dedicated")
    bar = _bar(w.duration_s + w.warmup_s, f"{policy} x{rate_scale:.3g}", progress, searching)
    try:
        r = simulate(w, preset.models, policy, config=preset.config, cost=cost, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    r.policy = policy
    r.summary["offered_rate_rps"] = len(w.trace) / w.duration_s
    return r


def band_policies(policies) -> list[str]:
    """The policies whose results depend on the engine-initialisation time of a cold start: those whose engines
    are not started ahead (``warm_engine`` off: `autoscale`), the ones a rate sweep draws as a cold-start band."""
    from warmserve.policy.registry import POLICIES

    return [p for p in policies if POLICIES[p].overrides.get("warm_engine", True) is False]


def _point(runs: list[RunResult], scale: float, seeds: list[int]) -> dict:
    """One rate of a sweep: medians over the seeds (P99, P50, GPU-s), the mean SLO attainment (as the max-rate
    search judges a rate) and the mean offered rate, with the per-seed values beside them."""
    import statistics

    p99 = [r.summary["ttft_p99_s"] for r in runs]
    att = [r.summary["slo_attainment"] for r in runs]
    return {"rate_scale": scale,
            "offered_rate_rps": sum(r.summary["offered_rate_rps"] for r in runs) / len(runs),
            "ttft_p99_s": statistics.median(p99),
            "ttft_p50_s": statistics.median(r.summary["ttft_p50_s"] for r in runs),
            "slo_attainment": sum(att) / len(att),
            "gpu_seconds": statistics.median(r.summary["gpu_seconds"] for r in runs),
            "unanswered": statistics.median(r.summary["unanswered"] for r in runs),
            "ttft_p99_s_per_seed": p99, "slo_attainment_per_seed": att, "seeds": list(seeds)}


def highest_rate_meeting(points: list[dict], target: float) -> float:
    """The highest offered rate of a sweep at which the mean SLO attainment reaches ``target`` with every lower
    swept rate reaching it too (0 when the lowest fails): the sweep's coarse max rate under the SLO. A NaN
    attainment (a seed that replayed no request) fails, as in ``max_rate_under_slo``."""
    best = 0.0
    for pt in sorted(points, key=lambda x: x["offered_rate_rps"]):
        # found in review: `NaN < target` is False, so a NaN point passed; `>= target` is the search's own test
        if not pt["slo_attainment"] >= target:
            break
        best = pt["offered_rate_rps"]
    return best


def swept_rate_is_lower_bound(points: list[dict], target: float) -> bool:
    """Whether a sweep's ``highest_rate_meeting`` is only a lower bound: every swept rate, the highest too, meets
    ``target``, so the max rate under the SLO lies at or above the highest swept one, as a ``max_rate_under_slo``
    that meets it at ``hi`` (found in review: shown as the maximum, in the sweep's table and JSON). False where a
    rate fails (NaN too) or none was swept."""
    return bool(points) and all(pt["slo_attainment"] >= target for pt in points)


def rate_sweep(preset: Preset, policies: list[str], scales: list[float], *, seeds: list[int],
               cost: CostModel | None = None, band_cold_start_s: tuple[float, float] | None = None,
               target: float = 0.99, progress: bool = False, on_scale=None) -> dict:
    """P99 TTFT and SLO attainment of every policy at every rate scale (ascending), each over ``seeds``.
    ``on_scale(sweep)``: called after each rate scale with the sweep so far (its ``rate_scales`` those done), so
    that a caller can keep what an interrupted sweep measured.

    With ``band_cold_start_s`` = (low, high), the policies of ``band_policies`` also run with the engine part of a
    cold start set to each end (``CostModel.with_cold_start_s``), stored under ``cold_start_band``. Workloads are
    built once per (scale, seed) and shared by the policies. Returns the JSON-ready sweep."""
    from warmserve.extras import progress_bar

    scales = sorted(float(x) for x in scales)
    if not scales or scales[0] <= 0:
        raise InvalidArgumentError(f"rate scales must be > 0, got {scales}", scales=scales)
    cost = cost or CostModel.for_gpu(preset.config.gpu)
    banded = band_policies(policies) if band_cold_start_s else []
    n_runs = len(scales) * len(seeds) * (len(policies) + 2 * len(banded))
    bar = progress_bar(progress, total=n_runs, desc=f"sweep {preset.name}", unit="run", leave=False)
    out = {p: {"points": []} for p in policies}
    band = {p: {"cold_start_s": list(band_cold_start_s), "low": [], "high": []} for p in banded}

    def sweep(done: list[float]) -> dict:
        pols = {}
        for p in policies:
            pols[p] = {"points": out[p]["points"],
                       "max_swept_rate_under_slo_rps": highest_rate_meeting(out[p]["points"], target),
                       "max_swept_rate_is_lower_bound": swept_rate_is_lower_bound(out[p]["points"], target)}
            if p in band:
                pols[p]["cold_start_band"] = band[p]
        return {"rate_scales": done, "seeds": list(seeds), "slo_target": target,
                "engine_init_s": cost.engine_init_s, "policies": pols}

    try:
        for k, scale in enumerate(scales):
            workloads = {sd: preset.build(scale, sd) for sd in seeds}
            variants = [(p, cost, out[p]["points"]) for p in policies]
            for p in banded:
                variants += [(p, cost.with_cold_start_s(band_cold_start_s[0]), band[p]["low"]),
                             (p, cost.with_cold_start_s(band_cold_start_s[1]), band[p]["high"])]
            for pol, c, dest in variants:
                if dest is not out[pol]["points"] and c == cost:  # a band end equal to the main cost: same runs
                    dest.append(out[pol]["points"][-1])
                    if bar is not None:
                        bar.update(len(seeds))
                    continue
                runs = []
                for sd in seeds:
                    runs.append(run_once(preset, pol, rate_scale=scale, seed=sd, cost=c, workload=workloads[sd]))
                    if bar is not None:
                        bar.update(1)
                dest.append(_point(runs, scale, seeds))
            if on_scale is not None:
                on_scale(sweep(scales[:k + 1]))
    finally:
        if bar is not None:
            bar.close()
    return sweep(scales)


def max_rate_under_slo(preset: Preset, policy: str, *, target: float = 0.99, seed: int | list[int] = 0,
                       cost: CostModel | None = None, iters: int = 5, lo: float = 1 / 64, hi: float = SEARCH_HI,
                       progress: bool = False, cache: dict | None = None) -> tuple[float, list[dict], bool]:
    """The highest offered rate (requests/s over the replayed span) at which ``target`` of the requests meet
    the TTFT SLO, searched over the preset's rate scale: doubling/halving from 1 to bracket it, then bisection
    in log space. With several seeds, a rate passes when the mean attainment over the seeds reaches ``target``
    and the rate reported is the mean offered rate. Returns (rate, the runs tried, whether the rate is only a lower
    bound: the SLO was still met where the search stops, ``hi`` or the largest scale within the simulator's
    request budget, ``cli_checks.search_scale_cap``, whichever is lower). 0 when even ``lo`` fails.

    No scale whose workload would be over ``MAX_REQUESTS`` runs (found in review: the doubling ran 4x-16x of a
    1,024-GPU preset, up to 5.9e7 requests, which `simulate` refuses at --rate-scale); InvalidArgumentError where
    even the first, scale 1, would."""
    cap = search_scale_cap(preset)
    top = min(hi, cap)
    if cap < 1.0:
        raise InvalidArgumentError(
            f"{policy}: the max-rate search starts at rate scale 1, which would generate about "
            f"{preset.expected_requests(1.0):.3g} requests, more than the simulator takes ({MAX_REQUESTS:.0e}): "
            f"skip the search (`warmserve simulate --no-search`) or lower the rate or the duration",
            expected_requests=preset.expected_requests(1.0), limit=MAX_REQUESTS)
    tried: list[dict] = []
    cache = {} if cache is None else cache
    seeds = [seed] if isinstance(seed, int) else list(seed)

    def ok(scale: float) -> bool:
        key = (policy, round(scale, 9))
        if key not in cache:
            att, rate = [], []
            for sd in seeds:
                r = run_once(preset, policy, rate_scale=scale, seed=sd, cost=cost, progress=progress)
                att.append(r.summary["slo_attainment"])
                rate.append(r.summary["offered_rate_rps"])
            cache[key] = (sum(att) / len(att), sum(rate) / len(rate))
            tried.append({"rate_scale": scale, "offered_rate_rps": cache[key][1], "slo_attainment": cache[key][0],
                          "slo_attainment_per_seed": att})
        return cache[key][0] >= target

    s = 1.0
    if ok(s):
        good, bad = s, None
        while s < top:
            s = min(s * 2, top)  # the powers of 2 up to hi, unless the budget stops the search below
            if ok(s):
                good = s
            else:
                bad = s
                break
        if bad is None:
            return cache[(policy, round(good, 9))][1], tried, True
    else:
        good, bad = None, s
        while s > lo:
            s /= 2
            if ok(s):
                good = s
                break
            bad = s
        if good is None:
            return 0.0, tried, False
    for _ in range(iters):
        mid = math.sqrt(good * bad)
        if ok(mid):
            good = mid
        else:
            bad = mid
    return cache[(policy, round(good, 9))][1], tried, False
