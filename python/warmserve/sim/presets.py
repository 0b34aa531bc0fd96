"""Named experiments: the paper's cluster and models with an Azure workload, and the scale runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from warmserve.sim.config import ServedModel, SimConfig
from warmserve.workload.recipes import paper_workload, servegen_workload
from warmserve.workload.request import Workload

#: the paper's models: Llama-2 7B/13B/70B at tp 1/2/4; copies ranked by the power law in this interleaved order,
#: so each size has popular and unpopular copies
PAPER_ORDER = ("llama2-7b", "llama2-13b", "llama2-70b", "llama2-7b", "llama2-13b", "llama2-7b", "llama2-7b",
               "llama2-13b", "llama2-70b", "llama2-7b", "llama2-13b", "llama2-7b")
#: models in the paper presets: one instance of each takes 4 + 2x2 + 4 = 12 of the 16 GPUs, leaving room to burst
PAPER_N_MODELS = 7


def paper_models(n: int = len(PAPER_ORDER)) -> list[ServedModel]:
    count: dict[str, int] = {}
    out = []
    for i in range(n):
        size = PAPER_ORDER[i % len(PAPER_ORDER)]
        k = count.get(size, 0)
        count[size] = k + 1
        out.append(ServedModel(f"{size}-{chr(ord('a') + k) if k < 26 else k}", size))
    return out


def mixed_models(n: int) -> list[ServedModel]:
    """n models for the scale runs: sizes in the paper's mix, named m0..m{n-1}."""
    return [ServedModel(f"m{i}", PAPER_ORDER[i % len(PAPER_ORDER)]) for i in range(n)]


@dataclass(frozen=True)
class Preset:
    name: str
    config: SimConfig
    models: list = field(default_factory=list)
    #: workload builder: (rate_scale, seed) -> Workload
    build: Callable[[float, int], Workload] = None
    #: what the preset replays at rate scale 1, requests/second
    base_rate_rps: float = 0.0


def paper_preset(kind: str, *, total_rate_rps: float | None = None, alpha: float = 1.0, n_models: int = PAPER_N_MODELS,
                 burst_cv: float | None = None, history_days: int = 3, config: SimConfig | None = None) -> Preset:
    """2 servers x 8 GPUs, Llama-2 7B/13B/70B copies, an Azure trace split by a power law, 20 minutes."""
    models = paper_models(n_models)
    names = [m.name for m in models]
    rate = total_rate_rps if total_rate_rps is not None else {"conv": 24.0, "code": 24.0}[kind]

    def build(rate_scale: float = 1.0, seed: int = 0) -> Workload:
        return paper_workload(kind, n_models, alpha=alpha, total_rate_rps=rate, rate_scale=rate_scale,
                              burst_cv=burst_cv, model_names=names, seed=seed, history_days=history_days)

    return Preset(f"paper-{kind}", config or SimConfig(n_servers=2, gpus_per_server=8), models, build, rate)


def scale_preset(n_gpus: int, n_models: int, *, duration_s: float = 3600.0, total_rate_rps: float | None = None,
                 recipe: str = "servegen", config: SimConfig | None = None) -> Preset:
    """A big cluster (8 GPUs per server) under the ServeGen recipe (or the paper's, on conv)."""
    models = mixed_models(n_models)
    names = [m.name for m in models]
    rate = total_rate_rps if total_rate_rps is not None else 1.0 * n_gpus

    def build(rate_scale: float = 1.0, seed: int = 0) -> Workload:
        if recipe == "servegen":
            w = servegen_workload(n_models, total_rate_rps=rate * rate_scale, duration_s=duration_s,
                                  history_days=2, seed=seed, include_aggregates=False,
                                  max_prompt_tokens=4096, repeat_days=6)
            rename = dict(zip(w.models, names))
            w.trace.models = [rename[m] for m in w.trace.models]
            w.history.models = list(w.trace.models)
            return w
        return paper_workload("conv", n_models, total_rate_rps=rate, rate_scale=rate_scale, duration_s=duration_s,
                              model_names=names, seed=seed, history_days=2)

    cfg = config or SimConfig(n_servers=max(1, n_gpus // 8), gpus_per_server=min(8, n_gpus))
    return Preset(f"scale-{n_gpus}x{n_models}", cfg, models, build, rate)


PRESETS = {
    "paper-conv": lambda **kw: paper_preset("conv", **kw),
    "paper-code": lambda **kw: paper_preset("code", **kw),
}
