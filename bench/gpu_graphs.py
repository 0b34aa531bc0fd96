"""CUDA graphs of the decode step (engine/graphs.py, issue 13 item 2) on one GPU: what capturing costs, what
replaying gains, and the time to first token of a prewarm hit with the graphs ready.

1. Load the checkpoint into a cuda slot (prewarm), then ``capture_decode_graphs(lm, max_num_seqs)`` before any
   Engine exists: capture time (warm-up included, per bucket) and memory (torch's reserved bytes, the driver's
   free bytes before and after).
2. Time to first token of a prewarm hit (``Engine(lm)`` + one 16-token prefill + its first token, then the first
   decode step, a graph replay), median of the repeats and each in order (a 7b run of 2 repeats had a median of
   470 ms against 14.5 ms for the eager runs after it: the process's first prefill pays a first-use cost, likely
   CUDA's lazy loading of the prefill kernels); beside it the same with graphs off, and once with the graphs
   dropped first so the activation captures them itself.
3. Decode with graphs against eager at batch 1 and 16, LoadedModel.fused_kernels as loaded (64-token prompts, 64
   new tokens, greedy, ignore_eos):
   tokens/s = batch x 63 / the time of the decode steps (CUDA-synchronised), median of the repeats, graphs and
   eager alternating; whether both produced the same tokens. Batch 1 against the HBM roofline: weight bytes /
   the HBM bandwidth a device-to-device copy reaches in the same run (bytes read + written per second).
4. The same decode with graphs, each layer's small operations fused (LoadedModel.fused_kernels) against unfused.
5. Where a batch-1 decode step's time goes: torch.profiler over eager steps, fused and unfused, and over graph
   replays (fused): kernels per step, their summed device time, the ten costliest kernels, and the device's idle
   time split into gaps inside a replay (< 20 us) and gaps between steps (the host's work).
6. Decode with graphs under cuBLAS against cuBLASLt (torch.backends.cuda.preferred_blas_library), alternating: at
   batch 1 cuBLAS's split-K GEMVs add a reduce kernel to some matmuls (part 5 on an H200); cuBLASLt's heuristics
   may choose other kernels. Each switch drops the graphs, so the next activation captures them anew.
7. Decode with graphs, matmuls of 1 to 4 rows through warmserve's gemv kernel (LoadedModel.gemv_kernel) against
   cuBLAS, alternating; batch 1 against the roofline.
8. Where a decode step's wall time goes, phase by phase (warmserve.bench.step_phases: schedule, forward as the
   host sees it, the wait for the device, sampling, the rest), with graphs at each batch and eager at batch 1: the
   host's part of a step is what the device idles unless step n+1 is launched before step n's token is read.
9. Two launch savings, alternating at each batch (each switch captures the graphs again): the attention's splits
   merged by the reduce kernel (the reference), merged in the attention kernel (kernels.paged_attention
   merge_in_kernel, one launch fewer a layer), and that with programmatic dependent launch on
   (kernels.set_programmatic_launch: each kernel may start while the one before drains, gemv streams weights before
   its wait); then part 5's graph profile (fused, gemv) with both on. Skipped below compute capability 9.0.
10. Decode lookahead (Engine.decode_lookahead, engine/lookahead.py: each greedy step's successor replayed before
   its tokens are read back) against plain replays, alternating at each batch, with the defaults of parts 1-8;
   then part 8's phases with it on, without the synchronize before sampling (it would undo the overlap).
11. Everything together against parts 1-8's setting, alternating at each batch: the splits merged in the kernel
   with lookahead (the engine's defaults since 2026-12-04), and that with programmatic launch as well; batch 1
   against the roofline. Skipped below compute capability 9.0.
12. The norms and activations taken into the gemv after them (LoadedModel.gemv_prologues: kernels.gemv_norm and
   gemv_silu, 48 launches fewer a 1b step), and that with the keys rotated straight into the KV cache as well
   (LoadedModel.rope_writes_kv: kernels.rope_qkv_to_cache, 16 fewer), against separate kernels, alternating, with
   the engine's defaults (merge in kernel, lookahead); then part 5's graph profile (fused, gemv) with both on.
13. gemv with 8 weight vectors in flight per lane against 4 (kernels.set_gemv_in_flight), alternating, with the
   engine's defaults; batch 1 against the roofline.

Usage: python bench/gpu_graphs.py OUT_PREFIX (--checkpoint DIR | --demo NAME --demo-dir DIR) [--repeats 3]
Writes OUT_PREFIX.json and OUT_PREFIX.txt. Run by bench/gpu.sh (the 1b demo when it was written, else llama-90m).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import time
from contextlib import contextmanager

import torch

from warmserve.bench.self_check import check
from warmserve.bench.step_phases import phases_line, step_phases
from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.graphs import capture_decode_graphs, graphs_for, release_decode_graphs
from warmserve.memory import PagePool, kernels

GiB = 1 << 30


class Stopped(BaseException):
    """SIGTERM (bench/gpu.sh's time limit for this script): the parts done so far are written, the rest skipped.
    A BaseException, so that the parts' own ``except Exception`` (a failure recorded, the next part run) let it by."""


def _stop(signum, frame):
    raise Stopped(f"stopped by signal {signum} (the time limit): the parts after the one under way did not run")


def copy_bandwidth_Bps(nbytes: int = GiB) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), median of 5 after a warm-up."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * nbytes / statistics.median(times)


def prompts(vocab: int, batch: int, n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for _ in range(batch)]


def ttft(lm, repeats: int, **kw) -> dict:
    """Median activation, first token and first decode step (seconds) of a 16-token request."""
    p = prompts(lm.config.vocab_size, 1, 16, seed=1)[0]
    act, first, second = [], [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with Engine(lm, target_free_blocks=1, **kw) as eng:
            t1 = time.perf_counter()
            eng.add_request("t", p, SamplingParams(max_tokens=2, ignore_eos=True))
            out = eng.step()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            check(bool(out and out[0].token_ids), "a prewarm hit's first step gave its first token")
            eng.step()
            torch.cuda.synchronize()
            t3 = time.perf_counter()
            graphed = eng.num_graph_steps
        act.append(t1 - t0)
        first.append(t2 - t0)
        second.append(t3 - t2)
    return {"activation_s": statistics.median(act), "ttft_s": statistics.median(first),
            "first_decode_step_s": statistics.median(second), "decode_steps_graphed": graphed,
            "ttft_s_each": first}  # in order: the first call in the process pays a first-use cost


#: Engine attributes decode_engine sets on each engine it makes (part 10 switches decode_lookahead).
ENGINE_SETTINGS = {"decode_lookahead": False}


@contextmanager
def decode_engine(lm, batch: int, prompt_tokens: int, new_tokens: int, graphs: bool, max_num_seqs: int, seed: int):
    """An Engine (graphs or eager) holding `batch` greedy requests of `prompt_tokens` random tokens, `new_tokens`
    each (ignore_eos), none stepped yet; ENGINE_SETTINGS applied."""
    with Engine(lm, max_num_seqs=max_num_seqs, max_batch_tokens=max(2048, batch * prompt_tokens),
                target_free_blocks=2 * batch, cuda_graphs=None if graphs else False) as eng:
        for name, value in ENGINE_SETTINGS.items():
            setattr(eng, name, value)
        for i, p in enumerate(prompts(lm.config.vocab_size, batch, prompt_tokens, seed=seed)):
            eng.add_request(str(i), p, SamplingParams(max_tokens=new_tokens, ignore_eos=True))
        yield eng


def decode_run(lm, batch: int, prompt_tokens: int, new_tokens: int, graphs: bool, max_num_seqs: int):
    """(decode seconds, tokens by request, steps replayed) of one run: prefill step, then the decode steps."""
    with decode_engine(lm, batch, prompt_tokens, new_tokens, graphs, max_num_seqs, seed=2) as eng:
        if graphs and eng.graphs is None:
            raise RuntimeError(f"graphs asked for but off: {eng.graphs_off_reason}")
        toks = {}
        for o in eng.step():
            toks.setdefault(o.request_id, []).extend(o.token_ids)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        while eng.has_unfinished():
            for o in eng.step():
                toks.setdefault(o.request_id, []).extend(o.token_ids)
        torch.cuda.synchronize()
        return time.perf_counter() - t0, toks, eng.num_graph_steps


def alternate(lm, a, bw: float, setups: dict, baseline: str) -> list[dict] | dict:
    """Decode with graphs under each setting of ``setups`` (name -> a function that applies it), alternating, per
    batch: the median ms a step of each after a warm-up round (which also captures the graphs each needs), whether
    the first two gave the same tokens, the speedup of each over ``baseline``, and at batch 1 the fraction of the
    roofline. Settings written before a GPU was at hand can fail: the failure is recorded, not raised, so the
    figures of the other parts stay."""
    out = []
    try:
        for batch in a.batches:
            runs, toks = {name: [] for name in setups}, {}
            for _ in range(a.repeats + 1):
                for name, setup in setups.items():
                    setup()
                    s, toks[name], _ = decode_run(lm, batch, a.prompt_tokens, a.new_tokens, True, a.max_num_seqs)
                    runs[name].append(s)
            first, second = list(setups)[:2]
            row = {"batch": batch, "same_tokens": toks[first] == toks[second]}
            for name, ts in runs.items():
                row[f"step_ms_{name}"] = statistics.median(ts[1:]) / (a.new_tokens - 1) * 1e3
            for name in setups:
                if name != baseline:
                    row[f"speedup_{name}"] = row[f"step_ms_{baseline}"] / row[f"step_ms_{name}"]
                    if batch == 1:
                        row[f"fraction_of_roofline_{name}"] = lm.weight_bytes / bw * 1e3 / row[f"step_ms_{name}"]
            out.append(row)
    except Exception as e:  # noqa: BLE001 (reported in the results instead)
        return {"error": f"{type(e).__name__}: {e}"}
    return out


def alternate_lines(rows: list[dict] | dict, what: str, name: str, baseline: str) -> list[str]:
    """Text lines of alternate()'s rows: ``name`` against ``baseline``."""
    if isinstance(rows, dict):
        return [f"{what}: FAILED: {rows['error']}"]
    out = []
    for r in rows:
        roof = r.get(f"fraction_of_roofline_{name}")
        out.append(f"{what}, decode batch {r['batch']} with graphs: {name} {r[f'step_ms_{name}']:.3f} ms/step against "
                   f"{baseline} {r[f'step_ms_{baseline}']:.3f}: {r[f'speedup_{name}']:.2f}x; same tokens: "
                   f"{r['same_tokens']}" + (f"; {roof * 100:.0f}% of the roofline" if roof else ""))
    return out


def _on_against_off(lm, a, bw: float, attr: str, on: str, off: str) -> list[dict] | dict:
    """``alternate`` between the LoadedModel flag ``attr`` set (run ``on``) and clear (run ``off``, the reference);
    the flag is put back as it was."""
    before = getattr(lm, attr)
    try:
        return alternate(lm, a, bw, {on: lambda: setattr(lm, attr, True), off: lambda: setattr(lm, attr, False)}, off)
    finally:
        setattr(lm, attr, before)


def fused_vs_unfused(lm, a, bw: float) -> list[dict] | dict:
    """4. Decode with graphs, each layer's small operations fused (LoadedModel.fused_kernels) against unfused
    (each switch captures the graphs again at activation, outside the timed steps)."""
    return _on_against_off(lm, a, bw, "fused_kernels", "fused", "unfused")


def blas_libraries(lm, a, bw: float) -> list[dict] | dict:
    """6. Decode with graphs under each BLAS library torch can prefer (module docstring). Each switch drops the
    graphs: the run's activation captures them again, with that library's kernels."""
    before = torch.backends.cuda.preferred_blas_library()

    def prefer(lib):
        def setup():
            torch.backends.cuda.preferred_blas_library(lib)
            release_decode_graphs(lm)
        return setup

    try:
        return alternate(lm, a, bw, {"cublas": prefer("cublas"), "cublaslt": prefer("cublaslt")}, "cublas")
    finally:
        torch.backends.cuda.preferred_blas_library(before)
        release_decode_graphs(lm)


def gemv_vs_cublas(lm, a, bw: float) -> list[dict] | dict:
    """7. Decode with graphs, LoadedModel.gemv_kernel on against off (each switch captures the graphs again)."""
    return _on_against_off(lm, a, bw, "gemv_kernel", "gemv", "cublas")


def host_phases(lm, a, lookahead: bool = False) -> list[dict]:
    """8. step_phases of the decode steps with graphs at each of a.batches and eager at batch 1 (the prefill and
    the first decode step outside it). A failure is recorded, not raised. lookahead: graphs only, with no
    synchronize before sampling (it would wait for the replay launched ahead, the overlap being measured): the
    wait for a step's tokens is then inside ``forward``."""
    out = []
    for batch, graphs in [(b, True) for b in a.batches] + ([] if lookahead else [(1, False)]):
        try:
            with decode_engine(lm, batch, a.prompt_tokens, a.new_tokens, graphs, a.max_num_seqs, seed=4) as eng:
                eng.step()
                eng.step()
                out.append({"batch": batch, "graphs": graphs, **step_phases(
                    eng, a.new_tokens - 3, sync=None if lookahead else torch.cuda.synchronize)})
        except Exception as e:  # noqa: BLE001 (reported in the results instead)
            out.append({"batch": batch, "graphs": graphs, "error": f"{type(e).__name__}: {e}"})
    return out


def idle_gaps_us(spans: list[tuple[float, float]], between_steps_us: float = 20.0) -> tuple[float, float]:
    """(summed idle microseconds between device activities shorter than ``between_steps_us``, and the summed longer
    ones) over (start, end) spans: inside a graph replay kernels follow each other within a few microseconds; a
    longer gap is the host's work between two steps."""
    short = long = 0.0
    end = None
    for s, e in sorted(spans):
        if end is not None and s > end:
            if s - end < between_steps_us:
                short += s - end
            else:
                long += s - end
        end = e if end is None else max(end, e)
    return short, long


def set_launch_savings(lm, merge: bool, pdl: bool) -> tuple[bool, bool]:
    """Part 9's two settings (kernels.set_merge_in_kernel, kernels.set_programmatic_launch); the graphs are
    dropped when either changes, so the next activation captures them under the new ones. Returns the old pair."""
    old = kernels.set_merge_in_kernel(merge), kernels.programmatic_launch()
    if pdl != old[1]:
        kernels.set_programmatic_launch(pdl)
    if (merge, pdl) != old:
        release_decode_graphs(lm)
    return old


def launch_savings(lm, a, bw: float) -> list[dict] | dict:
    """9. alternate() over the split merge and programmatic launch (module docstring); settings put back after."""
    if torch.cuda.get_device_capability() < (9, 0):
        return {"error": "skipped: programmatic dependent launch needs compute capability 9.0"}
    old = set_launch_savings(lm, False, False)

    def setting(merge: bool, pdl: bool):
        return lambda: set_launch_savings(lm, merge, pdl)

    try:
        return alternate(lm, a, bw, {"reduce_kernel": setting(False, False), "merge_in_kernel": setting(True, False),
                                     "merge_and_pdl": setting(True, True)}, "reduce_kernel")
    finally:
        set_launch_savings(lm, *old)


def lookahead_vs_plain(lm, a, bw: float) -> tuple[list[dict] | dict, list[dict]]:
    """10. alternate() with Engine.decode_lookahead on and off, then host_phases with it on."""
    def setting(on: bool):
        return lambda: ENGINE_SETTINGS.update(decode_lookahead=on)

    try:
        rows = alternate(lm, a, bw, {"plain": setting(False), "lookahead": setting(True)}, "plain")
        ENGINE_SETTINGS["decode_lookahead"] = True
        return rows, host_phases(lm, a, lookahead=True)
    finally:
        ENGINE_SETTINGS["decode_lookahead"] = False


@contextmanager
def engine_defaults(lm):
    """Parts 12 and 13 run under the engine's defaults (splits merged in the kernel, no PDL, lookahead); put back
    after."""
    old = set_launch_savings(lm, True, False)
    ENGINE_SETTINGS["decode_lookahead"] = True
    try:
        yield
    finally:
        set_launch_savings(lm, *old)
        ENGINE_SETTINGS["decode_lookahead"] = False


def prologues_vs_separate(lm, a, bw: float) -> list[dict] | dict:
    """12. alternate() over LoadedModel.gemv_prologues and .rope_writes_kv (off, the first, both), under the
    engine's defaults; the flags are put back after."""
    before = lm.gemv_prologues, lm.rope_writes_kv

    def setting(prologues: bool, rope: bool):
        def apply():
            lm.gemv_prologues, lm.rope_writes_kv = prologues, rope
        return apply

    try:
        with engine_defaults(lm):
            return alternate(lm, a, bw, {"separate": setting(False, False), "prologues": setting(True, False),
                                         "prologues_and_rope_kv": setting(True, True)}, "separate")
    finally:
        lm.gemv_prologues, lm.rope_writes_kv = before


def in_flight_8_vs_4(lm, a, bw: float) -> list[dict] | dict:
    """13. alternate() over gemv's vectors in flight (4, 8) under the engine's defaults, graphs dropped at each."""
    def setting(n: int):
        def apply():
            if kernels.set_gemv_in_flight(n) != n:
                release_decode_graphs(lm)
        return apply

    first = kernels.set_gemv_in_flight(4)
    if first != 4:
        release_decode_graphs(lm)
    try:
        with engine_defaults(lm):
            return alternate(lm, a, bw, {"four": setting(4), "eight": setting(8)}, "four")
    finally:
        setting(first)()


def together(lm, a, bw: float) -> list[dict] | dict:
    """11. alternate() over the plain setting and the savings of parts 9 and 10 together; settings put back after."""
    if torch.cuda.get_device_capability() < (9, 0):
        return {"error": "skipped: programmatic dependent launch needs compute capability 9.0"}
    old = set_launch_savings(lm, False, False)

    def setting(merge: bool, pdl: bool, lookahead: bool):
        def apply():
            set_launch_savings(lm, merge, pdl)
            ENGINE_SETTINGS["decode_lookahead"] = lookahead
        return apply

    try:
        return alternate(lm, a, bw, {"plain": setting(False, False, False), "defaults": setting(True, False, True),
                                     "defaults_and_pdl": setting(True, True, True)}, "plain")
    finally:
        set_launch_savings(lm, *old)
        ENGINE_SETTINGS["decode_lookahead"] = False


def kernel_profile(lm, a, fused: bool, steps: int = 8, graphs: bool = False, gemv: bool = False,
                   savings: bool = False, prologues: bool = False) -> dict:
    """5. The CUDA kernels of `steps` batch-1 decode steps (torch.profiler), eager or graph replays: per step, how
    many and their summed device time; the ten costliest by device time; with graphs, the device's idle time
    split into gaps inside a replay (< 20 us) and between steps. savings: with part 9's two launch savings on (the
    splits merged in the attention kernel, programmatic launch). prologues: LoadedModel.gemv_prologues and
    .rope_writes_kv (part 12).
    ENGINE_SETTINGS apply (no lookahead). A failure is recorded, not raised."""
    from torch.profiler import ProfilerActivity, profile

    before = lm.fused_kernels, lm.gemv_kernel, lm.gemv_prologues, lm.rope_writes_kv
    old = set_launch_savings(lm, savings, savings)
    try:
        lm.fused_kernels, lm.gemv_kernel, lm.gemv_prologues, lm.rope_writes_kv = fused, gemv, prologues, prologues
        with Engine(lm, max_num_seqs=a.max_num_seqs, cuda_graphs=None if graphs else False) as eng:
            for name, value in ENGINE_SETTINGS.items():
                setattr(eng, name, value)
            eng.add_request("0", prompts(lm.config.vocab_size, 1, a.prompt_tokens, seed=3)[0],
                            SamplingParams(max_tokens=steps + 3, ignore_eos=True))
            for _ in range(2):  # the prefill and one decode step, outside the profile
                eng.step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    eng.step()
                torch.cuda.synchronize()
        rows = [(e.self_device_time_total, e.count, e.key) for e in prof.key_averages()
                if e.device_type == torch.autograd.DeviceType.CUDA]  # kernels, copies, memsets; not CPU ops
        rows.sort(reverse=True)
        out = {"fused": fused, "graphs": graphs, "gemv": gemv, "savings": savings, "prologues": prologues,
               "steps": steps,
               "kernels_per_step": sum(r[1] for r in rows) / steps,
               "device_ms_per_step": sum(r[0] for r in rows) / steps / 1e3,
               "top": [{"kernel": k[:100], "calls_per_step": n / steps, "us_per_step": us / steps}
                       for us, n, k in rows[:10]]}
        spans = [(e.time_range.start, e.time_range.end) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA]
        short, long = idle_gaps_us(spans)
        out.update(gaps_in_replay_us_per_step=short / steps, gaps_between_steps_us_per_step=long / max(steps - 1, 1))
        return out
    except Exception as e:  # noqa: BLE001 (reported in the results instead)
        return {"fused": fused, "gemv": gemv, "error": f"{type(e).__name__}: {e}"}
    finally:
        lm.fused_kernels, lm.gemv_kernel, lm.gemv_prologues, lm.rope_writes_kv = before
        set_launch_savings(lm, *old)


def _phase_lines(rows: list[dict], label) -> list[str]:
    """host_phases' rows as text, each under label(row)."""
    return [f"{label(p)}: FAILED: {p['error']}" if "error" in p else phases_line(label(p), p) for p in rows]


def text_lines(res: dict) -> list[str]:
    """The text report of main()'s results (its JSON), part by part; a part that did not run is left out."""
    lines = [f"machine: {res['machine']}", f"model: {res['model']} ({res['dtype']}, "
             f"{res['weight_bytes'] / 1e9:.2f} GB of weights); copy bandwidth {res['copy_bandwidth_GBps']:.0f} GB/s"]
    c = res.get("capture")
    if c:
        lines.append(f"capture at prewarm: buckets {c['buckets']} in {c['capture_s'] * 1e3:.1f} ms (warm-up "
                     f"{c['warmup_s'] * 1e3:.1f} ms); pool {c['pool_reserved_bytes'] / 2**20:.1f} MiB reserved, "
                     f"device {c['device_bytes'] / 2**20:.1f} MiB, static inputs {c['static_input_bytes'] / 2**10:.0f} "
                     "KiB x 2")
    for key in ("ttft_prewarm_hit_graphs_ready", "ttft_prewarm_hit_eager", "ttft_capture_at_activation"):
        if key not in res:
            continue
        t = res[key]
        lines.append(f"{key}: activation {t['activation_s'] * 1e3:.1f} ms, TTFT {t['ttft_s'] * 1e3:.1f} ms, first "
                     f"decode step {t['first_decode_step_s'] * 1e3:.2f} ms "
                     f"(graphed steps {t['decode_steps_graphed']}); "
                     f"TTFT of each, in order: {', '.join(f'{x * 1e3:.1f}' for x in t['ttft_s_each'])} ms")
    for r in res.get("decode", []):
        extra = ""
        if "hbm_roofline_step_ms" in r:
            extra = (f"; roofline {r['hbm_roofline_step_ms']:.3f} ms/step, graphs at "
                     f"{r['fraction_of_roofline_graphs'] * 100:.0f}% of it")
        lines.append(f"decode batch {r['batch']}: graphs {r['decode_tok_s_graphs']:.0f} tok/s "
                     f"({r['step_ms_graphs']:.2f} ms/step), eager {r['decode_tok_s_eager']:.0f} tok/s "
                     f"({r['step_ms_eager']:.2f} ms/step): {r['speedup']:.2f}x; same tokens: {r['same_tokens']}{extra}")
    lines += alternate_lines(res.get("fused", []), "fused layer kernels", "fused", "unfused")
    for p in res.get("profile", []):
        name = (("fused" if p["fused"] else "unfused") + (", graphs" if p.get("graphs") else ", eager")
                + (", gemv" if p.get("gemv") else "") + (", merge in kernel + PDL" if p.get("savings") else "")
                + (", gemv prologues + rope writes KV" if p.get("prologues") else ""))
        if "error" in p:
            lines.append(f"profile ({name}): FAILED: {p['error']}")
            continue
        lines.append(f"profile ({name}), decode batch 1: {p['kernels_per_step']:.0f} kernels a step, "
                     f"{p['device_ms_per_step']:.3f} ms of device time a step, idle "
                     f"{p['gaps_in_replay_us_per_step']:.0f} us in gaps < 20 us and "
                     f"{p['gaps_between_steps_us_per_step']:.0f} us between steps; costliest:")
        lines += [f"  {t['us_per_step']:8.1f} us/step {t['calls_per_step']:5.1f} calls  {t['kernel']}"
                  for t in p["top"]]
    lines += alternate_lines(res.get("blas", []), "BLAS library", "cublaslt", "cublas")
    lines += alternate_lines(res.get("gemv", []), "gemv kernel", "gemv", "cublas")
    lines += _phase_lines(res.get("phases", []), lambda p: f"step phases, decode batch {p['batch']} "
                          f"{'with graphs' if p['graphs'] else 'eager'}")
    for name in ("merge_in_kernel", "merge_and_pdl"):
        lines += alternate_lines(res.get("launch_savings", []), "launch savings", name, "reduce_kernel")
    lines += alternate_lines(res.get("lookahead", []), "decode lookahead", "lookahead", "plain")
    lines += _phase_lines(res.get("lookahead_phases", []),
                          lambda p: f"step phases with lookahead, decode batch {p['batch']} with graphs")
    for name in ("defaults", "defaults_and_pdl"):
        lines += alternate_lines(res.get("together", []), "together", name, "plain")
    for name in ("prologues", "prologues_and_rope_kv"):
        lines += alternate_lines(res.get("prologues", []), "fewer launches (defaults on)", name, "separate")
    lines += alternate_lines(res.get("in_flight", []), "gemv vectors in flight (defaults on)", "eight", "four")
    if "stopped" in res:
        lines.append(f"STOPPED: {res['stopped']}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output prefix (writes OUT.json and OUT.txt)")
    ap.add_argument("--checkpoint", help="checkpoint directory (e.g. the 1b demo)")
    ap.add_argument("--demo", default="llama-90m", help="small demo model written to --demo-dir when no checkpoint")
    ap.add_argument("--demo-dir", default="/tmp/warmserve-gpu-demo")
    ap.add_argument("--pool-gib", type=float, default=None,
                    help="GPU memory pool (default: the checkpoint's safetensors bytes + 6 GiB for KV and activations)")
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    path = a.checkpoint
    if not path:
        from warmserve.engine.demo import write_demo_models

        path = write_demo_models(a.demo_dir, names=[a.demo])[a.demo]
    torch.backends.cuda.matmul.allow_tf32 = True
    res = {"machine": f"{torch.cuda.get_device_name(0)}; torch {torch.__version__} (cuda {torch.version.cuda}); "
                      f"{platform.platform()}", "checkpoint": path, "max_num_seqs": a.max_num_seqs}
    if a.pool_gib is None:
        weights = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
        a.pool_gib = weights / GiB + 6
    bw = copy_bandwidth_Bps()
    # Parts 1-10 keep the setting they were first measured in, the reduce kernel (lookahead: ENGINE_SETTINGS), so
    # their figures compare across runs; part 11 times the engine's defaults against it.
    kernels.set_merge_in_kernel(False)
    res["copy_bandwidth_GBps"] = bw / 1e9
    with PagePool(int(a.pool_gib * GiB) // (2 << 20) * (2 << 20), backend="cuda") as pool:
        t0 = time.perf_counter()
        lm = load_model(path, pool).wait()
        res["load_s"] = time.perf_counter() - t0
        res["model"] = lm.name
        res["dtype"] = str(lm.dtype).replace("torch.", "")
        res["weight_bytes"] = int(lm.weight_bytes)
        try:
            g = capture_decode_graphs(lm, a.max_num_seqs)  # the prewarm hook: no Engine yet
            st = g.stats
            res["capture"] = {"buckets": list(st.buckets), "capture_s": st.capture_s, "warmup_s": st.warmup_s,
                              "bucket_capture_s": {str(k): v for k, v in sorted(st.bucket_capture_s.items())},
                              "pool_reserved_bytes": st.pool_reserved_bytes, "device_bytes": st.device_bytes,
                              "static_input_bytes": st.static_input_bytes}
            res["ttft_prewarm_hit_graphs_ready"] = ttft(lm, a.repeats)
            res["ttft_prewarm_hit_eager"] = ttft(lm, a.repeats, cuda_graphs=False)
            release_decode_graphs(lm)
            res["ttft_capture_at_activation"] = ttft(lm, 1)  # this activation captures; the graphs stay
            check(graphs_for(lm) is not None, "the activation captured the decode graphs")
            res["decode"] = []
            for batch in a.batches:
                runs = {"graphs": [], "eager": []}
                toks, replayed = {}, {}
                decode_run(lm, batch, a.prompt_tokens, a.new_tokens, True, a.max_num_seqs)  # warm-up
                for _ in range(a.repeats):
                    for mode in ("graphs", "eager"):
                        s, toks[mode], replayed[mode] = decode_run(lm, batch, a.prompt_tokens, a.new_tokens,
                                                             mode == "graphs", a.max_num_seqs)
                        runs[mode].append(s)
                n = batch * (a.new_tokens - 1)
                row = {"batch": batch, "new_tokens": a.new_tokens, "prompt_tokens": a.prompt_tokens,
                       "graph_steps_per_run": replayed["graphs"], "eager_run_graph_steps": replayed["eager"],
                       "same_tokens": toks["graphs"] == toks["eager"]}
                for mode, ts in runs.items():
                    s = statistics.median(ts)
                    row[f"decode_tok_s_{mode}"] = n / s
                    row[f"step_ms_{mode}"] = s / (a.new_tokens - 1) * 1e3
                row["speedup"] = row["decode_tok_s_graphs"] / row["decode_tok_s_eager"]
                if batch == 1:
                    roof_s = lm.weight_bytes / bw  # a step reads every weight once; bw: bytes moved per second
                    row["hbm_roofline_step_ms"] = roof_s * 1e3
                    row["fraction_of_roofline_graphs"] = roof_s * 1e3 / row["step_ms_graphs"]
                res["decode"].append(row)
            res["fused"] = fused_vs_unfused(lm, a, bw)
            res["profile"] = [kernel_profile(lm, a, fused) for fused in (False, True)]
            res["profile"].append(kernel_profile(lm, a, True, graphs=True))  # where a replayed step's time goes
            res["blas"] = blas_libraries(lm, a, bw)
            res["gemv"] = gemv_vs_cublas(lm, a, bw)
            res["profile"].append(kernel_profile(lm, a, True, graphs=True, gemv=True))
            res["phases"] = host_phases(lm, a)
            res["launch_savings"] = launch_savings(lm, a, bw)
            if isinstance(res["launch_savings"], list):
                res["profile"].append(kernel_profile(lm, a, True, graphs=True, gemv=True, savings=True))
            res["lookahead"], res["lookahead_phases"] = lookahead_vs_plain(lm, a, bw)
            res["together"] = together(lm, a, bw)
            res["prologues"] = prologues_vs_separate(lm, a, bw)
            res["profile"].append(kernel_profile(lm, a, True, graphs=True, gemv=True, prologues=True))
            res["in_flight"] = in_flight_8_vs_4(lm, a, bw)
        except Stopped as e:
            res["stopped"] = str(e)
        finally:
            release_decode_graphs(lm)
            lm.close()
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    lines = text_lines(res)
    with open(a.out + ".txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
