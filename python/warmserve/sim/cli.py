"""`warmserve simulate`: run policies over a workload on a simulated cluster and compare them.

    warmserve simulate --preset paper-conv --json out.json --plot ttft.png
    warmserve simulate --policy warmserve,autoscale --workload servegen --models 32 --gpus 64 --duration-s 3600
    warmserve simulate --preset artifact-code --sweep-rate 0.25,0.5,1,2,4 --json sweep.json --plot sweep.png
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace

from warmserve.errors import InvalidArgumentError
from warmserve.outputs import (check_distinct_outputs, check_output, check_outputs_spare_input, check_plot,
                               is_special, parse_numbers)
from warmserve.policy import POLICY_NAMES
from warmserve.policy.config import parse_policy_options
from warmserve.policy.registry import note_shadowed_options
from warmserve.sim.cli_checks import (DEFAULT_SEARCH_ITERS, DEFAULT_SLO_TARGET, MIN_BURST_CV, check_cold_start,
                                      check_duration, check_gpus, check_models, check_paper_span, check_trace_file,
                                      check_replays_requests, check_request_budget, check_search_budget,
                                      check_servegen_start, check_sim_window, check_time_scale, check_unused_settings,
                                      check_workload_clock, check_workload_days, parse_policies, rate_flags,
                                      search_scale_cap)
from warmserve.sim.cli_output import (Saved, at_least, median_summary, request_count, summary_table, sweep_table,
                                      workload_block, write_results)
from warmserve.sim.cli_output import median_per_model as _median_per_model
from warmserve.sim.config import SimConfig, check_field
from warmserve.sim.costmodel import ENGINE_INIT_RANGE_S, ENGINE_INIT_S, CostModel
from warmserve.sim.plot import plot_ttft_cdf
from warmserve.sim.presets import (ARTIFACT_ALPHA, ARTIFACT_N_MODELS, PAPER_ALPHA, PAPER_N_MODELS, RECIPE_WARMUP_S,
                                   SCALE_N_MODELS, Preset, artifact_preset, cluster_shape, paper_preset, scale_preset)
from warmserve.sim.runner import SEARCH_HI, max_rate_under_slo, policy_names, rate_sweep, run_once
from warmserve.workload.azure import trace_source
from warmserve.workload.recipes import MAX_BURST_CV

PRESET_NAMES = ("paper-conv", "paper-code", "artifact-conv", "artifact-code", "scale")
#: the workloads of the Azure trace the paper and artifact presets replay (each its own preset too)
PAPER_WORKLOADS = ("paper-conv", "paper-code", "artifact-conv", "artifact-code")


def add_arguments(p):
    p.add_argument("--policy", default=",".join(POLICY_NAMES),
                   help="comma-separated policies (default: all): " + ", ".join(POLICY_NAMES))
    p.add_argument("--policy-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a PolicyConfig field for every policy (repeatable), e.g. instance_capacity=16; every "
                        "field, its default and meaning: docs/config.md, [policy]")
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="paper-conv/paper-code: the paper's experiment (2x8 GPUs, 7 Llama-2 7B/13B/70B copies, "
                        "Azure trace, power-law split, alpha 1); artifact-conv/artifact-code: the authors' released "
                        "setup (4 models: 7B x2, 13B, 70B; alpha 0.5); scale: --gpus x --models under --workload")
    p.add_argument("--workload", default=None,
                   help="paper-conv | paper-code | artifact-conv | artifact-code (Azure 2023, the paper's recipe) "
                        "| servegen, when no --preset (default paper-conv); with --preset scale: servegen (default) "
                        "or paper-conv; refused with any other --preset (each replays its own)")
    p.add_argument("--trace", default=None, metavar="CSV",
                   help="the paper and artifact workloads: replay this trace instead of the bundled Azure one, a CSV "
                        "(or .csv.gz) in the Azure 2023 layout (TIMESTAMP, ContextTokens, GeneratedTokens); the "
                        "recipe, models and --rate stay the preset's; the JSON records the file's SHA-256")
    p.add_argument("--models", type=int, default=None,
                   help=f"number of models, at least 1 (default: {PAPER_N_MODELS} for the paper presets, "
                        f"{ARTIFACT_N_MODELS} for the artifact ones, {SCALE_N_MODELS} for servegen and scale)")
    p.add_argument("--gpus", type=int, default=16, help="GPUs (8 per server) when no paper preset is chosen")
    p.add_argument("--gpu", default="H100-80GB", help="GPU type of the cost model: H100-80GB or A100-80GB")
    p.add_argument("--profile", default=None, help="cost profile JSON of GPUs that hold the run's models (see "
                   "warmserve.sim.costmodel); `warmserve calibrate`'s CPU-worker profiles are for bench replay")
    p.add_argument("--cold-start-s", type=float, default=None,
                   help=f"engine part of a cold start, seconds (default: a --profile's engine_init_s, else "
                        f"{ENGINE_INIT_S:g}, the low end of vLLM's published {ENGINE_INIT_RANGE_S[0]:g}-"
                        f"{ENGINE_INIT_RANGE_S[1]:g} s engine initialisation); weight loading is added")
    p.add_argument("--engine-model", choices=("vllm", "fluid"), default="vllm",
                   help="vllm: admission by max sequences (256) and KV memory, decode reads the batch's KV "
                        "cache; fluid: the earlier model (batch capped at the policy's B, flat decode step)")
    p.add_argument("--chunked-prefill-tokens", type=int, default=0,
                   help="vllm engine model: chunked prefill with this many tokens per step (e.g. 512), at least "
                        "the engine's max sequences (256; vLLM refuses fewer); 0: off. Refused with --engine-model "
                        "fluid, which has no token budget")
    p.add_argument("--no-shared-search", action="store_true",
                   help="shared: its demand-proportional layout instead of the searched one")
    p.add_argument("--rate", type=float, default=None,
                   help="total request rate at rate scale 1, requests per second of trace time, before "
                        "--time-scale (default: 24 for the paper and artifact presets, 1 per GPU for servegen and "
                        "scale); the replay offers rate x --rate-scale / --time-scale requests per simulated "
                        "second (`warmserve bench replay --rate` is per second of the replay instead)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the request rate")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every time of the workload by this (history stays on whole days): < 1 "
                        "compresses, the same requests in less time (--rate / this many per second), > 1 stretches")
    p.add_argument("--burst-cv", type=float, default=None,
                   help="re-draw inter-arrivals from a Gamma with this CV (servegen: within each 10-minute window, "
                        "so its count stays)")
    p.add_argument("--alpha", type=float, default=None,
                   help=f"power-law exponent of the per-model rate split (default: {PAPER_ALPHA:g} for paper "
                        f"presets, {ARTIFACT_ALPHA:g} for artifact ones)")
    p.add_argument("--duration-s", type=float, default=None,
                   help="replayed span, seconds (default: 1200 for the paper and artifact workloads, 3600 for "
                        "servegen)")
    p.add_argument("--start-hour", type=float, default=None,
                   help="--workload servegen: the replay's start on ServeGen's last day, hours after midnight "
                        "(default 20); refused for the Azure workloads, which replay their trace's own stretches")
    p.add_argument("--history-days", type=int, default=None,
                   help="earlier days of history the forecasts see (default: 2 for servegen, which has 14, and "
                        "the scale preset; 3 for the paper and artifact presets, whose Azure trace, under an hour, "
                        "then holds a --duration-s of at most about 1450 s; 0: none, up to about 2900 s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload (arrivals, lengths) without --seeds")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds (e.g. 0,1,2): every number is the median over them (per_model: "
                        "per model and field, over the seeds that sent it requests; each seed's own figures are in "
                        "per_seed), the search uses their mean SLO attainment; overrides --seed")
    p.add_argument("--ttft-slo-s", type=float, default=0.0,
                   help="TTFT SLO in seconds (default: per model, --slo-scale x its 1024-token prefill time)")
    # SimConfig's own defaults, not copies that could drift from them (found in review)
    p.add_argument("--slo-scale", type=float, default=SimConfig.slo_scale,
                   help="per-model TTFT SLO, x the 1024-token prefill time")
    p.add_argument("--tick-s", type=float, default=SimConfig.tick_s, help="policy tick period, simulated seconds")
    p.add_argument("--no-search", action="store_true", help="skip the max-rate-under-SLO search")
    p.add_argument("--search-iters", type=int, default=None,
                   help=f"bisection steps of the max-rate search (>= 0, default {DEFAULT_SEARCH_ITERS}); refused "
                        f"with --no-search and --sweep-rate, which run no search")
    p.add_argument("--slo-target", default=None, metavar="T[,T...]",
                   help=f"share of requests that must meet the TTFT SLO for a rate to count as served (default "
                        f"{DEFAULT_SLO_TARGET}); several, e.g. 0.99,0.98,0.95: one search per target over the same "
                        f"runs, the first one the headline, so the max rate is shown across targets; with "
                        f"--sweep-rate, the target of its max swept rate; refused with --no-search alone")
    p.add_argument("--sweep-rate", default=None, metavar="SCALES",
                   help="comma-separated rate scales (e.g. 0.25,0.5,1,2,4): instead of one run and the max-rate "
                        "search, every policy's P99 TTFT and SLO attainment at each offered rate (over --seeds); "
                        "--plot draws them (the paper's figure style), --json stores them")
    p.add_argument("--cold-start-band", default=None, metavar="LOW,HIGH",
                   help="with --sweep-rate: also run the policies that start engines cold (autoscale) with the "
                        "engine part of a cold start at LOW and HIGH seconds and draw the band between (default "
                        "14,35: vLLM's published range; refused when --policy names none of them); 'off': no band")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--plot", default=None,
                   help="write a TTFT CDF plot (PNG) here, of the first seed's requests (with --sweep-rate: the sweep)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_preset(args) -> Preset:
    policy_config = parse_policy_options(args.policy_option)
    check_sim_window(policy_config.window_s, args.tick_s)  # before SimConfig's check of the tick: its own fix
    cfg = SimConfig(gpu=args.gpu, ttft_slo_s=args.ttft_slo_s, slo_scale=args.slo_scale, tick_s=args.tick_s,
                    engine_model=args.engine_model, shared_search=not args.no_shared_search,
                    chunked_prefill_tokens=args.chunked_prefill_tokens, policy_config=policy_config)
    if args.models is not None and args.models < 1:
        raise InvalidArgumentError(f"--models {args.models}: give at least 1 model", flag="--models")
    check_time_scale(args.time_scale, args.duration_s, args.tick_s)
    # found in review: a large CV (1e4) passed `> 0`, every arrival came out NaN and was dropped: 0 requests, exit 0
    if args.burst_cv is not None and not (math.isfinite(args.burst_cv)
                                          and MIN_BURST_CV <= args.burst_cv <= MAX_BURST_CV):
        raise InvalidArgumentError(f"--burst-cv {args.burst_cv:g}: give a CV of at least {MIN_BURST_CV:g} and at "
                                   f"most {MAX_BURST_CV:g} (1: Poisson; a larger one bunches a segment into one "
                                   f"burst all the same), or leave it out for the trace's own inter-arrivals",
                                   flag="--burst-cv")
    if args.preset not in (None, "scale") and args.workload is not None:
        # found in review: --workload was silently ignored beside a preset, whose own workload ran
        raise InvalidArgumentError(f"--preset {args.preset} --workload {args.workload}: a preset replays its own "
                                   f"workload ({args.preset}); drop --workload, or drop --preset to run "
                                   f"{args.workload} (with --gpus, --models)", flag="--workload")
    kind = args.preset or args.workload or "paper-conv"
    recipe = (_scale_recipe(args.workload) if args.preset == "scale" else "servegen" if kind in ("servegen", "scale")
              else "paper" if kind in PAPER_WORKLOADS else None)
    if recipe is None:
        raise InvalidArgumentError(f"--workload {kind}: choose paper-conv, paper-code, artifact-conv, artifact-code "
                                   f"or servegen", flag="--workload")
    if recipe == "paper" and args.start_hour is not None:
        # found in review: --start-hour was silently ignored here
        raise InvalidArgumentError(f"--start-hour {args.start_hour:g}: the {kind} workload replays the Azure trace's "
                                   f"own stretches (from its 18:15); --start-hour places a servegen replay: drop it",
                                   flag="--start-hour")
    trace_path = getattr(args, "trace", None)  # a namespace built by hand (scripts, tests) may have none
    check_trace_file(trace_path, kind if recipe == "paper" and args.preset != "scale" else None)
    if kind in PAPER_WORKLOADS:
        if args.preset is not None and args.gpus != 16:
            # found in review: --gpus was silently dropped here (the presets are the paper's 2 x 8 GPUs)
            raise InvalidArgumentError(f"--preset {args.preset} --gpus {args.gpus}: a preset runs the paper's 16 GPUs "
                                       f"(2 x 8); for {args.gpus} GPUs give --workload {args.preset} --gpus "
                                       f"{args.gpus} instead", flag="--gpus")
        if args.preset is None and args.gpus != 16:
            servers, per_server = cluster_shape(args.gpus)
            cfg = replace(cfg, n_servers=servers, gpus_per_server=per_server)
        else:
            cfg = replace(cfg, n_servers=2, gpus_per_server=8)
        kw = {"config": cfg, "burst_cv": args.burst_cv}
        if args.history_days is not None:  # else the preset's own 3 days
            kw["history_days"] = args.history_days
        if args.alpha is not None:
            kw["alpha"] = args.alpha
        if args.models is not None:
            kw["n_models"] = args.models
        family, _, trace = kind.partition("-")
        p = (artifact_preset if family == "artifact" else paper_preset)(trace, total_rate_rps=args.rate,
                                                                        trace_path=trace_path, **kw)
        check_paper_span(trace, args.duration_s or 1200.0, p.history_days, history_given=args.history_days is not None,
                         path=trace_path)
        if args.time_scale != 1.0 or args.duration_s:
            p = _rewrap(p, args)
        return p
    if kind in ("servegen", "scale"):
        servers, per_server = cluster_shape(args.gpus)
        cfg = replace(cfg, n_servers=servers, gpus_per_server=per_server)
        if recipe == "servegen" and args.alpha is not None:
            raise InvalidArgumentError(f"--alpha {args.alpha:g}: the servegen workload has no power-law split (each "
                                       f"client series keeps its own published rate); drop --alpha", flag="--alpha")
        # the paper's conv trace covers under an hour: its recipe gets the paper's 1200 s span by default
        duration_s = args.duration_s or (3600.0 if recipe == "servegen" else 1200.0)
        history_days = 2 if args.history_days is None else args.history_days
        if recipe == "paper":
            check_paper_span("conv", duration_s, history_days, history_given=args.history_days is not None)
        return scale_preset(args.gpus, SCALE_N_MODELS if args.models is None else args.models, duration_s=duration_s,
                            total_rate_rps=args.rate, recipe=recipe, config=cfg,
                            start_hour=20.0 if args.start_hour is None else args.start_hour,
                            history_days=history_days, burst_cv=args.burst_cv, time_scale=args.time_scale,
                            alpha=args.alpha)
    raise AssertionError(kind)  # every kind is a recipe's, above


#: --workload values --preset scale replays: scale_preset's recipes (its paper recipe runs on the conv trace only)
SCALE_RECIPES = {None: "servegen", "servegen": "servegen", "paper-conv": "paper"}


def _scale_recipe(workload: str | None) -> str:
    if workload not in SCALE_RECIPES:
        raise InvalidArgumentError(f"--preset scale --workload {workload}: the scale preset replays servegen or "
                                   f"paper-conv (its paper recipe has the conv trace only); drop --preset scale "
                                   f"to run {workload} on --gpus", flag="--workload")
    return SCALE_RECIPES[workload]


def _rewrap(p: Preset, args) -> Preset:
    from dataclasses import replace

    from warmserve.workload.recipes import paper_workload

    names = [m.name for m in p.models]
    kind = p.name.split("-")[1]

    def build(rate_scale=1.0, seed=0):
        return paper_workload(kind, len(names), alpha=p.alpha, total_rate_rps=p.base_rate_rps,
                              rate_scale=rate_scale, burst_cv=args.burst_cv, model_names=names, seed=seed,
                              duration_s=args.duration_s or 1200.0, time_scale=args.time_scale,
                              history_days=p.history_days, path=p.trace_path)

    return replace(p, build=build, span_s=RECIPE_WARMUP_S + (args.duration_s or 1200.0))


def plot_cdf(results: dict, path: str, title: str) -> None:
    plot_ttft_cdf([(name, r.ttft_s, "-", None) for name, r in results.items()], path, title)


def main(args) -> int:
    # found in review: Ctrl-C ended in a traceback and lost every policy run so far; now each finished policy is in
    # --json (``_run_main``) and an interrupt says so in one line, with the shell's status for SIGINT
    saved = Saved(args.json)
    try:
        return _run_main(args, saved)
    except KeyboardInterrupt:
        print(f"warmserve simulate: interrupted; {saved.line()}", file=sys.stderr)
        return 130


def _run_main(args, saved: Saved) -> int:
    t0 = time.perf_counter()
    policies = parse_policies(args.policy)
    known = policy_names()
    bad = [p for p in policies if p not in known]
    if bad:
        print(f"warmserve simulate: unknown policies {bad}: choose from {', '.join(known)}", file=sys.stderr)
        return 2
    check_args(args)
    check_output("--json", args.json)  # before a long run, not after it
    check_plot("--plot", args.plot)
    check_distinct_outputs(args.json, args.plot)
    check_outputs_spare_input("--profile", args.profile, {"--json": args.json, "--plot": args.plot},
                              "the cost profile the run reads")
    preset = build_preset(args)
    note_shadowed_options(args.policy_option, policies)
    cost = CostModel.for_gpu(args.gpu)
    if args.profile:
        cost = CostModel.from_profile(args.profile, base=cost)
    if args.cold_start_s is not None:
        cost = cost.with_cold_start_s(args.cold_start_s)
    check_models(args, preset, cost)  # before the workload: its build takes time per model
    check_servegen_start(args)
    progress = not args.quiet
    seeds = parse_seeds(args)
    targets = _slo_targets(args.slo_target)
    if args.sweep_rate:
        return _sweep_main(args, preset, cost, policies, seeds, t0, targets[0], saved)
    expected = preset.expected_requests(args.rate_scale)
    check_request_budget(expected, rate_flags(args, "--rate-scale", args.rate_scale), "the replay")
    if not args.no_search:
        check_search_budget(preset, args)
        if search_scale_cap(preset) < SEARCH_HI:
            print(f"warmserve simulate: the max-rate search stops at rate scale {search_scale_cap(preset):.3g}, not "
                  f"{SEARCH_HI:g}: above it a run would be over the simulator's request limit; a rate that still "
                  f"meets the SLO there is a lower bound (>=)", file=sys.stderr)
    workloads = {sd: preset.build(args.rate_scale, sd) for sd in seeds}
    check_replays_requests(workloads, args, "--rate-scale", args.rate_scale, expected)
    check_workload_clock(workloads, args, preset.history_days)
    check_static_layouts(preset, policies, cost, workloads.values())
    workload = workloads[seeds[0]]
    n_requests = request_count(workloads, seeds)
    results, out = {}, {}

    def doc(wall_s: float) -> dict:
        d = {"preset": preset.name, "models": [[m.name, m.size] for m in preset.models],
             "cluster": {"servers": preset.config.n_servers, "gpus_per_server": preset.config.gpus_per_server,
                         "gpu": cost.gpu.name},
             "workload": workload_block(workloads, seeds),
             "args": run_args(args), "policies": out, "ratios": ratios_of(out, seeds), "wall_s": wall_s}
        missing = [p for p in policies if p not in out]
        if missing:  # a run cut short (Ctrl-C, a later policy's error): not to be read as all of --policy
            d["missing_policies"] = missing
        return d

    for pol in policies:
        runs = [run_once(preset, pol, rate_scale=args.rate_scale, seed=sd, cost=cost, progress=progress,
                         workload=workloads[sd]) for sd in seeds]
        r = runs[0]
        results[pol] = r
        s = median_summary([x.summary for x in runs], seeds)
        if len(seeds) > 1:
            s["seeds"] = seeds
            s["per_seed"] = {str(sd): {**x.summary, "per_model": x.per_model} for sd, x in zip(seeds, runs)}
        if not args.no_search:
            runs_by_scale: dict = {}  # the searches of several targets share their runs
            by_target, s["rate_search"], capped = {}, [], []
            for t in targets:
                rate, tried, at_top = max_rate_under_slo(preset, pol, target=t, seed=seeds, cost=cost,
                                                         iters=args.search_iters, progress=progress,
                                                         cache=runs_by_scale)
                by_target[f"{t:g}"] = rate
                s["rate_search"] += tried
                if at_top:  # the SLO still met where the search stops: the figure is a lower bound
                    capped.append(f"{t:g}")
            if capped:
                s["max_rate_lower_bound_at_slo_targets"] = capped
            s["max_rate_under_slo_rps"] = by_target[f"{targets[0]:g}"]
            s["slo_target"] = targets[0]
            if len(targets) > 1:
                s["max_rate_by_slo_target"] = by_target
        s["per_model"] = _median_per_model([x.per_model for x in runs])
        out[pol] = s
        print(f"{pol}: p99 TTFT {s['ttft_p99_s']:.3f} s, SLO {s['slo_attainment']:.3f}"
              + (f", max rate under SLO {at_least(s, targets[0])}{s['max_rate_under_slo_rps']:.2f} rps"
                 if "max_rate_under_slo_rps" in s else "")
              + "".join(f"; at target {t}: {at_least(s, t)}{r:.2f} rps"
                        for t, r in s.get("max_rate_by_slo_target", {}).items()),
              file=sys.stderr)
        # after each policy, as `bench replay` does: an interrupt or a later error keeps this one; not into a pipe
        # or device, which would get one JSON document per policy (found in review: `--json >(jq .)`)
        if args.json and not is_special(args.json):
            write_results(args.json, doc(time.perf_counter() - t0))
            saved.done, saved.missing = list(out), [p for p in policies if p not in out]
    wall = time.perf_counter() - t0
    print(f"{preset.label}: {len(preset.models)} models on {preset.config.n_servers}x{preset.config.gpus_per_server} "
          f"{cost.gpu.name}, {n_requests} requests over {workload.duration_s:.0f} s "
          f"({n_requests / workload.duration_s:.2f} rps), seeds {seeds}"
          + (" (medians)" if len(seeds) > 1 else ""))
    print(summary_table(out))
    ratios = ratios_of(out, seeds)
    print_ratios(ratios)
    print(f"wall {wall:.1f} s")
    if args.json:
        write_results(args.json, doc(wall))
    if args.plot:
        seed = f"seed {seeds[0]}" + (f" of {len(seeds)}; the table's are medians" if len(seeds) > 1 else "")
        rate = len(workload.trace) / workload.duration_s  # the figure's is the first seed's alone (review of plots)
        plot_cdf(results, args.plot, f"TTFT CDF, {preset.label} ({rate:.1f} rps, {seed})")
    return 0


#: --cold-start-band when not given: vLLM's published range of engine initialisation, seconds
DEFAULT_COLD_START_BAND = "14,35"

#: the policies that lay out every instance once, at their first tick (``policy.baselines.StaticPolicy``)
STATIC_POLICIES = ("shared", "dedicated")


def check_static_layouts(preset: Preset, policies: list[str], cost: CostModel, workloads) -> None:
    """Raise the UnplacedModelError a static policy's run would end in, where its layout leaves a model without an
    instance, before any run (found in review: `shared` failed after the other policies had run, and their
    results were lost). Per workload: `shared`'s layout search (its candidates placed, none scored or simulated)
    or, without the search, its own layout; `dedicated`'s own layout, which its run simulates either way
    (``Simulator._choose_static_layout``). The max-rate search's other rate scales are not checked."""
    from warmserve.sim.shared_search import placeable_layout
    from warmserve.sim.simulator import Simulator

    static = [p for p in STATIC_POLICIES if p in policies]
    if not static:
        return
    for w in workloads:
        for pol in static:
            # the search off: a layout it would choose is not simulated here, only placed
            sim = Simulator(w, preset.models, pol, config=replace(preset.config, shared_search=False), cost=cost)
            if pol == "shared" and preset.config.shared_search:
                placeable_layout(sim)
            else:
                sim.policy.tick(sim.state, sim.clock0)


def check_args(args) -> None:
    """Refuse, each naming its option, the values a run would otherwise replace or run on silently (found in
    review: --duration-s 0 became the preset's 1200 s, a negative one ran no request and printed NaN, a negative
    --ttft-slo-s was the SLO, --seeds "," ended in a traceback), the options --sweep-rate does not take, and the
    settings the run would not use (``check_unused_settings``)."""
    import math

    def bad(flag: str, value, want: str):
        return InvalidArgumentError(f"{flag} {value:g}: {want}", flag=flag, value=value)

    if args.duration_s is not None and not (math.isfinite(args.duration_s) and args.duration_s > 0):
        raise bad("--duration-s", args.duration_s, "give a span > 0 seconds, or leave it out for the workload's own")
    check_duration(args.duration_s)
    check_gpus(args.gpus)
    check_cold_start(args.cold_start_s)
    check_workload_days(args)
    check_unused_settings(args)  # and the defaults of --search-iters and --slo-target filled in
    # the flags of SimConfig fields, by SimConfig's own rules (sim.config.FIELD_RULES); SimConfig itself refuses
    # --chunked-prefill-tokens under --engine-model fluid, naming both flags, when build_preset makes it
    for flag, key in (("--ttft-slo-s", "ttft_slo_s"), ("--slo-scale", "slo_scale"), ("--tick-s", "tick_s"),
                      ("--chunked-prefill-tokens", "chunked_prefill_tokens")):
        check_field(key, getattr(args, key), flag)
    for flag, v in (("--rate-scale", args.rate_scale), ("--rate", args.rate)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise bad(flag, v, "give a finite number > 0")
    if args.alpha is not None and not math.isfinite(args.alpha):  # found in review: NaN failed deep in the recipe
        raise bad("--alpha", args.alpha, "give a finite power-law exponent, e.g. 1 (the paper's)")
    # found in review: a negative --search-iters was taken (a search without its bisection, unasked)
    if args.search_iters < 0:
        raise bad("--search-iters", args.search_iters, "give 0 or more bisection steps")
    if args.history_days is not None and args.history_days < 0:
        raise bad("--history-days", args.history_days, "give 0 or more days")
    if args.cold_start_band is not None and not args.sweep_rate:
        # found in review: taken and ignored without --sweep-rate, the only runs that draw a band
        raise InvalidArgumentError(f"--cold-start-band {args.cold_start_band}: the band is drawn by --sweep-rate "
                                   f"only; add --sweep-rate or drop --cold-start-band", flag="--cold-start-band")
    parse_seeds(args)
    if args.sweep_rate is not None:  # "" too: it names no scale (found in review: one run, no sweep, no word)
        # nan, inf: "cannot convert float NaN to integer" later (found in review)
        scales = parse_numbers(args.sweep_rate, "--sweep-rate", example="0.25,0.5,1,2,4")
        if not scales:
            raise InvalidArgumentError(f"--sweep-rate {args.sweep_rate!r} names no rate scale: give comma-separated "
                                       f"scales, e.g. 0.25,0.5,1,2,4", flag="--sweep-rate")
        twice = sorted({sc for sc in scales if scales.count(sc) > 1})
        if twice:  # found in review: 1,1 ran scale 1 twice and kept both points (JSON, table, plot)
            named = ", ".join(f"{sc:g}" for sc in twice)
            raise InvalidArgumentError(f"--sweep-rate {args.sweep_rate!r}: rate scale {named} given more than once: "
                                       f"give each scale once", flag="--sweep-rate", value=args.sweep_rate)
        if args.rate_scale != 1.0:
            # the sweep's scales are the rate scales; one more factor on top of them was dropped without a word
            raise InvalidArgumentError(f"--sweep-rate {args.sweep_rate} --rate-scale {args.rate_scale:g}: the sweep's "
                                       f"scales are the rate scales; multiply them instead (or set --rate)",
                                       flag="--rate-scale")
        if len(_slo_targets(args.slo_target)) > 1:
            raise InvalidArgumentError(f"--sweep-rate with --slo-target {args.slo_target}: a sweep judges its max "
                                       f"swept rate at one target; give one (the sweep stores every point's SLO "
                                       f"attainment, so other targets can be read off it)", flag="--slo-target")


def parse_seeds(args) -> list[int]:
    """--seeds as integers >= 0 (at least one), or [--seed] without it."""
    # seeds >= 0 (found in review: --seed -1 and --seeds 0,-1 were taken and ended in numpy's ValueError, which
    # names no flag: numpy's generators take no negative seed)
    if args.seeds is None:  # "" names no seed, as "," does (found in review: it fell back to --seed)
        if args.seed < 0:
            raise InvalidArgumentError(f"--seed {args.seed}: give a seed >= 0, e.g. 0", flag="--seed",
                                       value=args.seed)
        return [args.seed]
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgumentError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2",
                                   flag="--seeds") from None
    if not seeds:
        raise InvalidArgumentError(f"--seeds {args.seeds!r} names no seed: give comma-separated integers, e.g. "
                                   f"0,1,2, or leave it out for --seed", flag="--seeds")
    if min(seeds) < 0:
        raise InvalidArgumentError(f"--seeds {args.seeds!r}: give seeds >= 0, e.g. 0,1,2 (seed {min(seeds)} is "
                                   f"negative)", flag="--seeds", value=args.seeds)
    twice = sorted({sd for sd in seeds if seeds.count(sd) > 1})
    if twice:  # found in review: 0,1,1 ran seed 1 twice and counted it twice in the medians, once in per_seed
        raise InvalidArgumentError(f"--seeds {args.seeds!r}: seed {', '.join(map(str, twice))} given more than once: "
                                   f"give each seed once", flag="--seeds", value=args.seeds)
    return seeds


def _slo_targets(text: str) -> list[float]:
    targets = parse_numbers(text, "--slo-target")
    if not targets or not all(0 < t <= 1 for t in targets):
        raise InvalidArgumentError(f"--slo-target {text!r}: shares of requests in (0, 1], e.g. 0.99 or 0.99,0.95",
                                   flag="--slo-target")
    return targets


def _sweep_main(args, preset: Preset, cost: CostModel, policies: list[str], seeds: list[int], t0: float,
                target: float, saved: Saved) -> int:
    """``--sweep-rate``: every policy at every rate scale; a table, the JSON and the two-panel plot."""
    scales = parse_numbers(args.sweep_rate, "--sweep-rate")
    band = None
    if args.cold_start_band is None:
        args.cold_start_band = DEFAULT_COLD_START_BAND  # and the JSON's "args" records the band drawn
    if args.cold_start_band.strip().lower() not in ("", "off", "none"):
        band = parse_numbers(args.cold_start_band, "--cold-start-band")
        if len(band) != 2 or not 0 <= band[0] <= band[1]:
            raise InvalidArgumentError(f"--cold-start-band {args.cold_start_band!r}: write LOW,HIGH seconds, "
                                       f"e.g. 14,35", flag="--cold-start-band")
    if scales and min(scales) > 0:  # else rate_sweep says why
        top = max(scales)
        check_request_budget(preset.expected_requests(top), rate_flags(args, "--sweep-rate", top),
                             "its highest rate")
        low = min(scales)  # the fewest requests: one seed's replay with none has no figure to plot
        lows = {sd: preset.build(low, sd) for sd in seeds}
        check_replays_requests(lows, args, "--sweep-rate", low, preset.expected_requests(low))
        check_workload_clock(lows, args, preset.history_days)
    if any(p in STATIC_POLICIES for p in policies) and scales and min(scales) > 0:  # else rate_sweep says why
        check_static_layouts(preset, policies, cost, (preset.build(sc, sd) for sc in scales for sd in seeds))
    def doc(sweep: dict) -> dict:
        d = {"preset": preset.name, "models": [[m.name, m.size] for m in preset.models], "alpha": preset.alpha,
             "cluster": {"servers": preset.config.n_servers, "gpus_per_server": preset.config.gpus_per_server,
                         "gpu": cost.gpu.name},
             "base_rate_rps": preset.base_rate_rps, "burst_cv": args.burst_cv,
             "policy_options": list(args.policy_option), "args": run_args(args), "sweep": sweep,
             "wall_s": time.perf_counter() - t0}
        if preset.trace_path:  # the file replayed, by its bytes (the main run's workload meta has it too)
            d["source"] = trace_source(preset.trace_path)
        missing = sorted(set(scales) - set(sweep["rate_scales"]))
        if missing:  # a sweep cut short: not to be read as all of --sweep-rate
            d["missing_rate_scales"] = missing
        return d

    def keep(partial: dict) -> None:  # after each rate scale, as the policy runs keep theirs (a file only, as they)
        if args.json and not is_special(args.json):
            write_results(args.json, doc(partial))
            saved.done, saved.missing = partial["rate_scales"], sorted(set(scales) - set(partial["rate_scales"]))

    saved.unit = "rate scales"
    sweep = rate_sweep(preset, policies, scales, seeds=seeds, cost=cost, band_cold_start_s=band, target=target,
                       progress=not args.quiet, on_scale=keep)
    wall = time.perf_counter() - t0
    print(f"{preset.label}: {len(preset.models)} models on {preset.config.n_servers}x{preset.config.gpus_per_server} "
          f"{cost.gpu.name}, rate sweep over scales {sweep['rate_scales']} of {preset.base_rate_rps:g} rps, seeds "
          f"{seeds} (P99: median over seeds; SLO: mean), engine init {cost.engine_init_s:g} s")
    print(sweep_table(sweep))
    print(f"wall {wall:.1f} s")
    if args.json:
        write_results(args.json, {**doc(sweep), "wall_s": wall})
    if args.plot:
        from warmserve.sim.plot import plot_rate_sweep, rate_sweep_title
        plot_rate_sweep(sweep, args.plot, rate_sweep_title(
            preset.label, ",".join(map(str, seeds)), args.burst_cv, args.policy_option,
            ttft_slo_s=preset.config.ttft_slo_s, slo_scale=preset.config.slo_scale))
    return 0


def ratios_of(out: dict, seeds: list[int]) -> dict:
    """The headline ratios of one run's per-policy results ``out`` (the JSON's ``policies``): P99 TTFT autoscale /
    warmserve (per seed too, over several seeds) and max rate under the SLO warmserve / shared (per SLO target)."""
    ratios = {}
    if "warmserve" not in out:
        return ratios
    ws = out["warmserve"]
    if "autoscale" in out and ws["ttft_p99_s"] > 0:
        ratios["p99_ttft_autoscale_over_warmserve"] = out["autoscale"]["ttft_p99_s"] / ws["ttft_p99_s"]
        if len(seeds) > 1:
            ratios["p99_ttft_autoscale_over_warmserve_per_seed"] = [
                out["autoscale"]["per_seed"][str(sd)]["ttft_p99_s"] / ws["per_seed"][str(sd)]["ttft_p99_s"]
                for sd in seeds]
    # A ratio of a rate that is only a lower bound (its search met the SLO where it stops) is no ratio: left out.
    bounded = set(ws.get("max_rate_lower_bound_at_slo_targets", [])) | set(
        out.get("shared", {}).get("max_rate_lower_bound_at_slo_targets", []))
    if "shared" in out and out["shared"].get("max_rate_under_slo_rps") and \
            f"{ws.get('slo_target', 0):g}" not in bounded:
        ratios["max_rate_warmserve_over_shared"] = (ws.get("max_rate_under_slo_rps", 0)
                                                    / out["shared"]["max_rate_under_slo_rps"])
    sh = out.get("shared", {}).get("max_rate_by_slo_target", {})
    for t, rate in ws.get("max_rate_by_slo_target", {}).items():
        if sh.get(t) and t not in bounded:
            ratios[f"max_rate_warmserve_over_shared_at_slo_target_{t}"] = rate / sh[t]
    return ratios


def print_ratios(ratios: dict) -> None:
    """One line per ratio, as `warmserve simulate` prints them (a per-seed list comma-separated)."""
    for k, v in ratios.items():
        print(f"{k}: " + (", ".join(f"{x:.2f}x" for x in v) if isinstance(v, list) else f"{v:.2f}x"))


#: Arguments that only say where the output goes: everything else recorded in the JSON's "args" changes the run.
OUTPUT_ARGS = ("json", "plot", "quiet")


def run_args(args) -> dict:
    """The command's arguments as the JSON records them (``"args"``), so that two outputs can be told to come
    from the same simulation options (bench/simulate/issue11/merge_policies.py)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in OUTPUT_ARGS and not callable(v)}

