"""What a simulation is run on: the cluster shape, the served models and the simulator's own knobs."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig
from warmserve.sim.profile_check import finite_number as _finite




#: Shortest policy tick a simulation takes, seconds. Every engine step the cost model produces is longer: the
#: paper's figures start at 15 ms (Llama-2 7B's decode step) and the repository's measured profiles at 8.8 ms (a
#: 20M-parameter model decoding on a CPU, bench/replay/profile_cpu.json), so a finer tick only re-runs the policy
#: on a cluster where no step has ended. And each tick is a policy round: found in review, --tick-s 1e-9 ran for
#: ever; at this floor a 30 s paper-conv replay takes about a minute (1 s at the default 1 s tick).
MIN_TICK_S = 1e-3


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


#: what each checked ``SimConfig`` field takes: (test, what to give). `warmserve simulate` checks its flags of the
#: same fields by these rules (``cli.check_args`` calls ``check_field``), so the Python API refuses what the command
#: line refuses (found in review: SimConfig took max_num_seqs -1, nothing completed; drain_s -100; slo_scale -1 or
#: NaN; a negative ttft_slo_s or unanswered_ttft_s, all run on with wrong figures)
FIELD_RULES = {
    "n_servers": (lambda v: _whole(v) and v >= 1, "a whole number of servers >= 1"),
    "gpus_per_server": (lambda v: _whole(v) and v >= 1, "a whole number of GPUs >= 1"),
    "tick_s": (lambda v: _finite(v) and v >= MIN_TICK_S,
               f"a finite number of seconds >= {MIN_TICK_S:g} (the policy's tick period: a shorter one is shorter than "
               f"any engine step and only multiplies the run's policy rounds)"),
    "max_num_seqs": (lambda v: _whole(v) and v >= 0,
                     "a whole number of sequences >= 1, or 0 for the engine model's default (vllm: the cost model's "
                     "max_running_seqs, 256; fluid: the policy's instance_capacity)"),
    "chunked_prefill_tokens": (lambda v: _whole(v) and v >= 0,
                               "a whole number of tokens per engine step (at least the engine's max_num_seqs), or 0 "
                               "for no chunked prefill"),
    "drain_s": (lambda v: _finite(v) and v >= 0,
                "a finite number of seconds >= 0 that requests may still finish in after the last arrival"),
    "ttft_slo_s": (lambda v: _finite(v) and v >= 0,
                   "an SLO > 0 seconds, or 0 for per-model SLOs (slo_scale x the model's 1024-token prefill time)"),
    "slo_scale": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "unanswered_ttft_s": (lambda v: v is None or (_finite(v) and v > 0),
                          "a finite number of seconds > 0, or None: the time from arrival to the end of the run"),
    "warmup_s": (lambda v: v is None or (_finite(v) and v >= 0),
                 "a finite number of seconds >= 0 of history to replay before t=0, or None: the workload's own"),
    # found in review: 'no' (truthy) ran the search; None failed deep in Simulator
    "shared_search": (lambda v: isinstance(v, bool), "True or False"),
    "policy_config": (lambda v: isinstance(v, PolicyConfig), "a warmserve.policy.PolicyConfig"),
}


def check_field(name: str, value, flag: str | None = None) -> None:
    """Refuse ``value`` for the SimConfig field ``name`` unless it passes ``FIELD_RULES``; the error names ``flag``
    (a `warmserve simulate` option) where given, else the field."""
    test, want = FIELD_RULES[name]
    if not test(value):
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        where = {"flag": flag} if flag else {"field": name}
        raise InvalidArgumentError(f"{flag or 'SimConfig.' + name} {shown}: give {want}", value=value, **where)


@dataclass(frozen=True)
class ServedModel:
    """A model the simulated cluster serves: its name and the cost-model entry it behaves like."""

    #: name requests use (matches the workload's model names)
    name: str
    #: cost-model key (e.g. "llama2-7b"); defaults to the name itself
    size: str = ""
    #: longest prompt + output the model accepts, tokens (the live controller's ``max_context``, vLLM's
    #: ``--max-model-len``); 0: the run's longest request to it (``sim.inputs.longest_requests``)
    context_tokens: int = 0

    def __post_init__(self):
        if not self.size:
            object.__setattr__(self, "size", self.name)
        if not isinstance(self.context_tokens, int) or self.context_tokens < 0:
            raise InvalidArgumentError(f"ServedModel {self.name!r}: context_tokens must be a whole number of tokens "
                                       f">= 0 (0: the run's longest request), got {self.context_tokens!r}",
                                       context_tokens=repr(self.context_tokens))


@dataclass(frozen=True)
class SimConfig:
    #: servers in the cluster (PAPER.md "The evaluation in the paper": 2 servers x 8 GPUs)
    n_servers: int = 2
    #: GPUs per server (tensor-parallel groups stay within one server; 8: PAPER.md, as above)
    gpus_per_server: int = 8
    #: GPU type of the cost model ("H100-80GB" or "A100-80GB"), unless a profile overrides it
    gpu: str = "H100-80GB"
    #: the policy's tick period, seconds of simulated time: a simulator choice (the live controller ticks every 0.5 s,
    #: ``ControllerConfig.tick_s``; the range 0.5 s puts on the figures is in bench/simulate/CONSTANTS.md)
    tick_s: float = 1.0
    #: most sequences one instance runs at once (continuous batching, the engine's limit); 0: the cost model's
    #: ``limits.max_running_seqs`` (vLLM --max-num-seqs, 256) under the "vllm" engine model, the policy's
    #: instance_capacity under "fluid"
    max_num_seqs: int = 0
    #: the simulated engine: "vllm" (admission by sequences and KV memory, decode reads the batch's KV cache) or
    #: "fluid" (the earlier model: batch capped at the policy's B, context-free decode step); see
    #: warmserve.sim.engine_model
    engine_model: str = "vllm"
    #: chunked prefill under the "vllm" engine model: tokens per engine step (decode tokens first, prompt chunks in
    #: the rest; vLLM --enable-chunked-prefill with --max-num-batched-tokens); 0: off, prefill iterations pause
    #: decoding (vLLM 0.6's default, the paper's artifact)
    chunked_prefill_tokens: int = 0
    #: `shared` only: choose its static layout by the analytic search of warmserve.sim.shared_search (False: the
    #: policy's own demand-proportional layout)
    shared_search: bool = True
    #: after the last arrival, how long requests may still finish before the rest count as dropped, seconds (a
    #: simulator choice: no published figure, bench/simulate/CONSTANTS.md)
    drain_s: float = 600.0
    #: TTFT SLO, seconds; 0 means per model: ``slo_scale`` x its prefill time for 1024 tokens
    ttft_slo_s: float = 0.0
    #: per-model TTFT SLO as a multiple of the model's 1024-token prefill time (when ttft_slo_s is 0): our choice,
    #: no published figure (PAPER.md states none); a flat 2 s SLO is shown beside it (``--ttft-slo-s 2``,
    #: bench/simulate/paper_*_slo2s.json)
    slo_scale: float = 10.0
    #: what an unanswered request counts as in TTFT statistics, seconds; None: the time from its arrival to the
    #: end of the run (drain included), never less than a late answer's (was a fixed 999 s, less than the ~1800 s
    #: a late answer can take)
    unanswered_ttft_s: float | None = None
    #: replay the history's last ``warmup_s`` (unmeasured) before t=0; None: the workload's own warm-up
    warmup_s: float | None = None
    #: the policy's knobs (a policy's name may override some of them; see warmserve.policy.POLICY_NAMES)
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self):
        for name in FIELD_RULES:
            check_field(name, getattr(self, name))
        window_s = self.policy_config.window_s
        if self.tick_s > window_s:  # as serve refuses (config.check_window), and `simulate` (check_sim_window)
            raise InvalidArgumentError(
                f"SimConfig.tick_s {self.tick_s:g}: give at most the policy window (policy_config.window_s "
                f"{window_s:g} s): whole windows would pass between two ticks, never observed", value=self.tick_s,
                field="tick_s", window_s=window_s)
        if self.engine_model == "fluid" and self.chunked_prefill_tokens:
            # found in review: the fluid model has no token budget and ran as if chunked prefill were off
            raise InvalidArgumentError(
                f"chunked_prefill_tokens {self.chunked_prefill_tokens} (--chunked-prefill-tokens) with engine_model "
                f"'fluid' (--engine-model fluid): the fluid model has no token budget and would ignore it; run "
                f"chunked prefill under engine_model 'vllm', or set chunked_prefill_tokens to 0",
                chunked_prefill_tokens=self.chunked_prefill_tokens, engine_model=self.engine_model)
