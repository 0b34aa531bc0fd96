"""`warmserve calibrate`: measure the local engine on CPU workers and write their cost profile, which `warmserve bench
replay --profile` reads for its simulated twin of the live CPU cluster. It describes this host's CPU workers (a
'GPU' of about 1 GiB) and the demo models, not the GPUs of `warmserve simulate --preset` (found in review: the help
called it a simulator profile, and the presets' models could not be served with it).

    warmserve calibrate --out bench/replay/profile_cpu.json --threads 1

Per demo model, in this process, on a host page pool like a CPU worker's, with the worker's torch thread count:
- load: ``load_model(...).wait()`` of the checkpoint (from the page cache) into fresh pages. The fixed part and
  the bandwidth come from a least-squares line over all models (seconds = fixed + bytes / bandwidth): the
  bandwidth becomes ``gpu.h2d_bytes_per_s``, the fixed part ``load_fixed_s`` (what every load pays besides
  copying bytes: reading headers, creating the slot, building the tensor views; a live worker starts no process);
- activation: ``Engine(lm)`` over the resident weights, first KV blocks mapped (``activation_s``, median);
- prefill: one step of one request of N prompt tokens (``prefill_table``, seconds by prompt tokens);
- decode: one step with B running sequences (``decode_table``, seconds by batch);
- context: the same step at a longer context (``--decode-context-tokens`` per sequence): the extra KV bytes read
  over the extra time is the rate a step reads context at, written as ``gpu.hbm_bytes_per_s`` (achievable fraction
  1), so the simulator's KV-read term charges what the worker measured (found in review: a CPU profile kept the
  H100's rate, and its twin did not slow with context as the live worker did, 2.5x from 16 to 1500 tokens). A CPU
  reads its weights far faster than that, and the decode table holds that read, so ``gpu.weight_read_bytes_per_s``
  is set to keep the weight floor at or under every measured step;
- cold start (load + activation + first token) and prewarmed first token, reported beside the profile;
- a fresh engine, as vanilla autoscaling starts one (``measure_fresh_engine``): a new process (interpreter, torch and
  the engine imported, the page pool created) timed from its spawn until it is ready to load, then each checkpoint
  loaded into it. The spawn-to-ready time plus the fixed part of those loads becomes ``engine_init_s``, their
  bandwidth ``fast_load_bytes_per_s``: what the simulator charges an ``autoscale`` cold start
  (``CostModel.vllm_cold_start_s``).

CPU workers on one machine share its cores: ``gpu.host_cores`` (the cores this process may run on / torch
threads, at least 1) is the simulator's contention term, a step taking max(1, busy workers / host_cores) times its lone
time (``GpuType.host_slowdown``). With ``--parallel N`` the same measurement also runs in N processes at once (as N CPU
workers all computing), and the median ratio of their prefill/decode times to the lone process's is reported beside what
the host term charges for N (``parallel.slowdown``, ``parallel.host_term_slowdown``), and N fresh engine processes are
started at once (``parallel.fresh_engine``). The lone-process tables stay in the profile and ``gpu.compute_scale`` stays
1; the contended tables are kept under ``parallel``.

Medians over ``--repeats``. The schema is ``warmserve.sim.costmodel``'s (version 1).
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import statistics
import sys
import time

import numpy as np

from warmserve.bench.calibrate_checks import (CONTEXT_BATCH, DECODE_PROMPT_TOKENS, DEFAULT_MODELS, check_args,
                                              decode_dips, pool_size, say)
from warmserve.bench.exit_signals import exit_on_signals, signals_held
from warmserve.errors import InvalidArgumentError
from warmserve.geometry import PAGE_BYTES


#: `warmserve calibrate --help`'s description (cli.py's one-line help is the same command's in `warmserve --help`)
DESCRIPTION = ("measure the demo models on this host's CPU workers and write their cost profile, for `warmserve bench "
               "replay --profile` (the live replay's simulated twin); it is no GPU profile for `warmserve simulate "
               "--preset`")


def add_arguments(p) -> None:
    p.description = DESCRIPTION
    p.add_argument("--out", required=True,
                   help="profile JSON to write: the CPU workers' costs `warmserve bench replay --profile` reads")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated demo models to measure")
    p.add_argument("--demo-dir", default=None, help="where the demo checkpoints are (written if missing)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (a CPU worker uses cores / workers; 1 for 4 workers on 2 cores)")
    p.add_argument("--prefill-tokens", default="16,64,256,512", help="prompt lengths of the prefill table")
    p.add_argument("--decode-batches", default="1,2,4,8,16", help="running sequences of the decode table")
    p.add_argument("--decode-steps", type=int, default=6, help="decode steps timed per batch size (median)")
    p.add_argument("--decode-context-tokens", type=int, default=1024,
                   help="prompt tokens of each sequence of a second decode run, timed against the decode table's "
                        f"{DECODE_PROMPT_TOKENS}-token one: the cost of reading context (gpu.hbm_bytes_per_s); "
                        "0 skips it (the GPU default stays)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median)")
    p.add_argument("--parallel", type=int, default=1,
                   help="also measure N processes at once; their slowdown over the lone process is reported under "
                        "parallel beside what the simulator's host term charges (gpu.compute_scale stays 1)")
    p.add_argument("--no-fresh-engine", action="store_true",
                   help="skip timing fresh engine processes (engine_init_s, fast_load_bytes_per_s stay defaults)")
    p.add_argument("--memory-bytes", type=int, default=0,
                   help="pool bytes (the simulated device's memory); 0 (default): a CPU worker's budget for these "
                        "models")


def _prompt(vocab: int, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, n).tolist()


def measure_model(path: str, name: str, pool, *, prefill_tokens, decode_batches, decode_steps, repeats,
                  decode_context_tokens: int = 0) -> dict:
    """Load, activation, prefill and decode times of one checkpoint on ``pool`` (medians, seconds); with
    ``decode_context_tokens``, also a decode step at that context (``measured.decode_context``)."""
    from warmserve.engine import Engine, SamplingParams, load_model

    one = SamplingParams(max_tokens=1, ignore_eos=True)
    loads, acts, colds, warms = [], [], [], []
    lm = None
    for r in range(repeats):
        if lm is not None:
            lm.close()
        t0 = time.perf_counter()
        lm = load_model(path, pool, name=name).wait()
        t1 = time.perf_counter()
        eng = Engine(lm, target_free_blocks=1)
        t2 = time.perf_counter()
        eng.add_request("c", _prompt(lm.config.vocab_size, 16, r), one)
        eng.step()
        t3 = time.perf_counter()
        eng.close()
        loads.append(t1 - t0)
        acts.append(t2 - t1)
        colds.append(t3 - t0)
        t0 = time.perf_counter()
        with Engine(lm, target_free_blocks=1) as eng:
            eng.add_request("w", _prompt(lm.config.vocab_size, 16, r), one)
            eng.step()
            # at the first token, as the cold start's clock (found in review: taken after the block, it held close())
            warms.append(time.perf_counter() - t0)
    weight_bytes = int(lm.weight_bytes)
    cfg = lm.config
    prefill = []
    ctx_batch = max([b for b in decode_batches if b <= CONTEXT_BATCH] or decode_batches[:1])
    # the long-context run's prompts prefill in one step, as the decode table's do
    biggest = max(max(prefill_tokens), max(decode_batches) * 32, ctx_batch * decode_context_tokens)
    context = None
    with Engine(lm, max_batch_tokens=max(2048, biggest), max_num_seqs=max(decode_batches),
                target_free_blocks=None) as eng:
        eng.add_request("warm", _prompt(cfg.vocab_size, 16, 99), one)
        eng.step()
        for n in prefill_tokens:
            ts = []
            for r in range(repeats):
                eng.add_request(f"p{n}-{r}", _prompt(cfg.vocab_size, n, r), one)
                t0 = time.perf_counter()
                eng.step()
                ts.append(time.perf_counter() - t0)
            prefill.append([n, statistics.median(ts)])
        decode = [[b, _decode_step_s(eng, cfg.vocab_size, b, DECODE_PROMPT_TOKENS, decode_steps)]
                  for b in decode_batches]
        if decode_context_tokens:
            context = {"batch": ctx_batch, "short_context_tokens": DECODE_PROMPT_TOKENS,
                       "short_step_s": dict(decode)[ctx_batch], "context_tokens": decode_context_tokens,
                       "step_s": _decode_step_s(eng, cfg.vocab_size, ctx_batch, decode_context_tokens, decode_steps)}
    lm.close()
    kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * lm_dtype_bytes(lm)
    return {
        "weight_bytes": weight_bytes, "tp": 1, "kv_bytes_per_token": int(kv_bytes_per_token),
        "prefill_table": prefill, "decode_table": decode,
        "measured": {"load_s": statistics.median(loads), "activation_s": statistics.median(acts),
                     "cold_start_first_token_s": statistics.median(colds),
                     "prewarmed_first_token_s": statistics.median(warms),
                     **({"decode_context": context} if context else {})},
    }


def _decode_step_s(eng, vocab: int, batch: int, prompt_tokens: int, steps: int) -> float:
    """Median seconds of ``steps`` decode steps of ``batch`` sequences of ``prompt_tokens``-token prompts."""
    from warmserve.engine import SamplingParams

    params = SamplingParams(max_tokens=steps + 2, ignore_eos=True)
    for i in range(batch):
        eng.add_request(f"d{batch}x{prompt_tokens}-{i}", _prompt(vocab, prompt_tokens, 1000 + i), params)
    eng.step()  # the prefill of all of them
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        eng.step()
        ts.append(time.perf_counter() - t0)
    while eng.has_unfinished():
        eng.step()
    return statistics.median(ts)


def lm_dtype_bytes(lm) -> int:
    import torch

    return torch.empty(0, dtype=lm.dtype).element_size()


def fit_load(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(fixed seconds, bytes/s) of the line seconds = fixed + bytes / bandwidth through (bytes, seconds) points."""
    if len(points) == 1:
        b, s = points[0]
        return 0.0, b / max(s, 1e-9)
    x = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    slope, fixed = np.polyfit(x, y, 1)
    if slope <= 0:  # noise swamped the size dependence: all of it is bandwidth
        return 0.0, float(x.sum() / y.sum())
    if fixed < 0:
        # no negative time: the least-squares line through the origin instead (found in review: the fixed part was
        # cut to 0 but the steeper line's bandwidth kept, overstating loads 1.6-2.5x)
        return 0.0, float((x * x).sum() / (x * y).sum())
    return float(fixed), float(1.0 / slope)


def _fresh_engine_child(spec_json: str) -> None:
    """Runs in the fresh process of ``measure_fresh_engine``: import, create the pool, say "ready", then load each
    checkpoint and report the load times (one JSON line each on stdout)."""
    t_start = time.perf_counter()
    spec = json.loads(spec_json)
    import torch

    from warmserve.engine import load_model
    from warmserve.memory import PagePool

    torch.set_num_threads(spec["threads"])
    with PagePool(spec["pool_bytes"], backend="host") as pool:
        print(json.dumps({"ready_in_process_s": time.perf_counter() - t_start}), flush=True)
        loads = {}
        for name, path in spec["paths"].items():
            t0 = time.perf_counter()
            lm = load_model(path, pool, name=name).wait()
            loads[name] = time.perf_counter() - t0
            lm.close()
        print(json.dumps({"load_s": loads}), flush=True)


#: longest a fresh engine process may take to say it is ready, or then to load every checkpoint, seconds
FRESH_ENGINE_TIMEOUT_S = 300.0


def measure_fresh_engine(paths: dict, pool_bytes: int, threads: int, repeats: int, at_once: int = 1) -> dict:
    """Start a fresh engine process ``repeats`` times, as a vanilla autoscaler does for each cold start: the time
    from spawning it until it is ready to load weights (interpreter start, imports, page pool: ``init_s``), and the
    time it then takes to load each checkpoint (``load_s`` per model, from the page cache). Medians, seconds.
    ``at_once`` > 1: that many processes are spawned together each time (``init_s_runs`` lists every one)."""
    spec = json.dumps({"threads": threads, "pool_bytes": int(pool_bytes), "paths": dict(paths)})
    code = f"from warmserve.bench.calibrate import _fresh_engine_child; _fresh_engine_child({spec!r})"
    inits, loads = [], {n: [] for n in paths}
    with exit_on_signals((signal.SIGTERM,)):  # a TERM runs the finally clauses that end the children
        for _ in range(repeats):
            _fresh_engine_run(code, at_once, inits, loads)
    return {"init_s": statistics.median(inits), "init_s_runs": inits, "at_once": at_once,
            "load_s": {n: statistics.median(v) for n, v in loads.items()}}


def _fresh_engine_run(code: str, at_once: int, inits: list, loads: dict) -> None:
    """One run of ``measure_fresh_engine``: ``at_once`` processes, their ready times appended to ``inits`` and their
    load times to ``loads``."""
    import selectors
    import subprocess
    import tempfile

    # stderr to files, so a child that writes much of it never blocks on a full pipe
    errs = [tempfile.TemporaryFile("w+") for _ in range(at_once)]
    t0 = time.perf_counter()
    procs = []
    try:
        for e in errs:
            with signals_held():
                procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=e,
                                              text=True))
        # each one's ready time is taken when its line comes, whichever process says so first
        ready = [math.nan] * at_once
        with selectors.DefaultSelector() as sel:
            for i, proc in enumerate(procs):
                sel.register(proc.stdout, selectors.EVENT_READ, i)
            while sel.get_map():
                events = sel.select(timeout=max(t0 + FRESH_ENGINE_TIMEOUT_S - time.perf_counter(), 0.0))
                if not events:
                    raise RuntimeError(f"fresh engine processes not ready after {FRESH_ENGINE_TIMEOUT_S:.0f} s")
                for key, _ in events:
                    line = procs[key.data].stdout.readline()
                    ready[key.data] = time.perf_counter() - t0 if line.strip() else math.nan
                    sel.unregister(key.fileobj)
        for proc, t_ready, err in zip(procs, ready, errs):
            # The rest through the same buffered file as the ready line (found in review: communicate() reads
            # the raw pipe, so a load_s line already pulled into that buffer by readline() was lost). The child
            # prints one short line more, well within a pipe's buffer: it never blocks on a pipe not read yet.
            try:
                proc.wait(timeout=FRESH_ENGINE_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # killed below
                raise RuntimeError(f"fresh engine process still loading the checkpoints after "
                                   f"{FRESH_ENGINE_TIMEOUT_S:.0f} s") from None
            rest = proc.stdout.read()
            if proc.returncode or math.isnan(t_ready):
                err.seek(0)
                raise RuntimeError(f"fresh engine process failed (exit {proc.returncode}): {err.read()[-500:]}")
            inits.append(t_ready)
            for n, v in json.loads(rest.strip().splitlines()[-1])["load_s"].items():
                loads[n].append(v)
    finally:
        _end(procs)  # none is left behind when one fails or the run is stopped
        for e in errs:
            e.close()


def build_profile(per_model: dict, memory_bytes: int, threads: int, fresh: dict | None = None) -> dict:
    """The profile (schema ``warmserve.sim.profile/1``) from ``measure_model`` results per model and, when given,
    ``measure_fresh_engine``'s result (without it, ``engine_init_s`` and ``fast_load_bytes_per_s`` are left out
    and the cost model keeps its GPU defaults)."""
    from warmserve.sim.costmodel import SCHEMA

    fixed_s, bw = fit_load([(m["weight_bytes"], m["measured"]["load_s"]) for m in per_model.values()])
    activation = statistics.median(m["measured"]["activation_s"] for m in per_model.values())
    extra, fresh_fit = {}, None
    if fresh is not None:
        fresh_fixed_s, fresh_bw = fit_load([(per_model[n]["weight_bytes"], s) for n, s in fresh["load_s"].items()])
        fresh_fit = {"fixed_s": fresh_fixed_s, "bytes_per_s": fresh_bw}
        # a fresh engine's start besides copying bytes: spawn to ready, plus its loads' fixed part
        extra = {"engine_init_s": fresh["init_s"] + fresh_fixed_s, "fast_load_bytes_per_s": fresh_bw}
    prof = {
        "schema": SCHEMA,
        "gpu": {"name": f"cpu-worker-{threads}t", "memory_bytes": float(memory_bytes), "pool_fraction": 1.0,
                "h2d_bytes_per_s": bw, "compute_scale": 1.0, "host_cores": host_cores(threads),
                **context_read(per_model)},
        # a load's fixed part, charged to every load into a prewarmed engine (found in review: written as
        # engine_start_s, which the simulator no longer charges)
        "load_fixed_s": fixed_s,
        "tp_init_s": 0.0,
        "activation_s": activation,
        # the host backend maps KV pages lazily while serving: a cold start pays none of it up front
        "kv_map_s_per_gib": 0.0,
        **extra,
        "models": {n: {k: v for k, v in m.items() if k != "measured"} for n, m in per_model.items()},
        "measured": {n: m["measured"] for n, m in per_model.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": threads,
                    "load_fit": {"fixed_s": fixed_s, "bytes_per_s": bw}},
    }
    if fresh is not None:
        prof["measured_fresh_engine"] = dict(fresh, load_fit=fresh_fit)
    # the gpu keys left out, each with why and what the simulator uses instead: an absent key was otherwise the
    # only sign that a noisy long-context run had left the simulator on H100 figures (found in review)
    prof["skipped"] = [] if "hbm_bytes_per_s" in prof["gpu"] else context_skipped(per_model)
    return prof


def context_read(per_model: dict) -> dict:
    """The ``gpu`` keys of the cost of reading context, from ``measure_model``'s ``decode_context`` runs (none
    without them). ``CostModel.decode_step_s`` adds context tokens x KV bytes per token / (hbm_bytes_per_s x
    hbm_achievable_fraction) to a step, so the extra KV bytes of the long run over its extra time, with fraction 1,
    charges the measured extra time (the median over the models). Its weight floor, weight bytes /
    ``weight_read_bytes_per_s``, is kept at or under each model's fastest measured step, which already holds the
    weight read."""
    rates = []
    for m in per_model.values():
        r = m["measured"].get("decode_context")
        extra_s = r["step_s"] - r["short_step_s"] if r else 0.0
        if extra_s > 0:  # else noise hid the context's cost: nothing to fit from this model
            extra_bytes = r["batch"] * (r["context_tokens"] - r["short_context_tokens"]) * m["kv_bytes_per_token"]
            r["read_bytes_per_s"] = extra_bytes / extra_s
            rates.append(r["read_bytes_per_s"])
    if not rates:
        return {}
    weight_read = max(m["weight_bytes"] / m["tp"] / max(min(t for _, t in m["decode_table"]), 1e-9)
                      for m in per_model.values())
    return {"hbm_bytes_per_s": statistics.median(rates), "hbm_achievable_fraction": 1.0,
            "weight_read_bytes_per_s": weight_read}


def context_skipped(per_model: dict) -> list[dict]:
    """The ``skipped`` entries of a profile whose ``context_read`` found nothing: each context key, why (each
    model's long-context step against its short one, the noise figure; or no long-context run at all), the fix and
    the value the simulator takes instead (``CostModel``'s default GPU)."""
    from warmserve.sim.costmodel import CostModel

    runs = {n: m["measured"].get("decode_context") for n, m in per_model.items()}
    if any(runs.values()):
        why = "the long-context decode run was not slower than the short one, so noise hid the context's cost: " + \
            "; ".join(f"{n} {r['batch']} sequences {r['step_s'] * 1e3:.2f} ms at {r['context_tokens']} tokens of "
                      f"context vs {r['short_step_s'] * 1e3:.2f} ms at {r['short_context_tokens']} "
                      f"({(r['step_s'] - r['short_step_s']) * 1e3:+.2f} ms)" for n, r in runs.items() if r)
        fix = "rerun with more --repeats or --decode-steps, a longer --decode-context-tokens, or on an idle host"
    else:
        why, fix = "no long-context decode run (--decode-context-tokens 0)", "give --decode-context-tokens, e.g. 1024"
    gpu = CostModel().gpu
    return [{"key": f"gpu.{k}", "why": why, "fix": fix, "simulator_uses": float(getattr(gpu, k)),
             "default_of": gpu.name} for k in ("hbm_bytes_per_s", "hbm_achievable_fraction", "weight_read_bytes_per_s")]


def skipped_line(skipped: list[dict]) -> str:
    """One line naming each key left out of the profile, why, what the simulator uses instead, and the fix."""
    uses = ", ".join(f"{e['key']} {e['simulator_uses']:g}" + (
        " (the weight floor then reads at hbm_bytes_per_s x hbm_achievable_fraction)"
        if e["key"] == "gpu.weight_read_bytes_per_s" and not e["simulator_uses"] else "") for e in skipped)
    return (f"warmserve calibrate: left {', '.join(e['key'] for e in skipped)} out of the profile (its \"skipped\" "
            f"list): {skipped[0]['why']}; the simulator uses its {skipped[0]['default_of']} defaults: {uses}. Fix: "
            f"{skipped[0]['fix']}")


def host_cores(threads: int) -> float:
    """How many CPU workers of ``threads`` torch threads this machine's cores run at full speed at once (the
    cores this process may run on / threads, at least 1: a lone worker with more threads than cores was measured
    that way): ``GpuType.host_cores``, the simulator's contention term."""
    from warmserve.host_cpus import usable_cores

    return max(1.0, usable_cores() / threads)


def _end(procs) -> None:
    """Kill and reap every one of ``procs`` still running: none is left behind however the caller ends."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()


def host_available_bytes() -> int | None:
    """Host memory a pool made now can take, bytes (``memory.host_memory_room``: MemAvailable, or less under a
    memory cgroup limit); None where neither says."""
    from warmserve.memory.pool import host_memory_room

    return host_memory_room()[0]


def measure_parallel(args, names) -> dict:
    """The same measurement in ``args.parallel`` processes started together; their profiles."""
    import subprocess
    import tempfile

    with exit_on_signals((signal.SIGTERM,)), tempfile.TemporaryDirectory() as d:
        outs = [os.path.join(d, f"p{i}.json") for i in range(args.parallel)]
        cmd = [sys.executable, "-m", "warmserve", "calibrate", "--models", ",".join(names), "--threads",
               str(args.threads), "--prefill-tokens", args.prefill_tokens, "--decode-batches", args.decode_batches,
               "--decode-steps", str(args.decode_steps), "--repeats", str(args.repeats), "--no-fresh-engine",
               "--decode-context-tokens", "0"]
        if args.demo_dir:
            cmd += ["--demo-dir", args.demo_dir]
        procs = []
        try:
            for o in outs:
                with signals_held():
                    procs.append(subprocess.Popen(cmd + ["--out", o], stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE, text=True))
            errs = [p.communicate()[1] for p in procs]
        finally:
            _end(procs)
        bad = [(p.returncode, e[-500:]) for p, e in zip(procs, errs) if p.returncode]
        if bad:
            raise RuntimeError(f"parallel calibration failed: {bad}")
        runs = []
        for o in outs:
            with open(o, encoding="utf-8") as f:
                runs.append(json.load(f))
    return {"processes": args.parallel, "runs": [{"models": r["models"], "measured": r["measured"]} for r in runs]}


def main(args) -> int:
    from warmserve.outputs import check_output, check_output_folder, write_json_atomic

    check_output("--out", args.out)  # before minutes of measuring, not after them
    check_output_folder("--demo-dir", args.demo_dir)  # found in review: a file here was a bare FileExistsError
    avail = host_available_bytes()
    names, prefill_tokens, decode_batches = check_args(args, avail)
    import torch

    from warmserve.engine.demo import DEMO_MODELS, write_demo_models
    from warmserve.memory import PagePool

    unknown = [n for n in names if n not in DEMO_MODELS]
    if unknown:
        raise InvalidArgumentError(f"--models {args.models!r}: unknown demo models {unknown}: choose from "
                                   f"{', '.join(DEMO_MODELS)}", flag="--models", unknown=unknown)
    from warmserve.bench.engine import check_fits_context

    # before any model is measured: the longest prompt is timed with one token generated after it
    check_fits_context("--prefill-tokens", max(prefill_tokens) + 1, names,
                       f"{max(prefill_tokens)} (the largest) + 1 generated", "lower the largest --prefill-tokens")
    # and the decode runs: a prompt of DECODE_PROMPT_TOKENS, then --decode-steps + 2 tokens (found in review)
    check_fits_context("--decode-steps", DECODE_PROMPT_TOKENS + args.decode_steps + 2, names,
                       f"{DECODE_PROMPT_TOKENS} (the decode runs' prompt) + {args.decode_steps} + 2",
                       "lower --decode-steps")
    check_fits_context("--decode-context-tokens and --decode-steps",
                       args.decode_context_tokens + args.decode_steps + 2, names,
                       f"{args.decode_context_tokens} + {args.decode_steps} + 2", "lower --decode-context-tokens")
    torch.set_num_threads(args.threads)
    paths = write_demo_models(args.demo_dir, names)
    weights = {n: sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p) if f.endswith(".safetensors"))
               for n, p in paths.items()}
    page = PAGE_BYTES
    # a CPU worker's budget (controller.launch): the largest model twice over plus KV room, at least 1 GiB
    mem = args.memory_bytes or max(1 << 30, -(-(2 * max(weights.values()) + (256 << 20)) // (256 << 20)) * (256 << 20))
    least = max(weights.values()) + page
    if mem < least:  # found in review: written as gpu.memory_bytes, a profile no model could be placed with
        raise InvalidArgumentError(f"--memory-bytes {args.memory_bytes}: the simulated device must hold the largest "
                                   f"model's weights ({max(weights.values())} bytes) and one KV page ({page}): give "
                                   f"at least {least}, or 0 for a CPU worker's budget", flag="--memory-bytes",
                                   value=args.memory_bytes, minimum=least)
    pool_bytes = pool_size(args, max(weights.values()), mem, prefill_tokens, decode_batches, avail)
    t0 = time.perf_counter()
    per_model = {}
    with PagePool(pool_bytes, backend="host") as pool:
        for i, n in enumerate(names, 1):
            # found in review: nothing was said for minutes until the table came at the end
            say(f"measuring {n} ({i}/{len(names)}): load and activation x {args.repeats}, the prefill and decode "
                f"tables{', the long-context decode run' if args.decode_context_tokens else ''}")
            per_model[n] = measure_model(paths[n], n, pool, prefill_tokens=prefill_tokens,
                                         decode_batches=decode_batches, decode_steps=args.decode_steps,
                                         repeats=args.repeats, decode_context_tokens=args.decode_context_tokens)
            m = per_model[n]["measured"]
            print(f"{n:<12} {weights[n] / 2**20:7.1f} MiB  load {m['load_s'] * 1e3:7.1f} ms  activation "
                  f"{m['activation_s'] * 1e3:6.2f} ms  cold TTFT {m['cold_start_first_token_s'] * 1e3:7.1f} ms  "
                  f"prewarmed TTFT {m['prewarmed_first_token_s'] * 1e3:6.1f} ms", file=sys.stderr)
    fresh = None
    if not args.no_fresh_engine:
        say(f"timing {args.repeats} fresh engine process(es), one after another: each a new interpreter importing "
            f"torch, then loading {', '.join(names)} (--no-fresh-engine skips it)")
        fresh = measure_fresh_engine(paths, pool_bytes, args.threads, args.repeats)
        print(f"fresh engine process: ready in {fresh['init_s']:.2f} s, then loads "
              + ", ".join(f"{n} {s * 1e3:.0f} ms" for n, s in fresh["load_s"].items()), file=sys.stderr)
    prof = build_profile(per_model, mem, args.threads, fresh)
    for line in decode_dips(prof["models"], args.decode_steps):
        print(line, file=sys.stderr)
    if args.parallel > 1:
        say(f"measuring the same in {args.parallel} processes at once (--parallel {args.parallel})")
        prof["parallel"] = measure_parallel(args, names)
        ratios = []
        for run in prof["parallel"]["runs"]:
            for n, m in run["models"].items():
                for key in ("prefill_table", "decode_table"):
                    ratios += [b[1] / a[1] for a, b in zip(prof["models"][n][key], m[key]) if a[1] > 0]
        # the profile keeps compute_scale 1: the simulator's host term (host_cores) charges contention by how many
        # devices are busy at each moment; this measurement checks that term at its all-busy end
        from warmserve.sim.costmodel import CostModel

        measured = float(np.median(ratios))
        predicted = CostModel.from_profile(prof).gpu.host_slowdown(args.parallel)
        prof["parallel"]["slowdown"] = measured
        prof["parallel"]["host_term_slowdown"] = predicted
        print(f"{args.parallel} processes at once: prefill/decode {measured:.2f}x the lone process's time; the "
              f"simulator's host term (host_cores {prof['gpu']['host_cores']:g}) charges {predicted:.2f}x",
              file=sys.stderr)
        if fresh is not None:
            say(f"timing {args.repeats} x {args.parallel} fresh engine processes started together")
            many = measure_fresh_engine(paths, pool_bytes, args.threads, args.repeats, at_once=args.parallel)
            ratio = many["init_s"] / fresh["init_s"]
            prof["parallel"]["fresh_engine"] = dict(many, slowdown=ratio)
            print(f"{args.parallel} fresh engine processes at once: ready in {many['init_s']:.2f} s (median; "
                  f"{ratio:.2f}x a lone one's; the host term charges {predicted:.2f}x)", file=sys.stderr)
    prof["machine"]["wall_s"] = time.perf_counter() - t0
    write_json_atomic(args.out, prof, indent=1)
    if prof["skipped"]:
        print(skipped_line(prof["skipped"]), file=sys.stderr)
    print(f"{'model':<12} " + " ".join(f"pf{n:>5}" for n in prefill_tokens) + "  "
          + " ".join(f"dec{b:>3}" for b in decode_batches) + "   (ms)")
    for n, m in prof["models"].items():
        print(f"{n:<12} " + " ".join(f"{s * 1e3:7.1f}" for _, s in m["prefill_table"]) + "  "
              + " ".join(f"{s * 1e3:6.1f}" for _, s in m["decode_table"]))
    print(f"load: {prof['load_fixed_s'] * 1e3:.1f} ms fixed + {prof['gpu']['h2d_bytes_per_s'] / 1e9:.2f} GB/s; "
          f"activation {prof['activation_s'] * 1e3:.2f} ms"
          + (f"; context read {prof['gpu']['hbm_bytes_per_s'] / 1e9:.2f} GB/s" if "hbm_bytes_per_s" in prof["gpu"]
             else "")
          + (f"; fresh engine: {prof['engine_init_s']:.2f} s + {prof['fast_load_bytes_per_s'] / 1e9:.2f} GB/s"
             if fresh is not None else "") + f"; wrote {args.out}")
    return 0
