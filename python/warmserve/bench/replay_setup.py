"""The set-up of `warmserve bench replay` (``warmserve.bench.replay``): its arguments checked up front, the
per-policy options, the --reuse-live check, where the trace's t = 0 and the history go on a live cluster, the
live cluster's and the twin's cost models and history, the warm-up's replay, and the server's counters.

A live cluster starts ahead of t = 0 (--start-lead-s) and its policy books every window it waits through with no
load, over whatever the history said of it (``policy.core.Policy._meter_set``: the first tick makes the window
meter, which closes each window it passes). So t = 0 is put on the policy's window grid, ``idle_windows``
windows after the launch's window, the history's requests in those windows are dropped and the history handed
to the cluster says they were idle, and the twin's clock starts at the first of them with nothing to replay:
live and twin forecast the first replayed window from the same history, whatever the instant of the launch.

With --warmup-s the trace's last seconds before t = 0 are replayed too, unmeasured, as a cluster in its steady
state would have met them: the idle lead then comes before the warm-up (its start is what goes on the grid), the
history ends where the idle windows begin (the warm-up's windows are live load, never history as well), and the
twin replays the same requests as its own warm-up (``SimConfig.warmup_s``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import replace

import numpy as np

from warmserve.bench.replay_checks import policy_names, read_reuse_live
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig, policy_config_from_dict
from warmserve.sim.metrics import pct

#: demo checkpoints the served models are copies of, in order (model i serves CHECKPOINTS[i % len])
CHECKPOINTS = ("llama-20m", "qwen2-30m", "llama-90m")
#: PolicyConfig fields given in trace seconds and scaled by --time-scale: its *_s fields but window_s (that is
#: --window-s), coserve_tpot_s (a decode step's latency, which compressing the trace's time does not shorten),
#: max_starved_s (a wait held against the clients' request timeout, wall seconds) and the *_per_s rates.
TRACE_TIME_OPTIONS = tuple(sorted(f.name for f in dataclasses.fields(PolicyConfig) if f.name.endswith("_s")
                                  and not f.name.endswith("_per_s")
                                  and f.name not in ("window_s", "coserve_tpot_s", "max_starved_s")))
#: The arguments that make the workload and the live cluster: --reuse-live refuses an earlier run that differs.
WORKLOAD_ARGS = ("models", "checkpoints", "cpu_workers", "duration_s", "time_scale", "rate", "history_days", "pre_s",
                 "start_s", "max_prompt_tokens", "max_output_tokens", "window_s", "drain_s", "seed", "vocab_size",
                 "start_lead_s", "endpoint", "served_names", "warmup_s")
#: History window starts are written this far inside their window: a Unix time near 1.7e9 s carries ~2e-7 s of
#: precision, enough for the controller's floor(start / window) to fall one window short of a start on the edge.
GRID_NUDGE_S = 1e-3
#: what an --endpoint run is called where no --policy names it (no policy of ours runs there)
ENDPOINT_LABEL = "endpoint"
#: the flags that set the launched cluster or the simulated twin, which an --endpoint run has neither of
CLUSTER_ONLY_FLAGS = ("--profile", "--sim-size", "--sim-compute-scale", "--sim-host-cores", "--start-lead-s",
                      "--log-dir", "--cpu-workers")
#: the largest token count the engines and the client take (int32)
MAX_TOKENS = 2**31 - 1


class Given(argparse.Action):
    """argparse's "store" that also notes the flag in ``args.given_flags``, so that a check can tell a flag given
    at its default value from one left alone (``check_endpoint_args``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "given_flags", [*getattr(namespace, "given_flags", []), self.option_strings[0]])


def check_endpoint_args(args) -> None:
    """With --endpoint no cluster starts and no twin runs: refuse the flags that set them (found in review: they
    were accepted and ignored, no twin ran, and nothing said so), and --policy beyond one name, which there is a
    label only (found in review: the default warmserve,autoscale replayed the same server twice and printed a
    ratio of two policies that never ran)."""
    given = getattr(args, "given_flags", [])
    ignored = [f for f in CLUSTER_ONLY_FLAGS if f in given]
    if ignored:
        raise InvalidArgumentError(f"{', '.join(ignored)}: --endpoint replays a running server, with no cluster of "
                                   f"ours and no simulated twin, so {'these set' if len(ignored) > 1 else 'it sets'} "
                                   f"nothing there: drop {'them' if len(ignored) > 1 else 'it'}, or drop --endpoint",
                                   flags=ignored)
    names = policy_names(args.policy)
    if "--policy" in given and len(names) != 1:
        raise InvalidArgumentError(f"--policy {args.policy!r} with --endpoint: the server runs its own policy, so "
                                   f"--policy is only the run's label there, one name (e.g. --policy vllm); "
                                   f"{len(names)} names would replay the same server {len(names)} times",
                                   option="policy", names=names)


def run_policies(args) -> list[str]:
    """The names the runs go under: --policy's policies, or with --endpoint the one label (``ENDPOINT_LABEL`` where
    --policy is not given: the default policies do not run there). An empty list or a name twice is refused
    (``policy_names``)."""
    if args.endpoint and "--policy" not in getattr(args, "given_flags", []):
        return [ENDPOINT_LABEL]
    return policy_names(args.policy)


def model_suffix(k: int) -> str:
    """The served model's suffix of rank ``k`` on its checkpoint: a..z, then aa, ab, ..., zz, aaa (found in review:
    chr(97 + k) ran past z into '{|}~' and control characters, and a '}' in a model label lost its counters)."""
    s = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        s = chr(ord("a") + r) + s
    return s


def check_args(args) -> None:
    """Refuse, each with its fix, the values the run would otherwise fail on later (in a traceback, or in the
    `serve` child after minutes of earlier policies)."""
    def flag(k):
        return "--" + k.replace("_", "-")

    run_policies(args)  # an empty or repeated --policy, refused before any workload or cluster (replay_checks)

    for k, lo in (("time_scale", 0), ("rate", 0), ("duration_s", 0), ("window_s", 0), ("pre_s", None),
                  ("drain_s", None), ("start_lead_s", None), ("warmup_s", None)):
        v = getattr(args, k)
        if not math.isfinite(v) or v < 0 or (lo is not None and v <= lo):
            raise InvalidArgumentError(f"{flag(k)} must be a finite number {'> 0' if lo is not None else '>= 0'}, "
                                       f"got {v:g}", option=k)
    for k, lo in (("models", 1), ("cpu_workers", 1), ("history_days", 0), ("max_prompt_tokens", 1),
                  ("max_output_tokens", 1), ("vocab_size", 4)):
        if getattr(args, k) < lo:
            raise InvalidArgumentError(f"{flag(k)} must be >= {lo}, got {getattr(args, k)}", option=k)
    # found in review: these reached numpy unchecked ("cannot convert float NaN to integer", numpy's "expected
    # non-negative integer", an OverflowError traceback), naming no flag
    if args.start_s is not None and not (math.isfinite(args.start_s) and args.start_s >= 0):
        raise InvalidArgumentError(f"--start-s must be a finite number >= 0 (seconds from day 0 midnight of the "
                                   f"ServeGen trace), got {args.start_s:g}", option="start_s")
    if args.seed < 0:
        raise InvalidArgumentError(f"--seed must be >= 0, got {args.seed}", option="seed")
    for k in ("max_prompt_tokens", "max_output_tokens"):
        if getattr(args, k) > MAX_TOKENS:
            raise InvalidArgumentError(f"{flag(k)} must be <= {MAX_TOKENS} (int32), got {getattr(args, k)}",
                                       option=k)
    if args.endpoint:
        check_endpoint_args(args)
    if args.reuse_live:  # read again by the run; here so that a bad file is refused before the workload is built
        read_reuse_live(args.reuse_live)
    if args.warmup_s > args.pre_s:
        raise InvalidArgumentError(f"--warmup-s {args.warmup_s:g} is longer than the --pre-s {args.pre_s:g} s of "
                                   f"trace before t = 0 that the workload holds: raise --pre-s to at least "
                                   f"{args.warmup_s:g} or shorten --warmup-s", option="warmup_s")
    ckpts = [c.strip() for c in args.checkpoints.split(",") if c.strip()]
    if not ckpts:
        raise InvalidArgumentError(f"--checkpoints {args.checkpoints!r} names no checkpoint: give demo checkpoints, "
                                   f"e.g. --checkpoints {','.join(CHECKPOINTS)}")
    if args.served_names and not args.endpoint:
        # found in review: the requests went out under these names to a cluster serving others (all HTTP 404)
        raise InvalidArgumentError(f"--served-names {args.served_names!r} renames the requests for an --endpoint "
                                   f"server; the cluster this run launches serves its own names: drop "
                                   f"--served-names, or give --endpoint URL", option="served_names")
    if args.api_key is not None and not args.endpoint:  # found in review: taken and ignored without a word
        raise InvalidArgumentError("--api-key is the Bearer key for an --endpoint server; the cluster this run "
                                   "launches takes none: drop --api-key, or give --endpoint URL", option="api_key")
    if args.served_names is not None and not [n for n in args.served_names.split(",") if n]:
        raise InvalidArgumentError(f"--served-names {args.served_names!r} names no model: give the server's names, "
                                   f"comma-separated", option="served_names")
    if not args.endpoint:
        from warmserve.engine.demo import DEMO_MODELS, SIZED_MODELS

        known = list(DEMO_MODELS) + [n for n, _ in SIZED_MODELS.values()]
        unknown = [c for c in ckpts if c not in known]
        if unknown:
            raise InvalidArgumentError(f"--checkpoints: unknown demo checkpoints {unknown}; choose from "
                                       f"{', '.join(known)}", checkpoints=unknown)
        check_context(args, ckpts)
    w = args.window_s * args.time_scale
    if w < 86400 and abs(86400 / w - round(86400 / w)) > 1e-9:
        # the policy refuses such a window (its daily season would drift); say which time scales work instead
        fit = [float(f"{d / args.window_s:.6g}") for d in range(1, 86401) if 86400 % d == 0]
        fit = [t for t in fit if abs(86400 / (t * args.window_s) - round(86400 / (t * args.window_s))) <= 1e-9]
        near = min(fit, key=lambda t: abs(t - args.time_scale))
        raise InvalidArgumentError(
            f"--window-s {args.window_s:g} x --time-scale {args.time_scale:g} = {w:g} s windows, which do not divide "
            f"a day ({86400 / w:.3f} a day): the policy's daily season would drift. Fix: --time-scale {near:g}, or "
            f"a --window-s whose product with the time scale divides 86400", window_s=w)


def check_context(args, ckpts: list[str]) -> None:
    """Refuse caps whose longest request does not fit the smallest context among the checkpoints (their config's
    max_position_embeddings, which the live controller takes as the model's context). Found in review:
    `--checkpoints llama-20m --max-prompt-tokens 6000` ran; the live server refused the longer prompts (HTTP 400,
    counted unanswered, a 20 s P99) and the simulated twin served them, so the two replayed different workloads."""
    from warmserve.engine.demo import demo_spec

    ctx = {c: demo_spec(c).max_position_embeddings for c in ckpts}
    small = min(ckpts, key=ctx.__getitem__)
    n, p, o = ctx[small], args.max_prompt_tokens, args.max_output_tokens
    if p + o <= n:
        return
    fix = (f"--max-prompt-tokens {n - o} or less" if o < n else
           f"--max-output-tokens below {n} and --max-prompt-tokens at most {n} minus it")
    if any(ctx[c] > n for c in ckpts):
        fix += f", or drop {small} from --checkpoints"
    raise InvalidArgumentError(f"--max-prompt-tokens {p} + --max-output-tokens {o} = {p + o} tokens, past the "
                               f"{n}-token context of checkpoint {small} (its max_position_embeddings): the live "
                               f"server refuses such a request (HTTP 400) where the simulated twin would serve it. "
                               f"Fix: {fix}",
                               checkpoint=small, context_tokens=n, prompt_tokens=p, output_tokens=o)


def policy_options(args, policies: list[str]) -> dict[str, dict[str, str]]:
    """Per policy, the --policy-option fields as the cluster's policy gets them (KEY -> VALUE text, times in wall
    seconds). A ``POLICY:`` prefix wins over the same field given for every policy."""
    from warmserve.config import POLICY_INF_HINT, policy_number_ok
    from warmserve.policy.registry import POLICIES, fixed_options

    if args.policy_option and args.endpoint:
        raise InvalidArgumentError("--policy-option sets a warmserve cluster's policy; with --endpoint there is none: "
                                   "drop it")
    common: dict[str, str] = {}
    only: dict[str, dict[str, str]] = {p: {} for p in policies}
    for item in args.policy_option:
        head, sep, value = item.partition("=")
        pol, colon, key = head.rpartition(":")
        pol, key, value = pol.strip(), key.strip(), value.strip()
        if not sep or not key:
            raise InvalidArgumentError(f"--policy-option {item!r}: write [POLICY:]KEY=VALUE, e.g. "
                                       f"autoscale:load_window_s=60")
        if key == "window_s":
            raise InvalidArgumentError("--policy-option window_s: give the forecast window as --window-s (trace "
                                       "seconds, scaled by --time-scale)", option=key)
        if colon and pol not in only:
            raise InvalidArgumentError(f"--policy-option {item!r}: {pol!r} is not one of the policies run "
                                       f"(--policy {','.join(policies)})", policy=pol)
        if key in TRACE_TIME_OPTIONS:
            try:
                value = repr(float(value) * args.time_scale)
            except ValueError:
                raise InvalidArgumentError(f"--policy-option {item!r}: {key} is a time in trace seconds, not "
                                           f"{value!r}", option=key) from None
        (only[pol] if colon else common)[key] = value
    out = {}
    for p in policies:
        opts = {**common, **only[p]}
        cfg = policy_config_from_dict(opts, PolicyConfig(window_s=args.window_s * args.time_scale),
                                      where=f"--policy-option (policy {p})")
        for k in opts:  # what the `serve` child would refuse, refused before any policy runs
            if not policy_number_ok(k, getattr(cfg, k)):
                raise InvalidArgumentError(f"--policy-option {k}={opts[k]}: must be a finite number "
                                           f"({POLICY_INF_HINT})", option=k)
        fixed = fixed_options(POLICIES[p]) if p in POLICIES else {}  # consolidate too, where co-serving is off
        clash = sorted(k for k in opts if k in fixed and getattr(cfg, k) != fixed[k])
        if clash:
            raise InvalidArgumentError(
                f"--policy-option {', '.join(f'{k}={opts[k]}' for k in clash)}: policy {p} fixes "
                f"{', '.join(f'{k}={fixed[k]!r}' for k in clash)} over any option (policy/registry.py), so the "
                f"option would be ignored. Fix: drop it, or prefix it with the other policies "
                f"(e.g. {next((q for q in policies if q != p), 'warmserve')}:{clash[0]}=...)", policy=p, options=clash)
        out[p] = opts
    return out


def check_reuse(earlier: dict, path: str, args, policies: list[str], options: dict, n_requests: int,
                defaults: dict) -> None:
    """Refuse live figures from a run of another workload or cluster, naming every argument that differs.
    ``defaults``: the command's defaults, for arguments an older run's JSON does not list."""
    then = argparse.Namespace(**{**defaults, **(earlier.get("args") or {})})
    diff = [f"--{k.replace('_', '-')} {getattr(then, k)!r} there, {getattr(args, k)!r} here" for k in WORKLOAD_ARGS
            if getattr(then, k) != getattr(args, k)]
    missing = [p for p in policies if p not in (earlier.get("policies") or {})]
    if missing:
        diff.append(f"no live results for {missing} there")
    else:
        try:
            opts = policy_options(then, policies)
        except InvalidArgumentError as e:
            opts = {p: f"unusable ({e})" for p in policies}
        diff += [f"--policy-option for {p}: {opts[p]} there, {options[p]} here" for p in policies
                 if opts[p] != options[p]]
    if (earlier.get("workload") or {}).get("requests") != n_requests:
        diff.append(f"{(earlier.get('workload') or {}).get('requests')} requests there, {n_requests} here")
    if diff:
        raise InvalidArgumentError(f"--reuse-live {path} is another workload or cluster: {'; '.join(diff)}. Fix: "
                                   f"pass the arguments of that run (its \"args\"), or run live again",
                                   differ=diff)


# --------------------------------------------------------------------------------------------------- idle lead

def history_rows(w, served_sim, cost, window_s: float, t0_unix: float, warmup_s: float = 0.0,
                 idle_windows: int = 0, live_warmup_s: float = 0.0) -> list[tuple]:
    """(model, window_start_s in Unix time, avg, peak): the simulator's own history windows before the warm-up,
    moved so that the trace's t = 0 falls at ``t0_unix``, then ``idle_windows`` windows of no load for every
    model just before the window of t = -``live_warmup_s`` (where the replayed warm-up starts). Missing (NaN)
    windows are left out."""
    from warmserve.sim.inputs import history_windows

    rows = []
    for m, (starts, avg, peak) in history_windows(w, served_sim, cost, warmup_s, window_s).items():
        for s, a, pk in zip(starts, avg, peak):
            if np.isfinite(a) and np.isfinite(pk):
                rows.append((m, t0_unix + (float(s) - w.clock0_s) + GRID_NUDGE_S, float(a), float(pk)))
    j = math.floor((w.clock0_s - live_warmup_s) / window_s + 1e-9)
    for i in range(j - idle_windows, j):
        rows += [(s.name, t0_unix + (i * window_s - w.clock0_s) + GRID_NUDGE_S, 0.0, 0.0) for s in served_sim]
    return rows


def idle_windows(args) -> int:
    """Windows the cluster waits through before the one the replay (its warm-up, if any) starts in: the
    launch's window and enough more that the replay starts at least --start-lead-s after the launch (it can be
    up to a window more)."""
    return 1 + math.ceil(args.start_lead_s / (args.window_s * args.time_scale) - 1e-9)


def warmup_span_s(args) -> float:
    """--warmup-s on the workload's (wall) clock: the replayed warm-up is [-warmup_span_s, 0)."""
    return args.warmup_s * args.time_scale


def with_idle_lead(w, window_s: float, n_idle: int, live_warmup_s: float = 0.0):
    """The workload as the live cluster meets it, and the twin's warm-up that makes the simulator meet it alike:
    (workload, warmup_s). The cluster idles through the ``n_idle`` windows before the window where the replay
    starts (t = -``live_warmup_s``) and its policy books them with no load (over what any history said), so the
    history's requests from the first of them up to the replay's start are dropped; the twin's clock starts at
    the first of them, with nothing to replay before the live warm-up's requests, which the history keeps."""
    j = math.floor((w.clock0_s - live_warmup_s) / window_s + 1e-9)
    idle_from = (j - n_idle) * window_s - w.clock0_s  # trace seconds, < -live_warmup_s
    a = w.history.arrival_s
    history = w.history.select((a < idle_from) | (a >= -live_warmup_s) if live_warmup_s > 0 else a < idle_from)
    # a hair short, so that the twin's first tick lands inside the first idle window, never at the end of the one
    # before it (which the twin would then book as idle too)
    return replace(w, history=history), -idle_from - 1e-6


#: The time zone a replay's live cluster follows (`--load-timezone`): the twin's days are 86400 s long (the
#: simulator's ``policy.calendar.Calendar``), and so are UTC's, wherever the bench runs; a local zone's switch
#: inside the history would move the live slots an hour from the twin's.
REPLAY_ZONE = "UTC"


def replay_start(t_launch_unix: float, clock0_s: float, window_s: float, n_idle: int,
                 earliest_rel_s: float | None = None, live_warmup_s: float = 0.0) -> float:
    """Unix time of the trace's t = 0 for a cluster launched at ``t_launch_unix``: the replay's start
    (t = -``live_warmup_s``) ``n_idle`` windows after the launch's window on the policy's grid (windows counted
    from its clock origin, a UTC midnight, as the controller counts them under ``REPLAY_ZONE``), at the offset it has in
    its window in the simulator. ``earliest_rel_s``: the earliest history window start, seconds from t = 0 (history
    older than a week moves the origin)."""
    from warmserve.controller.controller import policy_clock_origin

    c = clock0_s - live_warmup_s
    phase = c - math.floor(c / window_s + 1e-9) * window_s
    origin = policy_clock_origin(t_launch_unix, None, REPLAY_ZONE)
    for _ in range(3):  # the origin depends on the history's placement, which depends on the origin
        t0 = origin + (math.floor((t_launch_unix - origin) / window_s) + n_idle) * window_s + max(phase, 0.0) \
            + live_warmup_s
        hist = None if earliest_rel_s is None else {"": (np.array([t0 + earliest_rel_s]),) * 3}
        now = policy_clock_origin(t_launch_unix, hist, REPLAY_ZONE)
        if now == origin:
            break
        origin = now
    return t0


def plan_live_history(w, served_sim, cost, args, t_launch_unix: float) -> tuple[float, list[tuple]]:
    """(t0_unix, history rows) for a cluster launched at ``t_launch_unix``: the replay's start (its warm-up's,
    t0_unix - ``warmup_span_s``) on the policy's grid after the idle lead, the history (none without a cost
    model) ending where the idle windows begin and those windows idle, as ``run_sim`` gives the twin.
    ``served_sim``, ``cost``: the live cluster's models and the plain --profile (``live_history_models``), never
    the twin's --sim-* ones."""
    window_s = args.window_s * args.time_scale
    n_idle = idle_windows(args)
    warm_s = warmup_span_s(args)
    w, warmup_s = with_idle_lead(w, window_s, n_idle, warm_s)
    rel = [] if cost is None else history_rows(w, served_sim, cost, window_s, 0.0, warmup_s, n_idle, warm_s)
    t0 = replay_start(t_launch_unix, w.clock0_s, window_s, n_idle, min((r[1] for r in rel), default=None), warm_s)
    return t0, [(m, t0 + s, a, pk) for m, s, a, pk in rel]


# --------------------------------------------------------------------------------------------------- live and twin

#: --profile values that name the paper's GPU latency model (``CostModel.for_gpu``), a what-if for the twin
GPU_PROFILES = ("H100-80GB", "A100-80GB")


def cost_models(args) -> tuple:
    """(the live cluster's cost model, the twin's): --profile as given, which the live cluster's history is
    computed with, and the twin's with --sim-compute-scale and --sim-host-cores on top (found in review: they
    changed the live cluster's history too, though they describe only the twin); (None, None) without --profile."""
    from warmserve.sim.costmodel import CostModel

    if not args.profile:
        return None, None
    live = CostModel.for_gpu(args.profile) if args.profile in GPU_PROFILES else CostModel.from_profile(args.profile)
    twin = live
    if args.sim_compute_scale:
        twin = replace(twin, gpu=replace(twin.gpu, compute_scale=args.sim_compute_scale))
    if args.sim_host_cores is not None:
        twin = replace(twin, gpu=replace(twin.gpu, host_cores=args.sim_host_cores))
    return live, twin


def live_history_models(args, served_live: list, live_cost) -> tuple | None:
    """(served models, cost model) the live cluster's history is computed from: its real checkpoints and the plain
    --profile. None without a profile, and where the profile has no latencies for the checkpoints (a GPU latency
    model): a live run is refused then, before any cluster starts; a --reuse-live twin forecasts from its own
    history, as the live run's came from a profile this run does not have."""
    if live_cost is None:
        return None
    missing = [s.size for s in served_live if s.name not in live_cost.models and s.size not in live_cost.models]
    if not missing:
        return served_live, live_cost
    if not args.reuse_live:
        raise InvalidArgumentError(
            f"--profile {args.profile} has no latencies for the checkpoints {sorted(set(missing))}, which the live "
            f"cluster's forecast history is computed from (--sim-size sets only the twin's models). Fix: a profile of "
            f"this machine (`warmserve calibrate --out P.json`, then --profile P.json), and the GPU what-if afterwards "
            f"with --reuse-live", profile=args.profile, checkpoints=sorted(set(missing)))
    return None


def twin_history(w, history_from: tuple | None, warmup_s: float, window_s: float) -> dict | None:
    """The twin's policy history: the live cluster's, from ``history_from`` (``live_history_models``; None: the
    twin's own, None here). The twin predicts what that cluster does, so its forecasts must start where the live
    policy's did, whatever the --sim-* flags make of its latencies (with them its own history differed from the live
    one in most rows)."""
    from warmserve.sim.inputs import history_windows

    return None if history_from is None else history_windows(w, *history_from, warmup_s, window_s)


# --------------------------------------------------------------------------------------------------- warm-up replay

def trace_requests(tr, vocab_size: int, seed) -> list:
    """The client's requests of a trace (arrivals as the trace has them), with synthetic prompts."""
    from warmserve.workload.replay_client import ReplayRequest, synthetic_prompts

    prompts = synthetic_prompts(tr.prompt_tokens, vocab_size, seed)
    return [ReplayRequest(float(t), tr.models[m], p, int(o))
            for t, m, p, o in zip(tr.arrival_s.tolist(), tr.model.tolist(), prompts, tr.output_tokens.tolist())]


def live_schedule(warm: list, reqs: list, live_warmup_s: float) -> list:
    """What the client sends, in order: the warm-up's requests (arrivals in [-live_warmup_s, 0)) then the
    measured ones, every arrival counted from the replay's start, t = -live_warmup_s."""
    if not warm and live_warmup_s == 0:
        return reqs
    return [replace(r, arrival_s=r.arrival_s + live_warmup_s) for r in [*warm, *reqs]]


def split_outcomes(outs: list, n_warm: int, live_warmup_s: float) -> tuple[list, list]:
    """(warm-up outcomes, measured outcomes) of a ``live_schedule`` replay, their times moved back to seconds from
    t = 0 (a warm-up request's arrival is < 0) and the measured ones indexed from 0, as without a warm-up."""
    if n_warm == 0 and live_warmup_s == 0:
        return [], outs

    def back(o, k):
        return replace(o, index=o.index - k, arrival_s=o.arrival_s - live_warmup_s, sent_s=o.sent_s - live_warmup_s,
                       first_s=o.first_s - live_warmup_s, end_s=o.end_s - live_warmup_s)

    return [back(o, 0) for o in outs[:n_warm]], [back(o, n_warm) for o in outs[n_warm:]]


async def replay_marked(cfg, requests: list, mark_s: float, on_mark, progress=None) -> tuple[list, object]:
    """``replay_client.replay`` of ``requests``, and what ``on_mark()`` (run in a thread, e.g. the server's
    counters) returned ``mark_s`` seconds after the replay's start: (outcomes, mark); no mark when mark_s <= 0."""
    import asyncio

    from warmserve.workload.replay_client import replay

    async def mark():
        await asyncio.sleep(mark_s)
        return await asyncio.to_thread(on_mark)

    task = asyncio.create_task(mark()) if mark_s > 0 else None
    outs = await replay(cfg, requests, progress=progress)
    return outs, (await task if task is not None else None)


# --------------------------------------------------------------------------------------------------- server counters

def _open_direct(url: str, timeout_s: float, headers: dict | None = None):
    """urlopen with no proxy from the environment, as the replay's client (aiohttp, trust_env off). Found in review:
    with $http_proxy set, /metrics and /stats went to the proxy, and a replay lost its prewarm hits and starts."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s)


def fetch_prewarm_metrics(url: str) -> dict | None:
    """Prewarm hits and misses (summed over models) from a warmserve server's /metrics; None from a server
    that has no such metrics (another OpenAI-compatible server), or whose exposition does not parse (the counts
    unknown rather than short)."""
    import urllib.error

    try:
        with _open_direct(url.rstrip("/") + "/metrics", 30) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if "warmserve_prewarm_" not in text:
        return None
    try:
        return parse_prewarm_metrics(text)
    except ValueError:
        return None


def fetch_engine_starts(url: str) -> list | None:
    """The fresh engine processes a warmserve server started for cold starts without a warm engine (`autoscale`),
    from its /stats (``engine_starts``: stop_s, start_s per start); None from a server without them."""
    import urllib.error

    try:
        with _open_direct(url.rstrip("/") + "/stats", 30) as r:
            return json.loads(r.read()).get("engine_starts")
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None


def engine_start_summary(starts: list) -> dict:
    """Count and median/max of the fresh engine processes' start (spawn to admitted) and the old ones' stop."""
    out = {"engine_starts": len(starts)}
    for k in ("start_s", "stop_s"):
        x = np.array([e[k] for e in starts], float)
        out[f"engine_{k.split('_')[0]}_p50_s"] = pct(x, 50) if len(x) else float("nan")
        out[f"engine_{k.split('_')[0]}_max_s"] = float(x.max()) if len(x) else float("nan")
    return out


def parse_prewarm_metrics(text: str) -> dict:
    """Prewarm hits, misses and starts from a prewarm still loading, and requests migrated
    (``warmserve_migrated_requests``), summed over models, read
    with prometheus_client's parser (found in review: a regex lost the model whose label held a '}'). ValueError
    on an exposition that does not parse."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"prewarm_hits": 0.0, "prewarm_misses": 0.0, "prewarm_loading_starts": 0.0, "migrated_requests": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # a counter's value is its _total sample (the bare name where untyped); its _created is no count
            name = sample.name.removeprefix("warmserve_").removesuffix("_total")
            if name in out:
                out[name] += float(sample.value)
    return out


def counters_between(later: dict | None, earlier: dict | None) -> dict | None:
    """Counter increments from ``earlier`` to ``later`` (None where either is unknown)."""
    if later is None or earlier is None:
        return None
    return {k: later[k] - earlier.get(k, 0.0) for k in later}


def starts_after(later: list | None, earlier: list | None) -> list | None:
    """The engine starts in ``later`` (a server's /stats list) that ``earlier`` did not list yet, told apart by
    the fresh process's pid (the list is capped, so counts alone could mislead)."""
    if later is None or earlier is None:
        return None
    seen = {e.get("new_pid") for e in earlier}
    return [e for e in later if e.get("new_pid") not in seen]


def split_engine_starts(final: list | None, at_t0: list | None, t0_unix: float) -> tuple[list | None, list | None]:
    """(the warm-up's, the measured span's) engine starts, from the server's /stats list read at t = 0 (``at_t0``,
    wall time ``t0_unix``) and after the replay (``final``); None where unknown. By when each replacement began
    (``began_unix_s``), as instance starts go by when they were decided: an entry is written once its process is
    admitted, seconds later, so a warm-up start still starting at t = 0 is not in ``at_t0`` (found in review:
    counting by that list booked it in the measured span). Entries without the field: by ``starts_after``."""
    if at_t0 is None:
        return None, None
    later = starts_after(final, at_t0)
    every = at_t0 + (later or [])
    if not all("began_unix_s" in e for e in every):
        return at_t0, later
    warm = [e for e in every if e["began_unix_s"] < t0_unix]
    return warm, None if later is None else [e for e in every if e["began_unix_s"] >= t0_unix]


#: how long `bench replay --endpoint` waits for the server's answer to GET /v1/models before the replay, seconds
ENDPOINT_CHECK_TIMEOUT_S = 5.0


def check_endpoint(url: str, api_key: str = "", timeout_s: float = ENDPOINT_CHECK_TIMEOUT_S) -> None:
    """An --endpoint that answers HTTP at all, asked GET {url}/v1/models, before a replay of minutes per policy
    (found in review: a wrong URL replayed the whole trace, every request failing, and exited 0). An HTTP error
    status is an answer, a server without that route, except 401/403: the key is refused, as every request would
    be. InvalidArgumentError naming the URL and what went wrong."""
    import urllib.error

    probe = url.rstrip("/") + "/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with _open_direct(probe, timeout_s, headers):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise InvalidArgumentError(f"--endpoint {url}: GET {probe} answered HTTP {e.code} ({e.reason}): the "
                                       f"server refuses the key; pass --api-key (or set $OPENAI_API_KEY)",
                                       flag="--api-key", endpoint=url, status=e.code) from None
        print(f"warmserve bench replay: --endpoint {url}: GET {probe} answered HTTP {e.code} ({e.reason}); replaying "
              f"anyway (requests go to {url.rstrip('/')}/v1/completions)", file=sys.stderr)
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise InvalidArgumentError(f"--endpoint {url}: GET {probe} got no HTTP answer ({why}; waited up to "
                                   f"{timeout_s:g} s); give the base URL of a running OpenAI-compatible server, e.g. "
                                   f"http://127.0.0.1:8000", flag="--endpoint", endpoint=url) from None
