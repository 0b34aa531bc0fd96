"""`warmserve bench engine`: engine throughput against transformers, and time to first token warm vs cold.

Side by side in one run, per demo model, on the same checkpoint and thread count:
- prefill and decode tokens/s of our engine (weights in a memory-manager slot) and of transformers'
  ``generate()`` (greedy, its default dynamic KV cache), at batch 1 and 16, the two alternating run by run,
  both in the dtype our engine loaded (the checkpoint's: float32 for the small demos, bfloat16 for the 1b/7b).
  Prefill time = the time to the first token (for generate(), when its streamer receives it); decode tokens/s =
  (batch x (new tokens - 1)) / (total time - prefill time).
- time to first token (TTFT) of one request when the model is prewarmed (activation: Engine over the resident
  weights), when it needs a cold load in a running process (load_model + activation), and when it needs a new
  process (spawned `python -c` that imports torch and warmserve, creates a pool, loads and runs one token).
  Ratios are speedups: ``ttft_prewarmed_vs_cold_load`` = cold-load TTFT / prewarmed TTFT. One cold load and
  first token come first and are left out of the medians, so the timed cold loads do not carry the process's
  first-use costs (lazy imports, the first kernels), which the prewarmed side, always measured after a load,
  never pays.
Medians over --repeats. The checkpoint files are in the OS page cache for every case (the cold cases measure
load and process start, not the disk).
"""

from __future__ import annotations

import os
import math
import platform
import statistics
import subprocess
import sys
import time

from warmserve.bench.self_check import check
from warmserve.errors import InvalidArgumentError
from warmserve.geometry import PAGE_BYTES, align_up

GiB = 1 << 30


def add_arguments(parser) -> None:
    from warmserve.engine.demo import DEMO_MODELS

    parser.add_argument("--models", nargs="*", default=list(DEMO_MODELS), help="demo models to measure")
    parser.add_argument("--demo-dir", default=None, help="where the demo checkpoints are (written if missing)")
    parser.add_argument("--json", default=None, help="write results here (and a plot next to it, .png)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, for both engines")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="tokens of each timed request's prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens each timed request generates (>= 2)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16],
                        help="batch sizes of the throughput runs, each at least 1 (default: 1 16)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cuda uses the cuda memory backend)")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    parser.add_argument("--no-new-process", action="store_true", help="skip the new-process TTFT case")


def _cuda_index(device: str) -> int:
    """The GPU of --device cuda or cuda:N (checked by check_args): the pool's device and torch's current one."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def _prompts(vocab: int, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g).tolist()


def _pool_bytes(lm_weight_region: int, kv_block_bytes: int, blocks: int, page: int = PAGE_BYTES) -> int:
    return lm_weight_region + blocks * kv_block_bytes + 8 * page


class _FirstTokenClock:
    """A transformers streamer that notes when generate() hands over its first new token."""

    def __init__(self):
        self.calls = 0
        self.first_s = None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.first_s = time.perf_counter()

    def end(self):
        pass


def throughput_pair(lm, hf, batch: int, prompt_tokens: int, new_tokens: int, repeats: int,
                    device: str) -> tuple[dict, dict | None]:
    """Ours and transformers' generate(), alternating run by run so machine noise hits both alike."""
    import torch

    from warmserve.engine import Engine, SamplingParams

    prompts = _prompts(lm.config.vocab_size, batch, prompt_tokens)
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)
    ours_t, hf_t = ([], []), ([], [])
    with Engine(lm, max_batch_tokens=max(2048, batch * prompt_tokens), max_num_seqs=max(batch, 1),
                target_free_blocks=batch * 2) as eng:

        def run_ours(r):
            for i, p in enumerate(prompts):
                eng.add_request(f"{r}-{i}", p, params)
            _sync(device)
            t0 = time.perf_counter()
            n = sum(len(o.token_ids) for o in eng.step())
            _sync(device)
            t1 = time.perf_counter()
            while eng.has_unfinished():
                n += sum(len(o.token_ids) for o in eng.step())
            _sync(device)
            check(n == batch * new_tokens, f"{n} tokens generated, not {batch} x {new_tokens}")
            return t1 - t0, time.perf_counter() - t0

        def run_hf(n_new):
            clock = _FirstTokenClock()
            with torch.inference_mode():
                _sync(device)
                t0 = time.perf_counter()
                out = hf.generate(ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                  eos_token_id=None, pad_token_id=0, streamer=clock)
                _sync(device)
                t2 = time.perf_counter()
            check(out.shape[1] == prompt_tokens + n_new, f"generate() gave {out.shape[1]} tokens, not "
                  f"{prompt_tokens} + {n_new}")
            return clock.first_s - t0, t2 - t0

        run_ours("warm")
        if hf is not None:
            run_hf(2)
        for r in range(repeats):
            for store, res in ((ours_t, run_ours(r)), (hf_t, run_hf(new_tokens) if hf is not None else None)):
                if res is not None:
                    store[0].append(res[0])
                    store[1].append(res[1])
    return pair_rates(batch, prompt_tokens, new_tokens, ours_t, hf_t if hf is not None else None)


def pair_rates(batch: int, prompt_tokens: int, new_tokens: int, ours_t, hf_t) -> tuple[dict, dict | None]:
    """Each engine's rates from its (times to first token, total times) over the repeats, and ours' speedups over
    transformers' (``hf_t``; None: no baseline) as the ratios of the very rates shown: one statistic, the median
    per engine, for both (found in review: the speedup was the median of per-pair ratios while the tokens/s were
    medians per engine, and a row read 139.6 against 170.9 decode tokens/s beside a "1.03x" speedup)."""
    ours = _rates(batch, prompt_tokens, new_tokens, *ours_t)
    if hf_t is None:
        return ours, None
    theirs = _rates(batch, prompt_tokens, new_tokens, *hf_t)
    ours["prefill_speedup"] = ours["prefill_tok_s"] / theirs["prefill_tok_s"]
    ours["decode_speedup"] = ours["decode_tok_s"] / theirs["decode_tok_s"]
    return ours, theirs


def _hf_model(path: str, device: str, dtype=None):
    """transformers' model of ``path`` in ``dtype`` (None: the checkpoint's, as our loader's "auto"), so the
    comparison runs both engines on the same bytes per weight."""
    import transformers

    from warmserve.engine.checkpoint import read_tensors
    from warmserve.engine.config import ModelConfig
    from warmserve.engine.loader import resolve_dtype

    transformers.logging.set_verbosity_error()
    dtype = resolve_dtype(dtype, ModelConfig.from_dir(path), read_tensors(path))
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _rates(batch, prompt_tokens, new_tokens, ttfts, totals) -> dict:
    ttft = statistics.median(ttfts)
    decode_s = statistics.median(t - f for t, f in zip(totals, ttfts))
    return {"ttft_s": ttft, "prefill_tok_s": batch * prompt_tokens / ttft,
            "decode_tok_s": batch * (new_tokens - 1) / max(decode_s, 1e-9), "decode_s": decode_s}


def ttft_cases(path: str, name: str, pool, repeats: int, threads: int, device: str, new_process: bool) -> dict:
    from warmserve.engine import Engine, SamplingParams, load_model

    prompt = _prompts(1000, 1, 16)[0]
    one = SamplingParams(max_tokens=1)

    def first_token(lm) -> None:
        with Engine(lm, target_free_blocks=1) as eng:
            eng.add_request("t", prompt, one)
            out = eng.step()
            _sync(device)
            check(bool(out and out[0].token_ids), "the first step made no token")

    # Left out of the medians: the process's first load pays first-use costs no later load (nor a prewarmed
    # request, always measured after a load) pays.
    t0 = time.perf_counter()
    lm = load_model(path, pool, name=name).wait()
    first_token(lm)
    first_cold = time.perf_counter() - t0
    lm.close()
    cold, warm = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lm = load_model(path, pool, name=name).wait()
        first_token(lm)
        cold.append(time.perf_counter() - t0)
        for _ in range(2):
            t0 = time.perf_counter()
            first_token(lm)
            warm.append(time.perf_counter() - t0)
        lm.close()
    out = {"ttft_prewarmed_s": statistics.median(warm), "ttft_cold_load_s": statistics.median(cold),
           "ttft_prewarmed_s_each": warm, "ttft_cold_load_s_each": cold,
           "ttft_first_cold_load_s_excluded": first_cold}
    out["ttft_prewarmed_vs_cold_load"] = out["ttft_cold_load_s"] / out["ttft_prewarmed_s"]
    if new_process:
        runs = [_new_process_ttft(path, pool.total_bytes, threads, device) for _ in range(max(1, repeats - 1))]
        out["ttft_new_process_s"] = statistics.median(runs)
        out["ttft_prewarmed_vs_new_process"] = out["ttft_new_process_s"] / out["ttft_prewarmed_s"]
    return out


_CHILD = """
import sys
import torch
torch.set_num_threads({threads})
from warmserve.memory import PagePool
from warmserve.engine import Engine, SamplingParams, load_model
if {cuda}:
    torch.cuda.set_device({index})
pool = PagePool({pool_bytes}, backend={backend!r}, device={index})
lm = load_model({path!r}, pool).wait()
eng = Engine(lm, target_free_blocks=1)
eng.add_request("t", {prompt!r}, SamplingParams(max_tokens=1))
out = eng.step()
if {cuda}:
    torch.cuda.synchronize()
if not out[0].token_ids:  # not an assert: python -O strips those
    sys.exit("the fresh engine made no first token")
print("first-token", flush=True)
sys.stdout.flush()
"""


def _new_process_ttft(path: str, pool_bytes: int, threads: int, device: str) -> float:
    code = _CHILD.format(threads=threads, pool_bytes=pool_bytes,
                         backend="cuda" if device.startswith("cuda") else "host",
                         path=path, prompt=_prompts(1000, 1, 16)[0], cuda=device.startswith("cuda"),
                         index=_cuda_index(device) if device.startswith("cuda") else 0)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    t = time.perf_counter() - t0
    _, err = proc.communicate(timeout=600)
    if "first-token" not in line or proc.returncode != 0:
        raise RuntimeError(f"new-process TTFT child failed (rc {proc.returncode}): {err[-2000:]}")
    return t


def run(args) -> dict:
    import torch

    from warmserve.engine.demo import write_demo_models

    torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda"):  # cuda:N: synchronize, get_device_name and the pool all mean that GPU
        torch.cuda.set_device(_cuda_index(device))
    paths = write_demo_models(args.demo_dir, names=args.models)
    results = {"machine": _machine(device, args.threads), "args": {k: v for k, v in vars(args).items() if k != "func"},
               "definitions": {
                   "prefill_tok_s": "batch x prompt tokens / time to first token",
                   "decode_tok_s": "batch x (new tokens - 1) / (total time - time to first token)",
                   "decode_speedup_bN": "ours decode tokens/s / transformers generate() decode tokens/s at batch N: "
                                        "the ratio of the two medians over repeats shown as decode_tok_s (the same "
                                        "for prefill_speedup_bN)",
                   "dtype_ours, dtype_transformers": "the weights' dtype in each engine (the checkpoint's)",
                   "ttft_prewarmed_vs_cold_load": "TTFT with a cold load in a running process / TTFT prewarmed; "
                                                  "after one cold load and first token left out "
                                                  "(ttft_first_cold_load_s_excluded)",
                   "ttft_prewarmed_vs_new_process": "TTFT in a new process / TTFT prewarmed"},
               "models": {}}
    for name in args.models:
        results["models"][name] = measure_model(name, paths[name], args)
    return results


def measure_model(name: str, path: str, args) -> dict:
    """Every figure of one checkpoint: the TTFT cases, then throughput against transformers per batch size."""
    import torch

    from warmserve.engine import load_model
    from warmserve.engine.config import ModelConfig
    from warmserve.engine.kv_cache import block_layout
    from warmserve.memory import PagePool

    device = args.device
    backend = "cuda" if device.startswith("cuda") else "host"
    cfg = ModelConfig.from_dir(path)
    _, block_bytes = block_layout(cfg, torch.float32)  # float32 bounds every dtype's block and weights from above
    blocks = max(args.batches) * (-(-(args.prompt_tokens + args.new_tokens) // 256)) + 4
    weight_region = align_up(cfg.num_params() * 4) + (16 << 20)
    index = _cuda_index(device) if backend == "cuda" else 0
    with PagePool(_pool_bytes(weight_region, block_bytes, blocks), backend=backend, device=index) as pool:
        r = {"params": cfg.num_params(), "architecture": cfg.architecture}
        print(f"[{name}] {cfg.num_params() / 1e6:.0f}M params", flush=True)
        r.update(ttft_cases(path, name, pool, args.repeats, args.threads, device, not args.no_new_process))
        lm = load_model(path, pool).wait()
        hf = None if args.no_hf else _hf_model(path, device, lm.dtype)
        r["dtype_ours"] = _dtype_name(lm.dtype)
        if hf is not None:
            r["dtype_transformers"] = _dtype_name(next(hf.parameters()).dtype)
        for b in args.batches:
            rep = args.repeats if b * cfg.num_params() < 2e9 else min(2, args.repeats)
            o, h = throughput_pair(lm, hf, b, args.prompt_tokens, args.new_tokens, rep, device)
            r[f"ours_b{b}"] = o
            r[f"repeats_b{b}"] = rep
            if h is not None:
                r[f"hf_b{b}"] = h
                r[f"prefill_speedup_b{b}"] = o.pop("prefill_speedup")
                r[f"decode_speedup_b{b}"] = o.pop("decode_speedup")
            # found in review: with --no-hf only the speedups were printed, so every line read "b1: " and nothing
            print(f"  b{b}: prefill {o['prefill_tok_s']:.3g} tok/s, decode {o['decode_tok_s']:.3g} tok/s"
                  + "".join(f", {k}={v:.3g}" for k, v in r.items() if k.endswith(f"_b{b}") and isinstance(v, float)),
                  flush=True)
        del hf
        lm.close()
    return r


def _machine(device: str, threads: int) -> dict:
    import torch

    m = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
         "cpu_count": os.cpu_count(), "threads": threads, "device": device}
    try:
        with open("/proc/cpuinfo") as f:
            m["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    if device.startswith("cuda"):
        m["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers
        m["transformers"] = transformers.__version__
    except ImportError:
        pass
    return m


def _cell(v, fmt: str, width: int, unit: str = "") -> str:
    """``v`` as ``fmt`` with ``unit``, right-aligned in ``width``; "-" for a figure not measured (found in review:
    --no-new-process and --no-hf printed "nanms" and "nanx")."""
    text = "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{fmt}}{unit}"
    return f"{text:>{width}}"


def table(results: dict) -> str:
    rows = [f"{'model':<12} {'params':>7} {'dtype (hf)':>19} {'b':>3} {'prefill tok/s':>14} {'(hf)':>9} "
            f"{'decode tok/s':>13} {'(hf)':>9} {'decode x':>9}"]
    for name, r in results["models"].items():
        for key in sorted(k for k in r if k.startswith("ours_b")):
            b = key[6:]
            o, h = r[key], r.get(f"hf_b{b}", {})
            dt = f"{r.get('dtype_ours', '?')} ({r.get('dtype_transformers', '-')})"
            rows.append(f"{name:<12} {r['params'] / 1e6:6.0f}M {dt:>19} {b:>3} {o['prefill_tok_s']:14.0f} "
                        f"{_cell(h.get('prefill_tok_s'), '.0f', 9)} {o['decode_tok_s']:13.1f} "
                        f"{_cell(h.get('decode_tok_s'), '.1f', 9)} "
                        f"{_cell(r.get(f'decode_speedup_b{b}'), '.2f', 9, 'x')}")
    rows.append("")
    rows.append(f"{'model':<12} {'TTFT prewarmed':>15} {'cold load':>10} {'new process':>12} {'cold/warm':>10} "
                f"{'new/warm':>9}")
    for name, r in results["models"].items():
        new = r.get("ttft_new_process_s")
        rows.append(f"{name:<12} {r['ttft_prewarmed_s'] * 1e3:13.1f}ms {r['ttft_cold_load_s'] * 1e3:8.1f}ms "
                    f"{_cell(None if new is None else new * 1e3, '.1f', 12, 'ms')} "
                    f"{r['ttft_prewarmed_vs_cold_load']:9.1f}x "
                    f"{_cell(r.get('ttft_prewarmed_vs_new_process'), '.1f', 9, 'x')}")
    return "\n".join(rows)


def decode_bars(results: dict) -> list[tuple[str, list[float]]]:
    """The decode panel's bars, (label, decode tokens/s per model): ours and transformers' (where measured) at
    every batch size measured, largest first (found in review: the panel drew batch 16 and 1 only, empty for
    --batches 2 4)."""
    models = results["models"]
    batches = sorted({int(k[len("ours_b"):]) for r in models.values() for k in r if k.startswith("ours_b")},
                     reverse=True)
    bars = []
    for b in batches:
        for key, label in ((f"ours_b{b}", f"warmserve b{b}"), (f"hf_b{b}", f"transformers b{b}")):
            if any(key in r for r in models.values()):
                bars.append((label, [r.get(key, {}).get("decode_tok_s", 0) for r in models.values()]))
    return bars


def _plain(v: float, _pos) -> str:
    """A log axis's tick as a plain number; a minor tick only at 2 and 5 of each decade, so that they do not
    crowd one another."""
    if v <= 0:
        return ""
    lead = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}" if round(lead) in (1, 2, 5) and abs(lead - round(lead)) < 1e-6 else ""


def plot(results: dict, path: str) -> None:
    from warmserve.extras import pyplot
    from warmserve.outputs import save_figure

    plt = pyplot("the engine benchmark's plot")

    names = list(results["models"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(names))
    bars = decode_bars(results)
    width = 0.8 / max(len(bars), 1)
    # log axes (models a hundred times apart in size), each bar with its figure: a log axis alone made a 1.14x
    # difference look like 3x (found in review)
    for off, (label, vals) in enumerate(bars):
        drawn = axes[0].bar([i + (off - (len(bars) - 1) / 2) * width for i in x], vals, width=width, label=label)
        axes[0].bar_label(drawn, fmt="%.0f", fontsize=6)
    axes[0].set_xticks(list(x), names, rotation=20)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("decode throughput (tokens/s, log scale)")
    axes[0].legend(fontsize=8, loc="best")  # clear of the bars: upper right covered a short run's bars
    # only the cases measured (found in review: --no-new-process drew an empty "new process" in the legend)
    cases = [(key, label) for key, label in (("ttft_prewarmed_s", "prewarmed"), ("ttft_cold_load_s", "cold load"),
                                             ("ttft_new_process_s", "new process"))
             if any(key in results["models"][n] for n in names)]
    for off, (key, label) in enumerate(cases):
        vals = [results["models"][n].get(key, 0) * 1e3 for n in names]
        drawn = axes[1].bar([i + (off - (len(cases) - 1) / 2) * 0.27 for i in x], vals, width=0.27, label=label)
        axes[1].bar_label(drawn, fmt="%.0f", fontsize=6)
    axes[1].set_xticks(list(x), names, rotation=20)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("time to first token (ms, log scale)")
    axes[1].legend(fontsize=8, loc="best")
    for ax in axes:  # found in review: a log axis within one decade labelled its ticks 2x10^2 and 6x10^1
        ax.yaxis.set_major_formatter(_plain)
        ax.yaxis.set_minor_formatter(_plain)
    a = results.get("args", {})
    settings = (f"; prompt {a['prompt_tokens']} + {a['new_tokens']} new tokens, median of {a['repeats']} repeat(s)"
                if {"prompt_tokens", "new_tokens", "repeats"} <= set(a) else "")
    fig.suptitle(f"engine on {results['machine'].get('gpu') or results['machine'].get('cpu', 'cpu')}, "
                 f"{results['machine']['threads']} thread(s){settings}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def check_args(args) -> None:
    """What would otherwise fail after minutes of measuring: counts taken a median over, the outputs."""
    from warmserve.outputs import check_at_least, check_distinct_outputs, check_output, check_output_folder, check_plot

    check_output_folder("--demo-dir", args.demo_dir)  # found in review: a file here was a bare FileExistsError
    check_at_least("--repeats", args.repeats)
    # found in review: `--models` with no names measured nothing and wrote an empty JSON and plot, exit 0
    if not args.models:
        from warmserve.engine.demo import DEMO_MODELS

        raise InvalidArgumentError(f"--models: name at least one demo model, e.g. --models {' '.join(DEMO_MODELS)}",
                                   flag="--models")
    # found in review: --threads 0 ended in torch's RuntimeError traceback from set_num_threads
    check_at_least("--threads", args.threads)
    if not args.batches:
        raise InvalidArgumentError("--batches: give at least one batch size, e.g. --batches 1 16", flag="--batches")
    check_at_least("--batches", min(args.batches))
    # found in review: 0 failed after the first model's TTFT cases with a message naming no flag; the decode rate
    # counts the tokens after the first (new tokens - 1), so 1 leaves a 0/0 speedup
    check_at_least("--prompt-tokens", args.prompt_tokens)
    check_at_least("--new-tokens", args.new_tokens, 2)
    # found in review: `gpu` ran, then crashed in torch; `cuda` without a GPU ended in an AssertionError traceback
    from warmserve.worker.main import check_cuda, check_device

    args.device = check_device(args.device)  # canonical: cuda:00 is cuda:0 to the checks, not to torch
    check_cuda(args.device)
    if not args.no_hf:  # found in review: without transformers (the test extra) a ModuleNotFoundError traceback
        from warmserve.extras import require

        require("transformers", "bench engine's transformers baseline (--no-hf skips it)", extra="test")
    check_fits_context("--prompt-tokens + --new-tokens", args.prompt_tokens + args.new_tokens, args.models,
                       f"{args.prompt_tokens} + {args.new_tokens}", "lower --prompt-tokens or --new-tokens")
    check_output("--json", args.json)
    if args.json:
        png = plot_path(args.json)
        check_distinct_outputs(args.json, png, derived=("--json with .png", "end --json in .json"))
        check_plot("--json", png, f"{args.json} (it draws {png} beside it)")


def check_fits_context(flags: str, tokens: int, models, value: str, fix: str) -> None:
    """Every demo model in ``models`` takes ``tokens`` (a prompt and the tokens generated after it) within its
    context, or InvalidArgumentError naming ``flags`` (given as ``value``), the first model that does not, its
    context and ``fix``. Found in review: the engine refused the request only when that model's turn came, after the
    models before it were measured, whose figures were then lost, and its message named no flag. The context is
    the max_position_embeddings the demo's config.json is written with (``demo_spec``), read here before any
    checkpoint is written (a sized demo takes minutes); a name that is no demo is left to ``write_demo_models``."""
    from warmserve.engine.demo import demo_spec

    for name in models:
        spec = demo_spec(name)
        if spec is not None and tokens > spec.max_position_embeddings:
            raise InvalidArgumentError(
                f"{flags} = {value} = {tokens} tokens, more than the context of {name} "
                f"({spec.max_position_embeddings} tokens, its max_position_embeddings): {fix} by at least "
                f"{tokens - spec.max_position_embeddings}, or leave {name} out of --models",
                flag=flags, model=name, tokens=tokens, context_tokens=spec.max_position_embeddings)


def plot_path(json_path: str) -> str:
    return os.path.splitext(json_path)[0] + ".png"


def main(args) -> int:
    check_args(args)
    t0 = time.perf_counter()
    results = run(args)
    results["wall_s"] = time.perf_counter() - t0
    print(table(results))
    if args.json:
        from warmserve.outputs import write_json_atomic

        write_json_atomic(args.json, results, indent=2)
        plot(results, plot_path(args.json))
        print(f"wrote {args.json}")
    return 0
