"""Named experiments: the paper's cluster and models with an Azure workload, and the scale runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from warmserve.errors import InvalidArgumentError
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.workload.recipes import DAY_S, SERVEGEN_LAST_DAY_S, paper_workload, servegen_workload
from warmserve.workload.request import Workload

#: the paper's models: Llama-2 7B/13B/70B at tp 1/2/4; copies ranked by the power law in this interleaved order,
#: so each size has popular and unpopular copies
PAPER_ORDER = ("llama2-7b", "llama2-13b", "llama2-70b", "llama2-7b", "llama2-13b", "llama2-7b", "llama2-7b",
               "llama2-13b", "llama2-70b", "llama2-7b", "llama2-13b", "llama2-7b")
#: models in the paper presets: one instance of each takes 4 + 2x2 + 4 = 12 of the 16 GPUs, leaving room to burst
PAPER_N_MODELS = 7
#: the power-law exponent of the per-model rate split in our paper presets: our choice. The paper splits rates
#: by a power law (PAPER.md, "Traces") but gives no exponent here; the artifact presets use its code's 0.5
#: (ARTIFACT_ALPHA), so the two families show both a steeper and a flatter split.
PAPER_ALPHA = 1.0
#: models in the artifact presets: the authors' released code by default serves two 7B, one 13B and one 70B
#: (PAPER.md, "What the authors' released code runs"), the first four of PAPER_ORDER; one instance of each takes
#: 1 + 1 + 2 + 4 = 8 of the 16 GPUs
ARTIFACT_N_MODELS = 4
#: the artifact's default power-law exponent (PAPER.md: alpha 0.5; its README's example uses 2)
ARTIFACT_ALPHA = 0.5
#: total request rate of every named preset at rate scale 1, requests/second: ours (the paper does not state its
#: rate; the artifact's 1 request/s default is a smoke test that leaves 16 GPUs idle); rate sweeps scale it
PRESET_RATE_RPS = 24.0
#: the warm-up both recipes replay before t = 0 (``pre_s`` of paper_workload and servegen_workload), seconds of trace
RECIPE_WARMUP_S = 600.0
#: the scale preset's ServeGen recipe reuses each client series shifted by 1 to this many days when more models are
#: asked for than series (``recipes.servegen_series``' repeat_days)
SERVEGEN_REPEAT_DAYS = 6
#: models of the servegen workload and the scale preset when `warmserve simulate --models` is not given (its help
#: states it from here)
SCALE_N_MODELS = 32


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
    #: power-law exponent of the per-model rate split (paper-recipe presets)
    alpha: float = PAPER_ALPHA
    #: seconds of trace the workload's warm-up and replay span (before --time-scale), and the history days
    #: replayed beside them: what ``expected_requests`` counts (the replay's 1200 s: PAPER.md "Traces", 20 minutes)
    span_s: float = RECIPE_WARMUP_S + 1200.0
    history_days: int = 0
    #: the Azure-layout CSV the paper recipe replays (``warmserve simulate --trace``); None: the bundled trace
    trace_path: str | None = None

    @property
    def label(self) -> str:
        """The name printed and plotted: the preset's, and the trace file's where ``--trace`` gave one."""
        return self.name + (f" on {os.path.basename(self.trace_path)}" if self.trace_path else "")

    def expected_requests(self, rate_scale: float = 1.0) -> float:
        """About how many requests ``build(rate_scale, seed)`` generates: its rate over the warm-up and replay and
        again over each history day (the recipes replay the same span on every history day), so that a run too
        large for memory is refused before it is built (``sim.cli_checks.check_request_budget``)."""
        return self.base_rate_rps * rate_scale * self.span_s * (1 + self.history_days)


def paper_preset(kind: str, *, total_rate_rps: float | None = None, alpha: float = PAPER_ALPHA,
                 n_models: int = PAPER_N_MODELS, burst_cv: float | None = None, history_days: int = 3,
                 config: SimConfig | None = None, name: str = "paper", trace_path: str | None = None) -> Preset:
    """2 servers x 8 GPUs, Llama-2 7B/13B/70B copies, an Azure trace split by a power law, 20 minutes.
    ``trace_path``: a CSV in the Azure 2023 layout replayed instead of the bundled ``kind`` trace."""
    if kind not in ("conv", "code"):
        raise InvalidArgumentError(f"paper preset kind {kind!r}: 'conv' or 'code'", kind=kind)
    models = paper_models(n_models)
    names = [m.name for m in models]
    rate = total_rate_rps if total_rate_rps is not None else PRESET_RATE_RPS

    def build(rate_scale: float = 1.0, seed: int = 0) -> Workload:
        return paper_workload(kind, n_models, alpha=alpha, total_rate_rps=rate, rate_scale=rate_scale,
                              burst_cv=burst_cv, model_names=names, seed=seed, history_days=history_days,
                              path=trace_path)

    return Preset(f"{name}-{kind}", config or SimConfig(n_servers=2, gpus_per_server=8), models, build, rate, alpha,
                  history_days=history_days, trace_path=trace_path)


def artifact_preset(kind: str, *, total_rate_rps: float | None = None, alpha: float = ARTIFACT_ALPHA,
                    n_models: int = ARTIFACT_N_MODELS, burst_cv: float | None = None, history_days: int = 3,
                    config: SimConfig | None = None, trace_path: str | None = None) -> Preset:
    """The authors' released setup on our cluster: 4 models (Llama-2 7B x2, 13B, 70B), power law alpha 0.5,
    otherwise the paper preset (2 x 8 H100, an Azure trace, 20 minutes)."""
    return paper_preset(kind, total_rate_rps=total_rate_rps, alpha=alpha, n_models=n_models, burst_cv=burst_cv,
                        history_days=history_days, config=config, name="artifact", trace_path=trace_path)


def cluster_shape(n_gpus: int) -> tuple[int, int]:
    """(servers, GPUs per server) for ``n_gpus``: 8 GPUs per server, or one smaller server."""
    if n_gpus < 1 or (n_gpus > 8 and n_gpus % 8):
        raise InvalidArgumentError(f"--gpus {n_gpus}: servers hold 8 GPUs, so give 1-8 or a multiple of 8 "
                                   f"(e.g. {max(8, n_gpus // 8 * 8)} or {(n_gpus // 8 + 1) * 8})", gpus=n_gpus)
    return max(1, n_gpus // 8), min(8, n_gpus)


def scale_preset(n_gpus: int, n_models: int, *, duration_s: float = 3600.0, total_rate_rps: float | None = None,
                 recipe: str = "servegen", config: SimConfig | None = None, start_hour: float = 20.0,
                 history_days: int = 2, burst_cv: float | None = None, time_scale: float = 1.0,
                 alpha: float | None = None) -> Preset:
    """A big cluster (8 GPUs per server) under the ServeGen recipe (or the paper's, on conv: its trace covers
    under an hour, so with history that recipe takes a ``duration_s`` of at most about 1450 s and refuses more).
    ServeGen only: ``start_hour`` is the replay's start on ServeGen's last day (hours after its midnight).
    ``history_days``: the earlier days the forecasts see (both recipes; found in review: the paper recipe took 2
    whatever was asked). ``burst_cv`` and ``time_scale`` as the recipes take them;
    ``alpha``: the paper recipe's power-law split (its default when None; the ServeGen recipe has none)."""
    if recipe == "servegen" and not (0.0 <= start_hour and start_hour * 3600.0 + duration_s <= DAY_S):
        raise InvalidArgumentError(f"start hour {start_hour:g} with {duration_s:g} s of replay runs past the end of "
                                   f"ServeGen's last day: start between 0 and {(DAY_S - duration_s) / 3600:g} h",
                                   start_hour=start_hour)
    models = mixed_models(n_models)
    names = [m.name for m in models]
    rate = total_rate_rps if total_rate_rps is not None else 1.0 * n_gpus

    def build(rate_scale: float = 1.0, seed: int = 0) -> Workload:
        if recipe == "servegen":
            w = servegen_workload(n_models, start_s=SERVEGEN_LAST_DAY_S + start_hour * 3600.0,
                                  total_rate_rps=rate * rate_scale, duration_s=duration_s,
                                  history_days=history_days, seed=seed, include_aggregates=False,
                                  max_prompt_tokens=4096, repeat_days=SERVEGEN_REPEAT_DAYS, burst_cv=burst_cv,
                                  time_scale=time_scale)
            rename = dict(zip(w.models, names))
            w.trace.models = [rename[m] for m in w.trace.models]
            w.history.models = list(w.trace.models)
            return w
        return paper_workload("conv", n_models, total_rate_rps=rate, rate_scale=rate_scale, duration_s=duration_s,
                              model_names=names, seed=seed, history_days=history_days, burst_cv=burst_cv,
                              time_scale=time_scale, **({} if alpha is None else {"alpha": alpha}))

    servers, per_server = cluster_shape(n_gpus)
    cfg = config or SimConfig(n_servers=servers, gpus_per_server=per_server)
    return Preset(f"scale-{n_gpus}x{n_models}", cfg, models, build, rate,
                  **({} if alpha is None else {"alpha": alpha}), span_s=RECIPE_WARMUP_S + duration_s,
                  history_days=history_days)


PRESETS = {
    "paper-conv": lambda **kw: paper_preset("conv", **kw),
    "paper-code": lambda **kw: paper_preset("code", **kw),
    "artifact-conv": lambda **kw: artifact_preset("conv", **kw),
    "artifact-code": lambda **kw: artifact_preset("code", **kw),
}
