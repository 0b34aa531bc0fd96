"""Sizing rules of co-serving (``coserve``): a model's decode step (predicted, raised to what its engines measured
when they report it), how many models a host of a given GPU size holds, each one's KV share and the requests that
share takes. Pure: they read the model, the policy's knobs, GPU sizes and the measured steps given to them
(``HostSizing.observe``), and decide nothing (``coserve.CoServing`` decides with them)."""

from __future__ import annotations

from dataclasses import dataclass

from warmserve.policy.config import PolicyConfig
from warmserve.policy.state import ClusterState, ModelInfo, runs_alone

#: Share of a GPU's pool the weights of a host's models may take together (the rest is KV): the `shared`
#: baseline's rule (``colocation.plan_shared``: weights up to 80% of memory).
WEIGHT_SHARE_PER_HOST = 0.8
#: Longest a measured decode step is used, seconds: past it the model's engines have not decoded since (idle, or
#: gone), and what they measured may describe a batch or a host that no longer is; the prediction stands alone again.
OBSERVED_STEP_MAX_AGE_S = 60.0


@dataclass(frozen=True)
class ObservedStep:
    """A model's decode step as its engines measured it (``Policy.observe_decode_step``)."""

    #: Wall time of one decode step, seconds, at ``batch`` running sequences (both recent means of the engine's).
    step_s: float
    batch: float
    #: When it was observed, on the policy's clock, seconds.
    at_s: float


def kv_per_token(m: ModelInfo) -> int:
    """KV bytes a token of ``m`` takes, at least 1: ``ModelInfo.kv_bytes_per_token`` defaults to 0 (unknown), and
    ``seq_capacity`` divides by it (found in review: a route() to a co-served instance raised ZeroDivisionError).
    1 as ``geometry.kv_block_bytes`` plans an unknown size."""
    return max(m.kv_bytes_per_token, 1)


class HostSizing:
    """What a co-serving host holds and how fast it steps, from what the policy knows of a model (``ModelInfo``)
    and its planning figures (``PolicyConfig``): the pure sizing rules ``coserve.CoServing`` decides with."""

    def __init__(self, cfg: PolicyConfig, models: dict[str, ModelInfo]):
        self.cfg = cfg
        self.models = models
        #: Per model, its latest measured decode step (none in the simulator, which feeds no observations).
        self.observed: dict[str, ObservedStep] = {}

    def step_s(self, model: str, batch: float) -> float:
        """Decode step of ``model`` at ``batch`` running sequences, seconds. Predicted: the memory-bound step of
        ``sim.costmodel.CostModel.decode_step_s``, from what the policy knows: max(the profiled step, the weight
        shard over the weight read bandwidth) + batch x context tokens x its KV bytes per token (per GPU) over the
        read bandwidth. With a measured step (``observe``) s_obs at b_obs sequences: no less than the measured base
        (s_obs less b_obs x the per-sequence KV term, at least 0) + batch x that term, since the planning figures
        (a profiled step of 20 ms, an H100's bandwidth) may be far from the hardware the engines run on."""
        m = self.models[model]
        r = self.cfg.decode_read_bytes_per_s
        kv = batch * self.cfg.coserve_context_tokens * kv_per_token(m) / m.tp / r
        predicted = max(m.decode_s_per_token, m.weight_bytes / m.tp / (self.cfg.weight_read_bytes_per_s or r)) + kv
        obs = self.observed.get(model)
        if obs is None:  # the prediction exactly as computed without observations: the simulator's results stay
            return predicted
        per_seq_s = self.cfg.coserve_context_tokens * kv_per_token(m) / m.tp / r
        return max(predicted, max(0.0, obs.step_s - obs.batch * per_seq_s) + batch * per_seq_s)

    def observe(self, model: str, step_s: float, batch: float, now_s: float) -> None:
        """Record ``model``'s measured decode step (``step_s`` seconds at ``batch`` sequences) at ``now_s``; it
        replaces the one before."""
        self.observed[model] = ObservedStep(step_s, batch, now_s)

    def forget_stale(self, now_s: float) -> None:
        """Drop the measured steps older than OBSERVED_STEP_MAX_AGE_S at ``now_s``."""
        for model in [m for m, o in self.observed.items() if now_s - o.at_s > OBSERVED_STEP_MAX_AGE_S]:
            del self.observed[model]

    def models_per_host(self, model: str, gpu_bytes: int) -> int:
        """How many models a host of ``model``'s kind holds (< 2: the model never co-serves): as many as fit with
        their shards within WEIGHT_SHARE_PER_HOST of a GPU and, beside each shard, a KV share that holds
        scale_in_threshold x B sequences of coserve_context_tokens (the load below which §5 scales a model in: a
        co-served model runs at most about that, it joins below the §5 band of it and splits out above it,
        ``kv_fits``); at most coserve_max_models. 1 for a tensor-parallel model unless ``colocate_tp``."""
        m, cfg = self.models[model], self.cfg
        if runs_alone(m.tp, cfg.colocate_tp):
            return 1
        shard = m.shard_bytes
        kv = cfg.scale_in_threshold * cfg.instance_capacity * cfg.coserve_context_tokens * kv_per_token(m) / m.tp
        return min(cfg.coserve_max_models, int(WEIGHT_SHARE_PER_HOST * gpu_bytes // shard),
                   int(gpu_bytes // (shard + kv)))

    def kv_fraction(self, model: str, gpu_bytes: int) -> float:
        """KV share of a co-served instance (``StartInstance.kv_fraction``): an equal part of what a full host's
        shards leave, so that a full host's caches all fit at once (the live worker's shared activation takes a
        fixed share); within it the cache is mapped as the load needs (``_kv_targets``), the rest stays in the
        GPU's pool for prewarms. As a share of what the instance's own shard leaves; below 1 (a shared
        activation). A GPU that holds fewer than 2 shards hosts no co-served instance of the model (``join``); the
        formula's value at k = 1, 0.99, keeps callers asking about such a GPU off a division by zero."""
        shard = self.models[model].shard_bytes
        k = self.models_per_host(model, gpu_bytes)
        if k < 2:
            return 0.99
        return max(0.01, min(0.99, (gpu_bytes - k * shard) / k / (gpu_bytes - shard)))

    def seq_capacity(self, model: str, gpu_bytes: int) -> int:
        """Requests one co-served instance of ``model`` takes at most (routing, ``Policy.route``): the sequences of
        coserve_context_tokens its KV share holds, at least 1. Past it a request would wait in that engine's queue,
        where no instance started later can take it over (found in review: paper-conv with 12 models, seed 1, a
        burst of the busiest 7B queued 114 requests behind a co-served instance's ~14 running ones for 50 s, and
        they stayed there when four dedicated instances came up); in the driver's queue it goes to the first
        instance with room."""
        m = self.models[model]
        cap = self.kv_fraction(model, gpu_bytes) * (gpu_bytes - m.shard_bytes)
        return max(1, int(cap // (self.cfg.coserve_context_tokens * kv_per_token(m) / m.tp)))

    @staticmethod
    def gpu_bytes(state: ClusterState) -> int:
        """Memory of the smallest live GPU (``could_pair``: a pair that fits there fits anywhere); 0 when every GPU
        is lost."""
        return min((g.total_bytes for g in state.gpus if not g.gone), default=0)

    @staticmethod
    def host_bytes(state: ClusterState, gpus) -> int:
        """Memory a host on ``gpus`` is sized for: its smallest GPU's (as ``kv_blocks_for`` sizes its caches)."""
        return min(state.gpus[g].total_bytes for g in gpus)

    def fits_sizes(self, state: ClusterState, model: str) -> list[int]:
        """The live GPU sizes on which ``model`` co-serves at all (a host there holds 2 of its shards or more)."""
        return [b for b in {g.total_bytes for g in state.gpus if not g.gone} if self.models_per_host(model, b) >= 2]
