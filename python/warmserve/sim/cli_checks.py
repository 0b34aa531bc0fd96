"""`warmserve simulate`'s checks of its command line that need more than one option or the workload itself: the
request count a run would generate (the max-rate search's runs too), a replay with no request, the Azure trace's
room for a replay and its history days, the --policy list, --json and --plot naming one file, the forecast window's
floor, --gpus below 1, a --profile whose GPU cannot serve the models, --models beyond what the cluster and the
workload hold, an --alpha that overflows, the days --history-days and --start-hour ask of the workload, --cold-start-s
and settings the run would not use. Each raises InvalidArgumentError naming the flags and the fix, before any policy
runs."""

from __future__ import annotations

import math
import os
import sys

from warmserve.config import MIN_WINDOW_S
from warmserve.errors import InvalidArgumentError

#: The most requests a run may generate (replay, warm-up and history days together, ``Preset.expected_requests``).
#: Found in review: --rate-scale 1e9 passed the finite > 0 check and allocated arrays in proportion to the rate
#: until memory ran out. The largest run the benchmarks record (1024 GPUs, bench/simulate/scale_1024x256.json)
#: generates about 3.7 million.
MAX_REQUESTS = 10_000_000


def check_request_budget(expected: float, flags: str, what: str) -> None:
    """Refuse a run whose workload would hold more than ``MAX_REQUESTS`` requests (``expected``, the estimate);
    ``flags``: the options that set the rate, as given; ``what``: the run (e.g. "the replay")."""
    if expected > MAX_REQUESTS:
        raise InvalidArgumentError(
            f"{flags}: {what} would generate about {expected:.3g} requests (rate x scale x (warm-up + duration) x "
            f"(1 + history days)), more than the simulator takes ({MAX_REQUESTS:.0e}): lower --rate, --rate-scale "
            f"or --duration-s", expected_requests=expected, limit=MAX_REQUESTS)


def rate_flags(args, scale_flag: str, scale: float) -> str:
    """The rate options as the user gave them, for a message: ``scale_flag`` (--rate-scale or --sweep-rate) at
    ``scale``, --rate where given, --duration-s where given."""
    out = [f"{scale_flag} {scale:g}"]
    if args.rate is not None:
        out.insert(0, f"--rate {args.rate:g}")
    if args.duration_s is not None:
        out.append(f"--duration-s {args.duration_s:g}")
    return " ".join(out)


def check_replays_requests(workloads, args, scale_flag: str, scale: float, expected: float) -> None:
    """Refuse where a seed's replay holds no request (``workloads``: seed -> Workload): every figure would be NaN
    and, with --sweep-rate --plot, the plot fails after the run (found in review: --rate 0.001 --duration-s 60 ran
    no request and exited 0 with NaN everywhere)."""
    empty = [sd for sd, w in workloads.items() if not len(w.trace)]
    if empty:
        raise InvalidArgumentError(
            f"{rate_flags(args, scale_flag, scale)}: the replay of seed{'s' if len(empty) > 1 else ''} "
            f"{', '.join(map(str, empty))} holds no request (about {expected:.3g} expected over warm-up, replay and "
            f"history): raise --rate, --rate-scale or --duration-s", seeds=empty)


def check_workload_clock(workloads, args, history_days: int) -> None:
    """Refuse a --time-scale that stretches a workload's warm-up or history days back past 0 on the policy's clock,
    where the replay's t = 0 is the workload's ``clock0_s`` (found in review: `--preset paper-code --history-days 0
    --time-scale 300` was refused by the simulator as "set the workload's clock0_s to at least 180000", naming
    neither the flag nor a value that works). Warm-up and history start at -k days - warm-up x --time-scale, so the
    largest scale that fits is (clock0_s - history days x a day) / warm-up."""
    for w in workloads.values():
        earliest = w.clock0_s - w.warmup_s  # as ``sim.inputs.check_clock`` reckons it
        if len(w.history):
            earliest = min(earliest, w.clock0_s + float(w.history.arrival_s.min()))
        if earliest >= 0:
            continue
        pre_s = w.warmup_s / args.time_scale
        most = (w.clock0_s - history_days * w.day_s) / pre_s if pre_s > 0 else math.inf
        days = f" and {history_days} history days (--history-days)" if history_days else ""
        raise InvalidArgumentError(
            f"--time-scale {args.time_scale:g}: the workload's {pre_s:g} s warm-up{days}, stretched, would start "
            f"{-earliest:.0f} s before the start of the policy's clock, which has {w.clock0_s:.0f} s before the "
            f"replay: give --time-scale {math.floor(most * 1000) / 1000:g} or less", flag="--time-scale",
            value=args.time_scale, max_time_scale=most)


def check_trace_file(path: str | None, kind: str | None) -> None:
    """--trace: a file that can be read, given to a workload that replays an Azure trace (``kind``; None: one that
    does not, where it would be ignored). Its rows are the loader's to check (``workload.azure``: by line)."""
    if path is None:
        return
    if kind is None:
        raise InvalidArgumentError(f"--trace {path}: only the paper and artifact workloads replay an Azure-layout "
                                   f"trace; give --workload paper-conv (or another of them) without --preset scale, "
                                   f"or drop --trace", flag="--trace", value=path)
    why = ("no such file" if not os.path.exists(path) else "not a file" if not os.path.isfile(path)
           else "not readable by this user" if not os.access(path, os.R_OK) else "")
    if why:
        raise InvalidArgumentError(f"--trace {path}: {why}; give a CSV (or .csv.gz) with the columns TIMESTAMP, "
                                   f"ContextTokens, GeneratedTokens", flag="--trace", value=path)


def check_paper_span(kind: str, duration_s: float, history_days: int, *, history_given: bool,
                     path: str | None = None) -> None:
    """The Azure trace (under an hour) must hold the recipe's warm-up and the replay, and, with history days, the
    replay's span again outside them (``paper_workload``); refused here in the CLI's terms (found in review: the
    recipe's message named duration_s, pre_s and history_days=0, none of them a flag, and --history-days was not
    passed to the paper recipe at all)."""
    from warmserve.sim.presets import RECIPE_WARMUP_S
    from warmserve.workload.azure import load_azure

    period_s = float(load_azure(kind, path).arrival_s[-1]) + 1e-6
    if path is not None:
        kind = f"--trace {os.path.basename(path)}"
    most_s = period_s - RECIPE_WARMUP_S  # warm-up and replay: one stretch of the trace
    most_history_s = most_s / 2  # history days read the rest of the trace, which must hold a replay's span
    if duration_s > most_s:
        raise InvalidArgumentError(
            f"--duration-s {duration_s:g}: the {kind} trace covers {period_s:.0f} s; after its {RECIPE_WARMUP_S:.0f} s "
            f"of warm-up a replay takes at most {math.floor(most_s)} s: give --duration-s {math.floor(most_s)} or "
            f"less (with --history-days 0; with history days at most {math.floor(most_history_s)} s)",
            flag="--duration-s", value=duration_s)
    if history_days and duration_s > most_history_s:
        days = f"--history-days {history_days}" if history_given else f"the recipe's {history_days} history days"
        raise InvalidArgumentError(
            f"--duration-s {duration_s:g} with {days}: the {kind} trace covers {period_s:.0f} s and its history days "
            f"read the part outside the {RECIPE_WARMUP_S:.0f} s warm-up and the replay, which must hold the replay's "
            f"span again: give --duration-s {math.floor(most_history_s)} or less, or --history-days 0 (up to "
            f"{math.floor(most_s)} s)", flag="--duration-s", value=duration_s)


def parse_policies(text: str, example: str = "e.g. warmserve,shared, or leave it out for all",
                   twice_why: str = "") -> list[str]:
    """--policy as a list of names, refusing an empty list and a name given twice (found in review: --policy ","
    ran nothing and exited 0; warmserve,warmserve ran it twice and kept the second). ``example`` and ``twice_why``:
    the command's own words in the messages (`bench replay`'s)."""
    policies = [p.strip() for p in text.split(",") if p.strip()]
    if not policies:
        raise InvalidArgumentError(f"--policy {text!r} names no policy: give at least one, {example}",
                                   flag="--policy", names=policies)
    twice = sorted({p for p in policies if policies.count(p) > 1})
    if twice:
        raise InvalidArgumentError(f"--policy {text!r} names {', '.join(twice)} more than once{twice_why}: give "
                                   f"each policy once", flag="--policy", names=policies, twice=twice)
    return policies


def check_sim_window(window_s: float, tick_s: float) -> None:
    """Refuse a policy window below the live controller's floor (``config.MIN_WINDOW_S``, or the tick where longer),
    as `warmserve serve` does (``config.check_window``): the simulated policy keeps its load history per window
    too, every window of the history days per model (found in review: window_s=0.01 was taken and grew past 9.5 GB
    in 90 s on a 60 s replay)."""
    floor = max(MIN_WINDOW_S, tick_s)
    if window_s < floor:
        raise InvalidArgumentError(
            f"--policy-option window_s={window_s:g}: the policy window must be at least {floor:g} s (the policy "
            f"keeps a load history of every window of its history days per model, as the live controller does, "
            f"and ticks every --tick-s {tick_s:g} s). Fix: --policy-option window_s={floor:g} or more that divides "
            f"86400 (default 300)", key="window_s", floor_s=floor, flag="--policy-option", value=window_s)


#: The shortest --duration-s, seconds of trace (before --time-scale). The Azure traces hold an arrival every 0.18 s
#: (conv) to 0.39 s (code) on average, and their recipes read more and more copies of the trace until one lands
#: inside the replay (``workload.recipes._circular_stretch``): found in review, 1e-4 s took 18 s, 1e-5 s over two
#: minutes and 1e-9 s hours, then failed with "holds no request".
MIN_DURATION_S = 1.0


#: The smallest --burst-cv. The recipes draw gaps from a Gamma of shape 1/cv^2, which overflows below about 1e-154
#: (found in review: 1e-160 failed after the draws, "arrival_s nan", naming no flag; 1e-300 a ZeroDivisionError);
#: at this CV the gaps already equal their mean to within a millionth.
MIN_BURST_CV = 1e-6


def check_time_scale(time_scale: float, duration_s: float | None, tick_s: float) -> None:
    """Refuse a --time-scale that is not a finite factor > 0 (found in review: inf passed `> 0` and ended in an
    OverflowError in the simulator's driver), or one that squeezes --duration-s into less than one policy tick
    (found in review: 1e-9 ran "1425 requests over 0 s (23750000000.00 rps)", a P99 of 600 s, nothing said)."""
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise InvalidArgumentError(f"--time-scale {time_scale:g}: give a finite factor > 0 (1: as traced)",
                                   flag="--time-scale")
    if duration_s is not None and math.isfinite(duration_s) and duration_s * time_scale < tick_s:
        raise InvalidArgumentError(
            f"--time-scale {time_scale:g}: the {duration_s:g} s replay (--duration-s) would last "
            f"{duration_s * time_scale:.3g} s, less than one policy tick (--tick-s {tick_s:g}), so no policy would "
            f"see it. Fix: a --time-scale of at least {tick_s / duration_s:.3g}", flag="--time-scale",
            value=time_scale)


def check_duration(duration_s: float | None) -> None:
    """Refuse a --duration-s below ``MIN_DURATION_S`` (a NaN, inf or one <= 0 is ``check_args``'s own refusal)."""
    if duration_s is not None and duration_s < MIN_DURATION_S:
        raise InvalidArgumentError(
            f"--duration-s {duration_s:g}: a replay must span at least {MIN_DURATION_S:g} s of trace (the Azure "
            f"traces hold an arrival every 0.2-0.4 s): give --duration-s {MIN_DURATION_S:g} or more",
            flag="--duration-s", value=duration_s, minimum_s=MIN_DURATION_S)


def check_gpus(gpus: int) -> None:
    """Refuse --gpus below 1 with counts that run (found in review: -8 was told "e.g. 8 or 0", 0 "e.g. 8 or 8",
    0 itself refused; ``presets.cluster_shape`` keeps its own message for counts above 8 that are not whole
    servers)."""
    if gpus < 1:
        raise InvalidArgumentError(f"--gpus {gpus}: give at least 1 GPU: 1-8, or a multiple of 8 (servers hold 8 "
                                   f"GPUs), e.g. 8 or 16", flag="--gpus", value=gpus)


def search_scale_cap(preset) -> float:
    """The largest rate scale whose workload stays within ``MAX_REQUESTS`` (``preset.expected_requests``, linear in
    the scale): the max-rate search runs no scale above it (found in review: it doubled up to 16x unchecked, past
    the budget --rate-scale is refused at). Infinite where the preset generates no request."""
    per_scale = preset.expected_requests(1.0)
    if per_scale <= 0:
        return math.inf
    cap = MAX_REQUESTS / per_scale
    while preset.expected_requests(cap) > MAX_REQUESTS:  # the division's rounding: never a request over
        cap = math.nextafter(cap, 0.0)
    return cap


def check_search_budget(preset, args) -> None:
    """Refuse a max-rate search whose first run, at rate scale 1 whatever --rate-scale, would be over the request
    budget (found in review: a --rate-scale 0.5 replay passed ``check_request_budget``, then the search ran scale 1,
    about 1.3e7 requests of a 1,024-GPU preset, unchecked)."""
    expected = preset.expected_requests(1.0)
    if expected > MAX_REQUESTS:
        given = rate_flags(args, "--rate-scale", args.rate_scale)
        raise InvalidArgumentError(
            f"{given}: the max-rate search starts at rate scale 1, which would generate about {expected:.3g} "
            f"requests, more than the simulator takes ({MAX_REQUESTS:.0e}): add --no-search (the replay at "
            f"--rate-scale runs alone), or lower --rate or --duration-s", flag="--no-search",
            expected_requests=expected, limit=MAX_REQUESTS)


#: --search-iters and --slo-target when not given (the parser's default is None, so that a value given where the
#: run would not use it can be refused; ``check_unused_settings`` fills these in, as the JSON's "args" records them)
DEFAULT_SEARCH_ITERS = 4
DEFAULT_SLO_TARGET = "0.99"


def check_unused_settings(args) -> None:
    """Refuse a setting the run would take, record in its JSON and not use (found in review: --slo-target and
    --search-iters under --no-search, --search-iters under --sweep-rate, which has no search, and a
    --cold-start-band drawn for no policy: each exited 0 with results the same as without it), then fill in the
    defaults of those not given. A --sweep-rate judges its max swept rate at --slo-target, so it keeps it."""
    from warmserve.policy.registry import POLICIES
    from warmserve.sim.runner import band_policies

    if args.search_iters is not None and (args.no_search or args.sweep_rate):
        why = "--sweep-rate runs no max-rate search" if args.sweep_rate else "--no-search skips the max-rate search"
        raise InvalidArgumentError(f"--search-iters {args.search_iters}: {why}, which takes the bisection steps; "
                                   f"drop --search-iters", flag="--search-iters", value=args.search_iters)
    if args.slo_target is not None and args.no_search and not args.sweep_rate:
        raise InvalidArgumentError(f"--slo-target {args.slo_target}: --no-search skips the max-rate search, the only "
                                   f"use of the target without --sweep-rate (SLO attainment is reported as a share "
                                   f"either way); drop --slo-target", flag="--slo-target", value=args.slo_target)
    band = args.cold_start_band
    if args.sweep_rate and band is not None and band.strip().lower() not in ("", "off", "none"):
        policies = [p.strip() for p in args.policy.split(",") if p.strip() in POLICIES]
        if not band_policies(policies):
            raise InvalidArgumentError(
                f"--cold-start-band {band}: the band is drawn for the policies that start engines cold "
                f"({', '.join(band_policies(POLICIES))}), and --policy {args.policy} names none; add one to "
                f"--policy or drop --cold-start-band", flag="--cold-start-band", value=band)
    if args.search_iters is None:
        args.search_iters = DEFAULT_SEARCH_ITERS
    if args.slo_target is None:
        args.slo_target = DEFAULT_SLO_TARGET


def check_cold_start(seconds: float | None) -> None:
    """Refuse a --cold-start-s that is not a finite number >= 0 in the flag's name (found in review: inf was refused
    naming the cost model's field, "CostModel.engine_start_s is inf", NaN and -1 as "cold start of nan s")."""
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        raise InvalidArgumentError(
            f"--cold-start-s {seconds:g}: give a finite number of seconds >= 0 (the engine part of a cold start; "
            f"vLLM's published range is 14-35 s), or leave it out for the cost model's own (14 s without --profile)",
            flag="--cold-start-s", value=seconds)


def check_model_count(args, preset, cost) -> None:
    """Refuse more models than the cluster holds at once or than the workload has series for, before the workload
    is built (found in review: --models 100000 built a stretch of the trace per model and day for minutes, then
    simulated for hours, refused only by a static policy's layout if at all). The cluster: each model in
    memory takes at least one GPU's shard of its weights, so ``preset``'s GPUs hold at most as many models as
    shards of its smallest model fit their memory pools (``cost``'s GPU and models, as the simulator places
    them), and ``MODELS_PER_PLACE`` times that take turns. The servegen workload: one model per
    client series of its data, each reused shifted by up to ``SERVEGEN_REPEAT_DAYS`` days."""
    from warmserve.sim.presets import SERVEGEN_REPEAT_DAYS

    n = len(preset.models)
    given = f"--models {n}" + ("" if args.models is not None else " (the default)")
    gpus = preset.config.n_servers * preset.config.gpus_per_server

    def shard_bytes(model) -> float:  # what one GPU of an instance of ``model`` holds of its weights
        c = cost.cost(model.name, model.size)
        return c.weight_bytes / c.tp

    smallest = min(preset.models, key=shard_bytes)
    per_gpu = max(1, int(cost.gpu.pool_bytes // shard_bytes(smallest)))  # 0: too big anyway, refused elsewhere
    held = gpus * per_gpu
    most = held * MODELS_PER_PLACE
    if n > most:
        need = math.ceil(n / (per_gpu * MODELS_PER_PLACE))
        need = need if need <= 8 else math.ceil(need / 8) * 8  # servers hold 8 GPUs (``presets.cluster_shape``)
        more = f"--workload {args.preset} --gpus {need}" if args.preset in PAPER_PRESETS else f"--gpus {need}"
        raise InvalidArgumentError(
            f"{given}: {gpus} GPUs serve at most {most} models, {held} at once ({per_gpu} shards of the smallest, "
            f"{smallest.size}'s {shard_bytes(smallest) / 1e9:.3g} GB, in each GPU's {cost.gpu.pool_bytes / 1e9:.3g} "
            f"GB pool) and {MODELS_PER_PLACE} taking turns at each place: give --models {most} or fewer, or more "
            f"GPUs ({more} or more)", flag="--models", value=n, limit=most)
    kind = args.preset or args.workload or "paper-conv"
    if kind == "servegen" or (kind == "scale" and args.workload in (None, "servegen")):
        from warmserve.workload.servegen import LANGUAGE_MODELS, load_client_windows

        series = len(load_client_windows(None, LANGUAGE_MODELS))
        most = series * (1 + SERVEGEN_REPEAT_DAYS)
        if n > most:
            raise InvalidArgumentError(
                f"{given}: the servegen workload has {most} models' series ({series} ServeGen clients, each also "
                f"shifted by 1-{SERVEGEN_REPEAT_DAYS} days): give --models {most} or fewer", flag="--models",
                value=n, limit=most)


def check_profile_fits(args, preset, cost) -> None:
    """Refuse a --profile whose GPU cannot serve the run's models, naming the profile as the cause (found in review:
    `warmserve simulate --profile` of a `warmserve calibrate` profile, CPU workers of about 1 GiB measured with the
    demo models, ended after the workload was built in "model 'llama2-13b-a' cannot be served ... raise tp or use
    larger GPUs", which blamed the models). The rule is the simulator's own (``ClusterState.unservable``)."""
    if not args.profile:
        return
    from warmserve.policy.state import ClusterState
    from warmserve.sim.inputs import model_infos

    state = ClusterState.uniform(preset.config.n_servers, model_infos(preset.models, cost),
                                 gpus_per_server=preset.config.gpus_per_server, gpu_bytes=cost.gpu.pool_bytes)
    bad = state.unservable()
    if not bad:
        return
    need = {m: state.models[m].shard_bytes + state.models[m].kv_block_bytes for m in bad}
    models = ", ".join(f"{m} ({need[m] / 1e9:.3g} GB a GPU)" for m in sorted(bad))
    gpu = cost.gpu
    if gpu.name.startswith("cpu-worker-"):  # the GPU name calibrate writes (``calibrate.build_profile``)
        why = ("it is a `warmserve calibrate` profile of CPU workers and the demo models, for the simulated twin of "
               "`warmserve bench replay --profile`, not for these GPUs: leave --profile out (--gpu sets the GPU), "
               "or give a profile of GPUs that hold these models")
    else:
        why = "give a profile whose gpu.memory_bytes x gpu.pool_fraction holds them, or leave --profile out"
    raise InvalidArgumentError(
        f"--profile {args.profile}: its GPU {gpu.name!r} ({gpu.pool_bytes / 1e9:.3g} GB pool) cannot serve the "
        f"{preset.name} run's models {models}: {why}", flag="--profile", value=args.profile, models=sorted(bad),
        pool_bytes=gpu.pool_bytes)


#: how many models ``check_model_count`` lets take turns at each place the GPUs' memory has for one: models beyond
#: what the cluster holds at once are served by cold starts in turn (serverless serving's regime, so allowed), but
#: past a few per place each is resident a fraction of the time at best, the run is mostly cold starts, and it runs
#: slowly (found in review: 300 models on 16 GPUs, 90 s for a 10 s replay). A bound on run time and meaning, not a
#: limit of the simulator
MODELS_PER_PLACE = 4

#: the presets that run the paper's 16 GPUs whatever --gpus (``cli.build_preset``): more GPUs take --workload
PAPER_PRESETS = ("paper-conv", "paper-code", "artifact-conv", "artifact-code")


def check_models(args, preset, cost) -> None:
    """``check_model_count``, then the power-law split of an Azure workload's rate over the models: (i+1)^-alpha
    overflows a float for a very negative --alpha (found in review: --alpha -1000 gave NaN shares and was refused as
    "circular stretch rate_rps=nan", naming neither the flag nor the fix)."""
    from warmserve.workload.recipes import power_law_shares

    check_profile_fits(args, preset, cost)
    check_model_count(args, preset, cost)
    if args.alpha is None:
        return
    try:
        power_law_shares(len(preset.models), args.alpha)
    except InvalidArgumentError:
        n = len(preset.models)  # n terms of at most n^-alpha each: their sum stays a float down to this alpha
        least = -math.log(sys.float_info.max / n) / math.log(n)
        raise InvalidArgumentError(
            f"--alpha {args.alpha:g}: the split of the rate over {n} models, (i+1)^-alpha, overflows "
            f"a float: give --alpha {math.ceil(least)} or more (1: the paper presets')", flag="--alpha",
            value=args.alpha) from None


#: the most --history-days of an Azure workload. Found in review: --history-days 100000 (with a low --rate, inside
#: the request budget) built a stretch of the trace per model and day for tens of minutes, then a policy history
#: of every window of them. The Azure recipes re-read their trace's one hour at other offsets for each history day;
#: ServeGen, the only multi-day data here, holds 13 days before the day it replays, and no workload more
MAX_AZURE_HISTORY_DAYS = 13


def check_workload_days(args) -> None:
    """Refuse the days --history-days and --start-hour ask of the workload that it has not got, naming the flags:
    an Azure workload's history days above ``MAX_AZURE_HISTORY_DAYS``, and a servegen replay starting outside
    ServeGen's last day (found in review: --start-hour nan or -1 was refused as "start hour -1 ... runs past the
    end of ServeGen's last day", naming no flag). Its history days are the servegen recipe's own refusal."""
    kind = args.preset or args.workload or "paper-conv"
    servegen = kind == "servegen" or (kind == "scale" and args.workload in (None, "servegen"))
    if not servegen and args.history_days is not None and args.history_days > MAX_AZURE_HISTORY_DAYS:
        raise InvalidArgumentError(
            f"--history-days {args.history_days}: the Azure workloads take at most {MAX_AZURE_HISTORY_DAYS} history "
            f"days (each re-reads their trace's hour; ServeGen, the longest data here, holds "
            f"{MAX_AZURE_HISTORY_DAYS} days before the replayed one): give --history-days {MAX_AZURE_HISTORY_DAYS} "
            f"or fewer", flag="--history-days", value=args.history_days, limit=MAX_AZURE_HISTORY_DAYS)
    if servegen and args.start_hour is not None:
        from warmserve.workload.recipes import DAY_S

        duration_s = args.duration_s or 3600.0  # ``cli.build_preset``'s default for servegen
        latest = (DAY_S - duration_s) / 3600.0
        if not (math.isfinite(args.start_hour) and 0.0 <= args.start_hour <= latest):
            raise InvalidArgumentError(
                f"--start-hour {args.start_hour:g}: a servegen replay of {duration_s:g} s (--duration-s) starts and "
                f"ends on ServeGen's last day: give --start-hour between 0 and {latest:.4g}", flag="--start-hour",
                value=args.start_hour)


def check_servegen_start(args) -> None:
    """Refuse a servegen replay the recipe would refuse (no room for --history-days before it, a data gap of a chosen
    series inside it), in the flags' terms and with a --start-hour on ServeGen's last day that works. Found in
    review: `--start-hour 0 --history-days 13` and `--duration-s 86400 --start-hour 0` were refused in the recipe's
    terms (start_s=1123200, pre_s=600), the latter suggesting a start_s on day 8, which no flag can give. After
    ``check_models``, whose refusal of too many models comes first."""
    from warmserve.sim.presets import RECIPE_WARMUP_S, SCALE_N_MODELS, SERVEGEN_REPEAT_DAYS
    from warmserve.workload.recipes import DAY_S, SERVEGEN_LAST_DAY_S
    from warmserve.workload.servegen_starts import ReplayStarts

    kind = args.preset or args.workload or "paper-conv"
    if not (kind == "servegen" or (kind == "scale" and args.workload in (None, "servegen"))):
        return
    n = SCALE_N_MODELS if args.models is None else args.models
    duration_s = args.duration_s or 3600.0  # ``cli.build_preset``'s defaults for servegen
    days = 2 if args.history_days is None else args.history_days
    hour = 20.0 if args.start_hour is None else args.start_hour
    try:
        starts = ReplayStarts(n, duration_s, RECIPE_WARMUP_S, days, SERVEGEN_REPEAT_DAYS)
    except InvalidArgumentError:
        return  # more models than series: ``check_model_count`` says so, in the flag's terms
    why = starts.problem(SERVEGEN_LAST_DAY_S + hour * 3600.0)  # as ``presets.scale_preset`` places it
    if why is None:
        return
    fit = None
    for c in starts.fitting(SERVEGEN_LAST_DAY_S + hour * 3600.0, SERVEGEN_LAST_DAY_S,
                            SERVEGEN_LAST_DAY_S + DAY_S - duration_s):
        h = (c - SERVEGEN_LAST_DAY_S) / 3600.0
        # the hour as shown, read back as the flag is, must fit too: a start on a window's edge does, a hair off not
        fit = next((x for x in (f"{h:.4g}", repr(h)) if starts.problem(SERVEGEN_LAST_DAY_S + float(x) * 3600.0)
                    is None), None)
        if fit is not None:
            break
    fix = (f"give --start-hour {fit} (the nearest start on the same 10-minute phase that fits)" if fit is not None
           else "no --start-hour on ServeGen's last day fits: give fewer --history-days, a shorter --duration-s, "
                "or fewer --models")
    given = " ".join(f"{flag} {v:g}" + ("" if mine is not None else " (the default)") for flag, v, mine in (
        ("--start-hour", hour, args.start_hour), ("--duration-s", duration_s, args.duration_s),
        ("--history-days", days, args.history_days), ("--models", n, args.models)))
    raise InvalidArgumentError(
        f"{given}: the servegen replay (with its {RECIPE_WARMUP_S:g} s warm-up) cannot be built: {why}; {fix}",
        flag="--start-hour", value=hour,
        suggested_start_hour=None if fit is None else float(fit))
