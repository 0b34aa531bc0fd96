"""`warmserve bench replay`: replay a real multi-model trace against a live cluster, per policy, and set the
simulator's prediction for the same workload beside it.

    warmserve bench replay --policy warmserve,autoscale --profile bench/replay/profile_cpu.json \\
        --json bench/replay/results.json --plot bench/replay/ttft_cdf.png
    warmserve bench replay --endpoint http://127.0.0.1:8000 --served-names llama-20m,qwen2-30m --policy vllm

The workload is the ServeGen recipe (``warmserve.workload.servegen_workload``): ``--models`` client series
become the served models (copies of the demo checkpoints under distinct names), with ``--history-days`` earlier
days of the same slot as forecast history. It is scaled to what the local cluster carries: ``--rate`` total
requests/s, prompts cut to ``--max-prompt-tokens``, outputs to ``--max-output-tokens``, and ``--time-scale``
compresses time (each segment around its day, so history stays on whole days; the forecast window shrinks by
the same factor).

For each policy a fresh `warmserve serve` process starts with that policy, ``--cpu-workers`` workers and the
history (per-window in-flight load, Unix times placed so the replay starts at t = 0 of the trace), the client
replays open-loop over HTTP (``warmserve.workload.replay_client``), the controller's /metrics give the prewarm
hits, and the server is shut down. With ``--profile`` (from `warmserve calibrate`) the same workload runs
through the simulator (1 server x ``--cpu-workers`` devices) with the same policy, history and window. With
``--endpoint`` the replay runs once against that server (any OpenAI-compatible one, ``--served-names`` its model
names), under the label ``--policy`` (default "endpoint"), with no cluster or twin, whose flags are refused.

The cluster starts ahead of t = 0 (``--start-lead-s``) and books the windows it waits through as idle: t = 0 goes
on the policy's window grid and history and twin show those windows idle too (``warmserve.bench.replay_setup``).
``--warmup-s`` replays the trace's last seconds before t = 0 after that lead, unmeasured (a "warmup" block of
its own), and the twin replays them as its warm-up.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import replace

import numpy as np

from warmserve.bench.exit_signals import exit_on_signals, run_async
from warmserve.bench.replay_cluster import LiveCluster
from warmserve.bench.replay_report import (LIVE_COLS, no_error_text, plot_cdf, plot_title, ratio_figures, table,
                                           validation, write_results)
from warmserve.bench.replay_setup import (CHECKPOINTS, TRACE_TIME_OPTIONS, Given, check_args, check_endpoint,
                                          check_reuse, cost_models, counters_between, engine_start_summary,
                                          fetch_engine_starts, fetch_prewarm_metrics, history_rows, idle_windows,
                                          live_history_models, live_schedule, model_suffix, parse_prewarm_metrics,
                                          plan_live_history, policy_options, read_reuse_live, replay_marked,
                                          run_policies, split_engine_starts, split_outcomes, trace_requests,
                                          twin_history, warmup_span_s, with_idle_lead)
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig, policy_config_from_dict
from warmserve.sim.cli_output import span_rates
from warmserve.sim.inputs import warmup_trace
from warmserve.sim.metrics import fold_warmup_starts, pct
from warmserve.workload.replay_client import OUTCOMES, ClientConfig, ReplayRequest


def add_arguments(p) -> None:
    p.add_argument("--policy", default="warmserve,autoscale", action=Given,
                   help="comma-separated policies, run in turn; with --endpoint one name, the run's label only "
                        "(default there: endpoint)")
    p.add_argument("--policy-option", action="append", default=[], metavar="[POLICY:]KEY=VALUE",
                   help="a PolicyConfig field for the cluster's policy and the twin's (repeatable; without POLICY: "
                        "every policy). Times (" + ", ".join(TRACE_TIME_OPTIONS) + ") are trace seconds, "
                        "scaled by --time-scale like --window-s; unset ones keep their defaults in wall seconds. "
                        "A field the policy's name fixes (e.g. autoscale's prewarm) is refused; window_s is "
                        "--window-s. Every field: docs/config.md, [policy]")
    p.add_argument("--models", type=int, default=6, help="served models (ServeGen client series)")
    p.add_argument("--checkpoints", default=",".join(CHECKPOINTS),
                   help="demo checkpoints the models are copies of, round-robin")
    p.add_argument("--cpu-workers", type=int, default=4, action=Given, help="CPU workers of each cluster")
    p.add_argument("--duration-s", type=float, default=1200.0, help="replayed span of the trace, trace seconds")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="wall seconds per trace second: below 1 compresses the trace's time, above 1 stretches it")
    p.add_argument("--rate", type=float, default=0.5, help="total request rate of the replay, requests/s (wall)")
    p.add_argument("--history-days", type=int, default=2, help="earlier days of forecast history")
    p.add_argument("--pre-s", type=float, default=600.0, help="history just before the replay, trace seconds")
    p.add_argument("--start-s", type=float, default=None,
                   help="replay start in ServeGen time, seconds from day 0 midnight (default: the recipe's)")
    p.add_argument("--max-prompt-tokens", type=int, default=128,
                   help="longest prompt of the workload, tokens (ServeGen's lengths are cut to it)")
    p.add_argument("--max-output-tokens", type=int, default=16,
                   help="most tokens a request generates (ServeGen's lengths are cut to it)")
    p.add_argument("--window-s", type=float, default=300.0,
                   help="forecast window at time scale 1, seconds; window x --time-scale must divide a day")
    p.add_argument("--drain-s", type=float, default=60.0,
                   help="after the last arrival, how long answers may still come, seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload's draws (arrivals, lengths, prompts)")
    p.add_argument("--endpoint", default=None, help="replay against this OpenAI-compatible server (no cluster)")
    p.add_argument("--served-names", default=None,
                   help="with --endpoint: comma-separated model names the server knows; workload model i is sent "
                        "as name i (round-robin when fewer)")
    p.add_argument("--api-key", default=None, help="Bearer key for --endpoint (default $OPENAI_API_KEY)")
    p.add_argument("--vocab-size", type=int, default=8192, help="prompt token ids are drawn below this")
    p.add_argument("--profile", default=None, action=Given,
                   help="cost profile (warmserve calibrate) for the simulated twin; H100-80GB or A100-80GB: the "
                        "paper's GPU latency model instead")
    p.add_argument("--start-lead-s", type=float, default=60.0, action=Given,
                   help="the history's t = 0 is at least this long after a cluster's launch, on the policy's window "
                        "grid: ceil(lead / window) + 1 windows after the launch's window, which the history and "
                        "the twin show idle (as the waiting cluster records them); the replay waits for it")
    p.add_argument("--warmup-s", type=float, default=0.0,
                   help="replay the trace's last SECONDS (trace seconds, <= --pre-s) before t = 0 too, after the idle "
                        "lead and left out of every statistic (reported apart, \"warmup\"), so a policy meets t = 0 "
                        "with the instances that load left it; the twin replays them as its warm-up and the history "
                        "ends before them. 0: none")
    p.add_argument("--log-dir", default=None, action=Given,
                   help="server and worker logs (default: RESULTS-logs/ beside --json RESULTS.json, replay-logs/ "
                        "without --json)")
    p.add_argument("--sim-size", default=None, action=Given,
                   help="cost-model entry every simulated model behaves like (e.g. llama2-7b with --profile H100-80GB)")
    p.add_argument("--sim-compute-scale", type=float, default=None, action=Given,
                   help="override the profile's gpu.compute_scale for the simulated twin (e.g. workers / cores)")
    p.add_argument("--sim-host-cores", type=float, default=None, action=Given,
                   help="override the profile's gpu.host_cores for the simulated twin: cores the CPU workers share "
                        "(a step takes max(1, busy workers / cores) times its lone time); 0: no such term")
    p.add_argument("--reuse-live", default=None, metavar="JSON",
                   help="take the live results from this earlier --json of the same workload (every workload and "
                        "cluster argument must match); run only the simulator")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--plot", default=None, help="write a TTFT CDF plot (PNG) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------------------------------- workload

def build_workload(args):
    """The scaled ServeGen workload with served-model names, and the served (name, checkpoint) pairs."""
    from warmserve.workload.recipes import servegen_workload

    check_args(args)
    kw = {} if args.start_s is None else {"start_s": args.start_s}
    # the recipe's rate is over trace time; compressing time by s multiplies it by 1/s
    w = servegen_workload(args.models, duration_s=args.duration_s, pre_s=args.pre_s, history_days=args.history_days,
                          total_rate_rps=args.rate * args.time_scale, time_scale=args.time_scale,
                          max_prompt_tokens=args.max_prompt_tokens, seed=args.seed, repeat_days=6, **kw)
    ckpts = [c.strip() for c in args.checkpoints.split(",") if c.strip()]
    # the busiest series get the cheapest checkpoints, so the cluster's compute goes furthest
    busy = np.bincount(w.trace.model, minlength=len(w.models)) + 1e-3 * np.bincount(w.history.model,
                                                                                      minlength=len(w.models))
    rank = np.argsort(-busy, kind="stable")
    per = -(-args.models // len(ckpts))
    names = [""] * args.models
    for r, i in enumerate(rank):
        names[i] = f"{ckpts[r // per]}-{model_suffix(r % per)}"
    rename = dict(zip(w.models, names))
    for t in (w.trace, w.history):
        t.models = [rename[m] for m in t.models]
        t.output_tokens = np.minimum(t.output_tokens, args.max_output_tokens)
    w.meta = dict(w.meta, series_to_model=rename, max_output_tokens=args.max_output_tokens,
                  max_prompt_tokens=args.max_prompt_tokens, wall_rate_rps=args.rate)
    served = sorted((names[i], ckpts[r // per]) for r, i in enumerate(rank))
    return w, served


def replay_requests(w, vocab_size: int, seed: int) -> list[ReplayRequest]:
    return trace_requests(w.trace, vocab_size, seed)


def warmup_requests(w, vocab_size: int, seed: int, warmup_s: float) -> list[ReplayRequest]:
    """The warm-up's requests, [-warmup_s, 0) on the workload's clock; their prompts come from a stream of their
    own, so the measured requests stay as they are without a warm-up."""
    return trace_requests(warmup_trace(w, warmup_s), vocab_size, (seed, 1)) if warmup_s > 0 else []


# --------------------------------------------------------------------------------------------------- statistics

def client_deadline_s(reqs, drain_s: float) -> float:
    """When the client stops waiting for answers (``replay_client.replay``): the last arrival of ``reqs`` plus
    ``drain_s``, on their clock (seconds from t = 0; a warm-up's arrivals are < 0)."""
    return max((r.arrival_s for r in reqs), default=0.0) + drain_s


def ttfts(outs, deadline_s: float) -> np.ndarray:
    """Every outcome's TTFT; one without a first token counts as waited for until the client gave up,
    ``deadline_s`` - its arrival: the simulator's rule (``sim.metrics.summarize``: the end of the run - its
    arrival), so that a request never answered never scores better than one answered late (found in review: a
    fixed 999 s did, where the client waits up to the last arrival + --drain-s, 1260 s by default)."""
    return np.array([o.ttft_s if o.first_s == o.first_s else deadline_s - o.arrival_s for o in outs], float)


def _stats(outs, duration_s: float, deadline_s: float) -> dict:
    n = len(outs)
    answered = np.array([o.first_s == o.first_s for o in outs], bool)
    ttft = ttfts(outs, deadline_s)
    tpot = np.array([o.tpot_s for o in outs], float)
    tpot = tpot[np.isfinite(tpot)]
    ok = [o for o in outs if o.status == "ok"]
    e2e = np.array([o.end_s - o.arrival_s for o in ok], float)
    return {
        "requests": n, "answered": int(answered.sum()), "completed": len(ok), "dropped": n - len(ok),
        "ttft_mean_s": float(ttft.mean()) if n else float("nan"),
        "ttft_p50_s": pct(ttft, 50), "ttft_p90_s": pct(ttft, 90), "ttft_p95_s": pct(ttft, 95),
        "ttft_p99_s": pct(ttft, 99),
        "tpot_mean_s": float(tpot.mean()) if len(tpot) else float("nan"),
        "tpot_p50_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99),
        "e2e_p50_s": pct(e2e, 50), "e2e_p99_s": pct(e2e, 99),
        # completed over the trace's span, the simulator's definition (``sim.metrics``)
        "throughput_rps": len(ok) / max(duration_s, 1e-9),
        "outcomes": {k: sum(o.status == k for o in outs) for k in OUTCOMES},
    }


def summarize(outs, duration_s: float, metrics: dict | None, *, deadline_s: float) -> tuple[dict, dict, np.ndarray]:
    """(summary, per model, TTFTs) of the replay's outcomes ``outs``; ``deadline_s``: when the client stopped
    waiting for answers, seconds from t = 0 (``ttfts``)."""
    s = _stats(outs, duration_s, deadline_s)
    s["unanswered"] = s["requests"] - s["answered"]
    # the run's end as the twin's end_s: the client's deadline where a request was still open then, else its last
    # answer; at least the trace's end. drain_s: the run's time past the trace's span (``sim.metrics``)
    ends = [deadline_s] if s["outcomes"]["unanswered"] else [o.end_s for o in outs if o.end_s == o.end_s]
    s["end_s"] = max(ends + [duration_s])
    s["drain_s"] = s["end_s"] - duration_s
    s["accounted"] = sum(s["outcomes"].values()) == s["requests"]
    s["prewarm_hit_rate"] = None  # unknown: the server publishes no prewarm counters
    if metrics is not None:
        loading = metrics.get("prewarm_loading_starts", 0.0)
        total = metrics["prewarm_hits"] + metrics["prewarm_misses"] + loading
        s.update({"instance_starts": int(total), "starts_from_prewarm": int(metrics["prewarm_hits"]),
                  "starts_from_loading_prewarm": int(loading), "starts_cold": int(metrics["prewarm_misses"]),
                  "prewarm_hit_rate": metrics["prewarm_hits"] / total if total else 0.0,
                  "requests_migrated": int(metrics.get("migrated_requests", 0))})
    errors = sorted({o.error for o in outs if o.error})[:5]
    if errors:
        s["error_samples"] = errors
    per_model = {}
    for m in sorted({o.model for o in outs}):
        per_model[m] = _stats([o for o in outs if o.model == m], duration_s, deadline_s)
    return s, per_model, ttfts(outs, deadline_s)


# --------------------------------------------------------------------------------------------------- runs

def _bar(total: int, desc: str, enabled: bool):
    from warmserve.extras import progress_bar

    return progress_bar(enabled, total=total, desc=desc, unit="req", leave=False, dynamic_ncols=True)


def run_live(policy: str, w, reqs, served, args, cost, log_dir: str, served_live, options: dict | None = None,
             warm: list | None = None) -> tuple:
    """One policy live: (summary, TTFTs) of the measured requests ``reqs``; the warm-up's ``warm`` (--warmup-s)
    are sent first and summarized apart (``summary["warmup"]``), with the server's counters read at t = 0.
    ``cost``, ``served_live``: the plain --profile and the real checkpoints, which its history comes from."""
    window_s = args.window_s * args.time_scale
    warm_s, warm = warmup_span_s(args), warm or []
    t_launch = time.time()
    t0_unix, hist_path = t_launch, ""
    if not args.endpoint:
        t0_unix, rows = plan_live_history(w, served_live, cost, args, t_launch)
        if rows:
            os.makedirs(log_dir, exist_ok=True)
            hist_path = os.path.join(log_dir, f"history-{policy}.csv")
            with open(hist_path, "w", newline="", encoding="utf-8") as f:  # read as UTF-8 (read_history)
                wr = csv.writer(f)
                wr.writerow(["model", "window_start_s", "avg", "peak"])
                wr.writerows(rows)
    cluster = engine_starts = None
    start_lag_s = 0.0
    try:
        if args.endpoint:
            url, policy_label = args.endpoint, policy
        else:
            cluster = LiveCluster(policy, served, cpu_workers=args.cpu_workers, history_path=hist_path,
                                  window_s=window_s, log_dir=log_dir, policy_options=options)
            url, policy_label = cluster.url, policy
        before = fetch_prewarm_metrics(url) if cluster is None else None
        if cluster is not None:
            wait = t0_unix - warm_s - time.time()  # the replay starts with its warm-up
            start_lag_s = max(0.0, -wait)
            if wait > 0:
                # a wait of up to two windows (10 min at the defaults) must not read as a hang
                print(f"warmserve bench replay: {policy}: the cluster is up; it waits {wait:.0f} s for t = 0 on the "
                      f"policy's {window_s:g} s window grid (--window-s, --start-lead-s)", file=sys.stderr)
                time.sleep(wait)
            else:
                print(f"warmserve bench replay: {policy}: the cluster came up {start_lag_s:.1f} s after the replay's "
                      f"start, so the replay runs that late against the policy's windows and history: raise "
                      f"--start-lead-s (now {args.start_lead_s:g} s)", file=sys.stderr)
        bar = _bar(len(warm) + len(reqs), f"{policy_label}", not args.quiet)
        cfg = ClientConfig(url, api_key=args.api_key or os.environ.get("OPENAI_API_KEY", "") if args.endpoint else "",
                           drain_s=args.drain_s)
        outs, at_t0 = run_async(replay_marked(
            cfg, live_schedule(warm, reqs, warm_s), warm_s,
            lambda: (time.time(), fetch_prewarm_metrics(url),  # first the wall time of t = 0: split_engine_starts
                     fetch_engine_starts(url) if cluster is not None else None),
            progress=(lambda o: bar.update(1)) if bar is not None else None))
        if bar is not None:
            bar.close()
        metrics = cluster.metrics() if cluster is not None else fetch_prewarm_metrics(url)
        engine_starts = fetch_engine_starts(url) if cluster is not None else None
        if cluster is None and metrics is not None and before is not None:
            # a server that was up before this replay: count only what this replay caused
            metrics = {k: metrics[k] - before[k] for k in metrics}
    finally:
        if cluster is not None:
            cluster.close()
    warm_outs, outs = split_outcomes(outs, len(warm), warm_s)
    deadline_s = client_deadline_s([*warm, *reqs], args.drain_s)
    warmup = None
    if warm_s > 0:
        # the measured span's starts are those after t = 0; a fresh cluster's counters start at zero
        t0_wall, m0, e0 = at_t0 if at_t0 is not None else (None, None, None)
        m0_rel = counters_between(m0, before if cluster is None else {})
        e_warm, engine_starts = split_engine_starts(engine_starts, e0, t0_wall)
        metrics = counters_between(metrics, m0_rel)
        warmup = warmup_summary(warm_outs, args, m0_rel, e_warm, deadline_s)
    s, per_model, ttft = summarize(outs, w.duration_s, metrics, deadline_s=deadline_s)
    s["start_lag_s"] = start_lag_s
    if options:
        s["policy_options"] = dict(options)
    if engine_starts is not None:
        s.update(engine_start_summary(engine_starts))
    s["per_model"] = per_model
    if warmup is not None:
        s["warmup"] = warmup
    return s, ttft


def warmup_summary(outs, args, metrics: dict | None, engine_starts: list | None, deadline_s: float) -> dict:
    """The warm-up's own figures: every request's outcome (they are real requests) and the starts before t = 0
    (None where the server's counters could not be read at t = 0: then the measured span has none either).
    ``deadline_s``: the client's, which the warm-up's requests are waited for until too."""
    s = _stats(outs, warmup_span_s(args), deadline_s)
    s.update(trace_s=args.warmup_s, span_s=warmup_span_s(args), unanswered=s["requests"] - s["answered"],
             accounted=sum(s["outcomes"].values()) == s["requests"])
    if metrics is not None:
        starts = metrics["prewarm_hits"] + metrics["prewarm_misses"] + metrics.get("prewarm_loading_starts", 0.0)
        s.update(instance_starts=int(starts), starts_from_prewarm=int(metrics["prewarm_hits"]))
    else:
        s["instance_starts"] = None
    if engine_starts is not None:
        s["engine_starts"] = len(engine_starts)
    return s


def twin_config(cpu_workers: int, window_s: float, drain_s: float, policy_config: PolicyConfig | None = None,
                warmup_s: float = 0.0):
    """The simulated twin of the live CPU cluster: what it runs, not the GPU engine model's defaults. The live
    controller fills an engine's max_num_seqs in from the policy's instance capacity (``EngineConfig.resolved``:
    B sequences, not vLLM's 256) and its scheduler runs decodes first and prompt chunks in the rest of a
    ``max_batch_tokens`` step (chunked prefill); the policy ticks as often as the controller's. ``warmup_s``: the
    twin's clock starts that long before t = 0 (``with_idle_lead``). An unanswered request counts as the
    simulator counts it, waited for until the end of the run, as the live side counts it (``ttfts``)."""
    from warmserve.config import ControllerConfig
    from warmserve.protocol import EngineConfig
    from warmserve.sim.config import SimConfig

    pcfg = replace(policy_config or PolicyConfig(), window_s=window_s)
    engine = EngineConfig().resolved(pcfg.instance_capacity)
    return SimConfig(n_servers=1, gpus_per_server=cpu_workers, warmup_s=warmup_s, drain_s=drain_s,
                     tick_s=ControllerConfig().tick_s,
                     max_num_seqs=engine.max_num_seqs, chunked_prefill_tokens=engine.max_batch_tokens,
                     policy_config=pcfg)


def check_twin_batches(policies: list[str], options: dict) -> None:
    """Before any live run: the twin's engine takes every running sequence into each step, so it refuses a step
    budget below the batch (as vLLM does), which the live engine runs by decoding part of its batch per step; an
    instance_capacity past the budget would fail the twin after the live runs (found in review)."""
    from warmserve.protocol import EngineConfig

    for p in policies:
        cap = policy_config_from_dict(options.get(p) or {}, PolicyConfig(), where="--policy-option").instance_capacity
        engine = EngineConfig().resolved(cap)
        if engine.max_num_seqs > engine.max_batch_tokens:
            raise InvalidArgumentError(
                f"--policy-option instance_capacity={cap} for {p}: the live engines would run {engine.max_num_seqs} "
                f"sequences in steps of {engine.max_batch_tokens} tokens, a batch the simulated twin cannot model "
                f"(it takes every running sequence into each step). Fix: instance_capacity <= "
                f"{engine.max_batch_tokens}", policy=p, instance_capacity=cap)


def run_sim(policy: str, w, served_sim, args, cost, options: dict | None = None, history_from=None) -> tuple:
    """The twin of ``run_live``: its workload, idle lead, warm-up, history (``twin_history``), window, options."""
    from warmserve.sim.runner import resolve
    from warmserve.sim.simulator import simulate

    window_s = args.window_s * args.time_scale
    w, warmup_s = with_idle_lead(w, window_s, idle_windows(args), warmup_span_s(args))
    pcfg = policy_config_from_dict(options or {}, PolicyConfig(window_s=window_s), where="--policy-option")
    cfg = twin_config(args.cpu_workers, window_s, args.drain_s, pcfg, warmup_s)
    base, cfg = resolve(policy, cfg)
    r = simulate(w, served_sim, base, config=cfg, cost=cost, history=twin_history(w, history_from, warmup_s, window_s))
    # the simulator counts the starts before t = 0 (its clock starts at the idle lead) apart, as "warmup": kept so
    # where the live run reads its counters at t = 0 too, folded in where it counts every start since its launch
    s = dict(r.summary) if args.warmup_s > 0 else fold_warmup_starts(r.summary)
    s["answered"] = s["requests"] - s.get("unanswered", 0)
    s["per_model"] = r.per_model
    if args.warmup_s > 0:
        s["warmup"] = s.pop("warmup", None)  # last, where the live run has it
    return s, r.ttft_s


def main(args) -> int:
    # a SIGTERM or SIGHUP ends the run through the clean-up that stops the `serve` child (``exit_on_signals``)
    # what an interruption stopped, what --json holds by then, and the log folder's hold (``hold_log_folder``)
    run = {"policy": None, "saved": [], "lock": None}
    with exit_on_signals():
        try:
            return _main(args, run)
        except (KeyboardInterrupt, SystemExit) as e:
            # found in review: a Ctrl-C or SIGTERM mid-replay ended silent on what --json holds
            if isinstance(e, SystemExit) and not (isinstance(e.code, int) and e.code > 128):
                raise
            held = (f"{args.json} holds {', '.join(run['saved'])}" if run["saved"] else
                    "nothing was written" if args.json else "no --json was given")
            print("warmserve bench replay: interrupted" + (f" during {run['policy']}, whose replay is lost"
                                                            if run["policy"] else "") + f": {held}", file=sys.stderr)
            raise  # a Ctrl-C stays KeyboardInterrupt for callers; SIGTERM keeps its exit status
        finally:
            if run["lock"] is not None:  # after run_live's clean-up: the serve child is gone by then
                run["lock"].release()


def _main(args, run: dict) -> int:
    from warmserve.outputs import (check_distinct_outputs, check_output, check_output_folder,
                                   check_outputs_spare_input, check_plot)
    from warmserve.sim.config import ServedModel

    t0 = time.perf_counter()
    check_args(args)
    check_output("--json", args.json)  # before the replays, which take minutes per policy
    check_distinct_outputs(args.json, args.plot)
    check_outputs_spare_input("--profile", args.profile, {"--json": args.json, "--plot": args.plot}, "the profile")
    check_plot("--plot", args.plot)
    if not args.endpoint and not args.reuse_live:
        check_output_folder("--log-dir", log_folder(args))
        run["lock"] = hold_log_folder(args)
    policies = run_policies(args)
    if not args.endpoint:
        from warmserve.policy import POLICY_NAMES

        bad = [p for p in policies if p not in POLICY_NAMES]
        if bad:
            print(f"warmserve bench replay: unknown policies {bad}: choose from {', '.join(POLICY_NAMES)}",
                  file=sys.stderr)
            return 2
    options = policy_options(args, policies)
    if not args.endpoint:
        check_twin_batches(policies, options)
    if args.endpoint and not args.reuse_live:
        check_endpoint(args.endpoint, args.api_key or os.environ.get("OPENAI_API_KEY", ""))
    w, served = build_workload(args)
    reqs = replay_requests(w, args.vocab_size, args.seed)
    warm = warmup_requests(w, args.vocab_size, args.seed, warmup_span_s(args))
    if args.served_names:
        names = [n for n in args.served_names.split(",") if n]
        to = {m: names[i % len(names)] for i, m in enumerate(w.models)}
        reqs, warm = ([replace(r, model=to[r.model]) for r in x] for x in (reqs, warm))
    if not reqs:
        print("warmserve bench replay: the workload has no requests: raise --rate or --duration-s", file=sys.stderr)
        return 2
    live_cost, cost = cost_models(args)  # the --sim-* flags make the twin's only
    # the twin's policy knows each model's context as the live controller does, from its checkpoint's config (a
    # colocated KV share holds one request of it); an --endpoint server's is unknown: the run's longest request
    contexts = {}
    if not args.endpoint:
        from warmserve.engine.demo import demo_spec  # a demo checkpoint's: not for an --endpoint run

        contexts = {c: spec.max_position_embeddings for _, c in served if (spec := demo_spec(c)) is not None}
    served_live = [ServedModel(n, c, context_tokens=contexts.get(c, 0)) for n, c in served]
    served_sim = [replace(s, size=args.sim_size) for s in served_live] if args.sim_size else served_live
    history_from = live_history_models(args, served_live, live_cost)
    if cost is None and not args.endpoint:
        # the history's in-flight windows need request latencies, which come from the profile
        print("warmserve bench replay: no --profile: the clusters get no forecast history and there is no "
              "simulated twin; run `warmserve calibrate --out P.json` and pass --profile P.json", file=sys.stderr)
    log_dir = log_folder(args)
    print(f"workload: {w.name}, {len(served)} models, {len(reqs)} requests over {w.duration_s:.0f} s "
          f"({len(reqs) / w.duration_s:.2f} rps; trace {args.duration_s:.0f} s x time scale {args.time_scale}), "
          f"history {len(w.history)} requests over {args.history_days} earlier days"
          + (f", {len(warm)} of them replayed as the warm-up" if args.warmup_s > 0 else ""), file=sys.stderr)
    n_idle = idle_windows(args)
    # not with --reuse-live: no cluster starts, the live run it reuses said so when it ran, and both fixes named
    # (another --pre-s or --start-lead-s) are refused against that run's arguments
    if (cost is not None and not args.endpoint and not args.reuse_live
            and 0 < args.pre_s <= n_idle * args.window_s + args.warmup_s):
        print(f"warmserve bench replay: the cluster idles through the {n_idle} windows before the replay "
              f"({n_idle * args.window_s * args.time_scale:g} s), which with the warm-up cover all of the --pre-s "
              f"history: raise --pre-s above {n_idle * args.window_s + args.warmup_s:g} or lower --start-lead-s",
              file=sys.stderr)
    live, live_ttft, sim, sim_ttft = {}, {}, {}, {}
    earlier = None
    if args.reuse_live:
        earlier = read_reuse_live(args.reuse_live)  # checked by check_args; read once more here
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        check_reuse(earlier, args.reuse_live, args, policies, options, len(reqs), vars(parser.parse_args([])))
    for p in policies:
        run["policy"] = p
        if earlier is not None:
            # its throughput recounted over the trace's span: a file from before 2026-12-06 holds the older figure
            live[p] = span_rates(earlier["policies"][p], w.duration_s)
            live_ttft[p] = np.asarray(earlier["ttft_s"].get(p, []), float)
        else:
            live[p], live_ttft[p] = run_live(p, w, reqs, served, args, live_cost, log_dir, served_live,
                                             options[p], warm)
        s = live[p]
        print(f"{p}: live p50/p99 TTFT {s['ttft_p50_s']:.3f}/{s['ttft_p99_s']:.3f} s, answered {s['answered']}/"
              f"{s['requests']}, outcomes {s['outcomes']}"
              + (f"; warm-up outcomes {s['warmup']['outcomes']}" if "warmup" in s else ""), file=sys.stderr)
        if earlier is None and s["requests"] and not s["answered"]:
            # found in review: a server that answered nothing (a wrong --served-names, a broken cluster) still
            # gave a table of failures and exit status 0, after the whole replay of every policy
            if args.json:
                write_results(args, w, reqs, served, live, live_ttft, sim, sim_ttft, time.perf_counter() - t0, warm)
            where = f"the server at {args.endpoint}" if args.endpoint else f"the cluster (its logs: {log_dir})"
            print(f"warmserve bench replay: {p}: none of the {s['requests']} requests was answered; {where} said:\n"
                  + "\n".join(f"  {e}" for e in s.get("error_samples", [no_error_text(s, args.drain_s)]))
                  + "\nstopped before the next policy" + (f"; {args.json} holds the policies run" if args.json
                                                          else ""), file=sys.stderr)
            return 1
        if cost is not None and not args.endpoint:
            sim[p], sim_ttft[p] = run_sim(p, w, served_sim, args, cost, options[p], history_from)
        if args.json:  # after each policy: an error in a later one keeps what this one took minutes to measure
            write_results(args, w, reqs, served, live, live_ttft, sim, sim_ttft, time.perf_counter() - t0, warm)
            run["saved"] = list(live)
    run["policy"] = None
    print(f"{w.name}: {len(served)} models " + (f"sent to {args.endpoint}" if args.endpoint else
                                                 f"on {args.cpu_workers} CPU workers")
          + f", {len(reqs)} requests over {w.duration_s:.0f} s ({len(reqs) / w.duration_s:.2f} rps), seed {args.seed}")
    print("live:")
    print(table(live, LIVE_COLS))
    ratios, val = ratio_figures(live, sim), validation(live, sim)
    if sim:
        print(f"simulated (same workload, profile {args.profile}"
              + (f", models as {args.sim_size}" if args.sim_size else "")
              + (f", compute x{args.sim_compute_scale}" if args.sim_compute_scale else "")
              + (f", {cost.gpu.host_cores:g} host cores" if cost is not None and cost.gpu.host_cores else "") + "):")
        print(table(sim, LIVE_COLS))
        print("sim vs live TTFT:")
        for p, r in val.items():
            print(f"  {p:<12} p50 live {r['live_ttft_p50_s']:.3f} sim {r['sim_ttft_p50_s']:.3f} "
                  f"({r['sim_over_live_p50']:.2f}x)  p99 live {r['live_ttft_p99_s']:.3f} sim {r['sim_ttft_p99_s']:.3f} "
                  f"({r['sim_over_live_p99']:.2f}x)  {'within' if r['within_25pct'] else 'OUTSIDE'} 25%")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    wall = time.perf_counter() - t0
    print(f"wall {wall:.0f} s")
    if args.json:
        write_results(args, w, reqs, served, live, live_ttft, sim, sim_ttft, wall, warm)
    if args.plot:
        plot_cdf(live_ttft, sim_ttft, args.plot, plot_title(w.name, len(reqs), w.duration_s, args))
    return 0


def log_folder(args) -> str:
    """--log-dir, or a folder named after --json beside it (RESULTS-logs/ for RESULTS.json; replay-logs/ in the
    working folder without --json), so that one run's logs never overwrite another's. Found in review: with one
    logs/ beside every --json, re-running a README command into a new results file rewrote the committed logs of an
    older run in the same folder."""
    return args.log_dir or os.path.splitext(os.path.abspath(args.json or "replay.json"))[0] + "-logs"


#: The lock file a run holds in its log folder (``hold_log_folder``).
LOG_LOCK_NAME = ".warmserve-replay.lock"


def hold_log_folder(args):
    """The run's hold on its log folder (``outputs.hold_folder``), from its checks to its end, or FolderInUseError.
    Found in review: a second replay started in the same folder (the default replay-logs/ without --json) truncated
    the first's serve-POLICY.log and rewrote the history-POLICY.csv its server was about to read."""
    from warmserve.outputs import hold_folder

    folder = log_folder(args)
    where = (f"--log-dir {args.log_dir}" if args.log_dir else
             f"the log folder {folder} (--log-dir's default {'beside --json' if args.json else 'without --json'})")
    return hold_folder("--log-dir", folder, LOG_LOCK_NAME, where, "another `warmserve bench replay`",
                       "this run would overwrite its server logs and the history seeds its servers read",
                       "give this run a folder of its own (--log-dir DIR" + (", or another --json" if not args.log_dir
                                                                             else "") + ")")


__all__ = ["CHECKPOINTS", "build_workload", "replay_requests", "history_rows", "plan_live_history", "with_idle_lead",
           "summarize", "validation", "parse_prewarm_metrics", "policy_options", "check_args", "LiveCluster",
           "exit_on_signals", "twin_config", "run_sim", "main", "hold_log_folder", "LOG_LOCK_NAME"]
