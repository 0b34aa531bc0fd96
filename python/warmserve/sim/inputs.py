"""What the simulator derives from a workload before it runs, apart from the event loop: what the policy knows of each
served model (``model_infos``, with each model's context: its configured one, else its longest request of the run,
``longest_requests``), the policy's read bandwidths of the simulated GPU (``planning_config``), the forecast history
(``history_windows``), the warm-up it replays (``warmup_trace``), the check that every model of the workload is
served (``check_served``), and the check that the run's clock starts at or after the policy's time 0
(``check_clock``)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig
from warmserve.policy.state import ModelInfo
from warmserve.sim.config import ServedModel
from warmserve.sim.costmodel import CostModel
from warmserve.workload.concurrency import concurrency_windows
from warmserve.workload.request import Trace, Workload


#: The policy's planning figures of the hardware, as PolicyConfig has them by default (an H100's HBM).
_PLANNING_DEFAULTS = {"decode_read_bytes_per_s": PolicyConfig.decode_read_bytes_per_s,
                      "weight_read_bytes_per_s": PolicyConfig.weight_read_bytes_per_s}


def planning_config(pcfg: PolicyConfig, cost: CostModel) -> PolicyConfig:
    """``pcfg`` with the co-serving rule's read bandwidths (``decode_read_bytes_per_s``,
    ``weight_read_bytes_per_s``) taken from the simulated GPU where left at their defaults: found in review, a run
    with `--gpu A100-80GB` or a calibrated CPU profile planned its co-served decode steps with an H100's HBM while its
    engines stepped at the GPU's own rate. A value given (``--policy-option``) is kept."""
    # GpuType names its figures as PolicyConfig does: the GPU's own is read by the same name
    return replace(pcfg, **{k: getattr(cost.gpu, k) for k, default in _PLANNING_DEFAULTS.items()
                            if getattr(pcfg, k) == default})


def model_infos(served: list[ServedModel], cost: CostModel,
                max_context_tokens: dict[str, int] | None = None) -> list[ModelInfo]:
    """What the policy knows of each served model, from the cost model. Its context: the model's configured
    ``ServedModel.context_tokens`` where set (as the live controller passes its checkpoint's), else
    ``max_context_tokens`` per model (the run's longest requests, ``longest_requests``)."""
    out = []
    ctx = max_context_tokens or {}
    for s in served:
        c = cost.cost(s.name, s.size)
        # 1024: the paper's prompt cut (costmodel.PAPER_PROMPT_TOKENS, policy.signals.PREFILL_PROFILE_TOKENS);
        # 16: a small batch, no source found (flat on the GPU presets, whose decode_per_seq_s is 0;
        # bench/simulate/CONSTANTS.md)
        out.append(ModelInfo(s.name, int(c.weight_bytes), c.tp, int(c.kv_bytes_per_token),
                             prefill_s=cost.prefill_s(c, 1024), decode_s_per_token=cost.decode_step_s(c, 16),
                             max_context_tokens=int(s.context_tokens or ctx.get(s.name, 0))))
    return out


def warmup_trace(workload: Workload, warmup_s: float) -> Trace:
    """The history's requests in [-warmup_s, 0): what the simulator replays before its clock reaches 0, and what the
    live replay sends as its warm-up (so the twin's warm-up is exactly the live one's)."""
    return workload.history.span(-warmup_s, 0.0) if warmup_s > 0 else Trace.empty(workload.models)


def longest_requests(workload: Workload, warm: Trace) -> dict[str, int]:
    """Per model, the longest request (prompt + output tokens) the run sends it, warm-up included: the context an
    operator configures (vLLM's ``--max-model-len``) so that no request of its traffic is refused, and what the
    live controller passes the policy as ``ModelInfo.max_context_tokens``. A KV share the policy sizes holds one
    such request (found in review: with no context known a colocated share held 1,024 tokens, and the longest
    requests of a quiet model, which a dedicated instance serves, were refused). ``warm``: the run's warm-up
    (``warmup_trace``)."""
    out: dict[str, int] = {}
    for tr in (warm, workload.trace):
        if not len(tr):
            continue
        tokens = np.asarray(tr.prompt_tokens, dtype=np.int64) + np.asarray(tr.output_tokens, dtype=np.int64)
        longest = np.zeros(len(workload.models), dtype=np.int64)
        np.maximum.at(longest, np.asarray(tr.model), tokens)
        for i, name in enumerate(workload.models):
            out[name] = max(out.get(name, 0), int(longest[i]))
    return out


def history_windows(workload: Workload, served: list[ServedModel], cost: CostModel, warmup_s: float,
                    window_s: float) -> dict:
    """Forecast history per model: windows of in-flight load over the workload's history (before the warm-up),
    with each request in flight for its uncontended latency. Windows with no data are NaN (missing)."""
    h = workload.history
    if not len(h):
        return {}
    clock0 = workload.clock0_s
    out = {}
    idx = {n: i for i, n in enumerate(h.models)}
    for s in served:
        if s.name not in idx:
            continue
        c = cost.cost(s.name, s.size)
        m = (h.model == idx[s.name]) & (h.arrival_s < -warmup_s)
        arr = h.arrival_s[m] + clock0
        if not len(arr):
            continue
        lat = np.array([cost.prefill_s(c, int(p)) for p in h.prompt_tokens[m]]) \
            + (h.output_tokens[m] - 1) * cost.decode_step_s(c, 16)
        t0 = math.floor(arr.min() / window_s) * window_s
        t1 = math.floor((clock0 - warmup_s) / window_s) * window_s
        starts, avg, peak = concurrency_windows(arr, arr + lat, t0, t1, window_s)
        if workload.history_spans:
            # only windows inside the spans the history covers are known (quiet ones there are real zeros)
            known = np.zeros(len(starts), bool)
            for a, b in workload.history_spans:
                known |= (starts >= a + clock0 - 1e-6) & (starts + window_s <= b + clock0 + 1e-6)
        else:
            counts = np.bincount(((arr - t0) // window_s).astype(np.int64), minlength=len(starts))[:len(starts)]
            known = counts > 0
        # absent windows are missing to the policy
        out[s.name] = (starts[known], avg[known], peak[known])
    return out


def check_clock(workload: Workload, warmup_s: float) -> None:
    """Raises InvalidArgumentError where the workload's history or warm-up starts before the policy's time 0: its
    windows are counted from 0 (History refuses earlier ones; found while writing a test: a warm-up before 0
    crashed the load meter with an IndexError at its first window)."""
    earliest = workload.clock0_s - max(warmup_s, 0.0)
    if len(workload.history):
        earliest = min(earliest, workload.clock0_s + float(np.min(workload.history.arrival_s)))
    if earliest < 0:
        raise InvalidArgumentError(
            f"workload {workload.name!r}: its history and warm-up start at {earliest:.0f} s on the policy's clock, "
            f"before 0 (clock0_s {workload.clock0_s:.0f}, warm-up {warmup_s:.0f} s): set the workload's clock0_s "
            f"to at least {math.ceil(workload.clock0_s - earliest)}", clock0_s=workload.clock0_s, warmup_s=warmup_s)


def check_served(workload: Workload, served_names: list[str]) -> None:
    """Refuse a workload with requests for a model not among ``served_names``, naming them and the served ones."""
    missing = set(workload.models) - set(served_names)
    if missing:
        raise InvalidArgumentError(f"workload models {sorted(missing)} are not served (served: {sorted(served_names)}):"
                                   " add them to the served models", missing=sorted(missing), served=served_names)
