"""Knobs of the policy. Defaults are the paper's numbers (PAPER.md §1-6)."""

from __future__ import annotations

from dataclasses import dataclass

from warmserve.errors import InvalidArgumentError

FORECASTERS = ("paper", "holt-winters", "stl", "last-value", "auto")


@dataclass(frozen=True)
class PolicyConfig:
    #: B: concurrent requests one instance serves at full speed (PAPER.md §2, §5).
    instance_capacity: int = 32
    #: Forecast window, seconds (the paper's 5 minutes). Windows start at multiples of it on the driver's clock.
    window_s: float = 300.0
    #: Scale out when the load exceeds this share of capacity (§5).
    scale_out_threshold: float = 0.8
    #: Scale in when the load falls below this share of capacity (§5).
    scale_in_threshold: float = 0.5
    #: Load is in-flight (plus queued) requests averaged over this many seconds (§5).
    load_window_s: float = 5.0
    #: An instance younger than this (since it became ready) is never stopped, seconds (§5).
    min_lifetime_s: float = 5.0
    #: Residuals in the forecast's online correction (§1).
    residual_windows: int = 10
    #: Forecaster per model: "paper" (slot-of-day prior + residual correction), "holt-winters", "stl",
    #: "last-value" (persistence), or "auto" (picked per model by a rolling backtest over the last two days,
    #: redone each day).
    forecaster: str = "paper"
    #: Prewarm replicas from forecasts at all (False: the `autoscale` baseline).
    prewarm: bool = True
    #: Forecast the next window (False: the `reactive` ablation plans from the last observed window).
    forecast: bool = True
    #: Shrink idle instances' KV caches so prewarms fit on busy GPUs (§6) (False: `no-kv-reservation`).
    kv_reservation: bool = True
    #: Free KV blocks an instance keeps mapped even when idle, so a new request never waits for a mapping.
    min_free_kv_blocks: int = 1
    #: "laminar" (§3) or "round-robin" (the ablation).
    placement: str = "laminar"
    #: Round-robin placement only: GPUs the cursor moves after each replica; 0 moves it by the replica's tp
    #: (consecutive replicas pack side by side), 1 starts each replica one GPU further (overlaps partly).
    round_robin_step: int = 0
    #: Evict lower-score prewarms when a higher-score replica has no feasible group (beyond the paper's artifact).
    evict_for_placement: bool = True
    #: Engines, CUDA contexts and communicators started ahead of time (False: the `autoscale` baseline).
    warm_engine: bool = True
    #: Re-run the prewarm plan this often within a window (replicas consumed by scale-ups get replaced), seconds.
    replan_s: float = 60.0
    #: Keep a stopped (scaled-in) instance's weights on its GPUs as a prewarm once it has drained (with
    #: prewarming on); the next scale-out of the model is then a hit instead of a cold load.
    retain_stopped: bool = True
    #: Give up keeping a stopped instance's weights when it takes longer than this to drain, seconds.
    retain_wait_s: float = 120.0
    #: Most instances per model; 0 means no limit.
    max_instances_per_model: int = 0

    def __post_init__(self):
        if self.instance_capacity < 1:
            raise InvalidArgumentError(f"instance_capacity must be >= 1, got {self.instance_capacity}")
        if not 0 < self.scale_in_threshold < self.scale_out_threshold:
            raise InvalidArgumentError(
                f"need 0 < scale_in_threshold < scale_out_threshold, got {self.scale_in_threshold} and "
                f"{self.scale_out_threshold}"
            )
        if self.window_s <= 0 or self.load_window_s <= 0:
            raise InvalidArgumentError(f"window_s and load_window_s must be > 0, got {self.window_s}, {self.load_window_s}")
        if self.forecaster not in FORECASTERS:
            raise InvalidArgumentError(f"forecaster must be one of {FORECASTERS}, got {self.forecaster!r}")
        if self.placement not in ("laminar", "round-robin"):
            raise InvalidArgumentError(f"placement must be 'laminar' or 'round-robin', got {self.placement!r}")
