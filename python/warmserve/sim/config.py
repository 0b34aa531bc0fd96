"""What a simulation is run on: the cluster shape, the served models and the simulator's own knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from warmserve.errors import InvalidArgumentError


@dataclass(frozen=True)
class ServedModel:
    """A model the simulated cluster serves: its name and the cost-model entry it behaves like."""

    #: name requests use (matches the workload's model names)
    name: str
    #: cost-model key (e.g. "llama2-7b"); defaults to the name itself
    size: str = ""

    def __post_init__(self):
        if not self.size:
            object.__setattr__(self, "size", self.name)


@dataclass(frozen=True)
class SimConfig:
    #: servers in the cluster
    n_servers: int = 2
    #: GPUs per server (tensor-parallel groups stay within one server)
    gpus_per_server: int = 8
    #: GPU type of the cost model ("H100-80GB" or "A100-80GB"), unless a profile overrides it
    gpu: str = "H100-80GB"
    #: the policy's tick period, seconds of simulated time
    tick_s: float = 1.0
    #: most requests one instance runs at once (continuous batching); 0: the policy's instance capacity
    max_batch: int = 0
    #: after the last arrival, how long requests may still finish before the rest count as dropped, seconds
    drain_s: float = 600.0
    #: TTFT SLO, seconds; 0 means per model: ``slo_scale`` x its prefill time for 1024 tokens
    ttft_slo_s: float = 0.0
    #: per-model TTFT SLO as a multiple of the model's 1024-token prefill time (when ttft_slo_s is 0)
    slo_scale: float = 10.0
    #: what an unanswered request counts as in TTFT statistics, seconds
    unanswered_ttft_s: float = 999.0
    #: replay the history's last ``warmup_s`` (unmeasured) before t=0; None: the workload's own warm-up
    warmup_s: float | None = None
    #: extra PolicyConfig fields, applied on top of the policy's defaults
    policy_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.n_servers < 1 or self.gpus_per_server < 1:
            raise InvalidArgumentError(f"need >= 1 server and >= 1 GPU per server, got {self.n_servers} x "
                                       f"{self.gpus_per_server}")
        if self.tick_s <= 0:
            raise InvalidArgumentError(f"tick_s must be > 0, got {self.tick_s}")
