"""Knobs of the policy. Defaults are the paper's numbers (PAPER.md §1-6)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from warmserve.errors import InvalidArgumentError, wire_int_error

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
    #: With kv_reservation: an instance's KV pages beyond its target are unmapped only where the prewarm plan places
    #: weights in them, as many as those take (``signals._shrinks_placed``); the rest stay mapped, so a burst does
    #: not map them again on its prefills' path. Measured (six seeds, paired: issue11/kv_shrink_on_demand_paired.json,
    #: bench/simulate/ISSUE11_ROUNDS.md, 2026-12-04): SLO attainment +2.6 to +4.9 points on every seed at burst CV 4
    #: on the code presets (+0.1 to +1.8 on conv), P99 0.97-1.00x there and as traced (medians of the seeds'
    #: ratios) but 1.15x on paper-conv at CV 4 (worse on 5 seeds of 6). Off by default: an operator's choice.
    kv_shrink_on_demand: bool = False
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
    #: Most in-flight requests route() sends to one instance; 0: no cap. With a cap, requests beyond it wait in
    #: the driver's queue for an instance with room (the paper's artifact: its manager keeps at most B = 32 in
    #: flight per engine). Without (the default: what a user running vLLM behind a least-loaded balancer gets),
    #: ready instances take the overflow while a new instance starts, each up to its engine's max_num_seqs when the
    #: executor gives it (``InstanceState.max_seqs``: live; the rest wait in the driver's queue), else without bound
    #: (the simulator, whose engines admit 256 and are bound by KV room first). A cap below B (instance_capacity) is
    #: the capacity the policy plans with too (``LoadSignals.routed_capacity``: scale-out, scale-in, the prewarm
    #: plan, migrations' room), since route() gives no instance more; B stays the KV targets' per-sequence share.
    route_cap_per_instance: int = 0
    #: TTFT the policy plans for, as a multiple of the model's 1024-token prefill time (ModelInfo.prefill_s):
    #: the simulator's default TTFT SLO (sim.config.SimConfig.slo_scale). The prefill backlog one instance may
    #: hold is this target less one prefill (the arriving request's own): past it, the tick scales out and route()
    #: treats the request as overflow (a revived or new instance, ``route_prefill_overflow``). 0 turns both off.
    ttft_target_prefills: float = 10.0
    #: The prefill budget counts the decode steps a continuously batching engine runs between prefills: a backlog
    #: of b prefill-seconds clears in b x (prefill_s + decode_s_per_token) / prefill_s (``signals.prefill_budget_s``:
    #: 6.0-6.8 prefills of budget for the paper's models, not 9). Off by default (the budget is then
    #: (ttft_target_prefills - 1) x prefill_s): measured, it raises SLO attainment near the max rate on three presets
    #: of four over six seeds, but near conv's capacity every model then asks for more than the cluster has, the
    #: reclaim floor finds no model to take GPUs from, and one model's engine queue ran to 21 s (artifact-conv,
    #: seed 0 at 40.1 rps); it also costs `autoscale` (P99 32.3 s without, 43.6 s with it, paper-code).
    #: bench/simulate/ISSUE11_ROUNDS.md, 15:40 update.
    prefill_budget_decode_stretch: bool = False
    #: route() treats a request whose model's prefill backlog is past its ready instances' budget as overflow, as
    #: one finding every instance at B: a burst of long prompts does not wait for the tick's 5 s average. Off for
    #: `autoscale` as registered (its 5 s window): its starts take an engine initialisation (14 s and more),
    #: arrive after the burst and hold GPUs (paper-code, seeds 0-2: P99 32.3 s without, 47.7 s with it, before
    #: the scale-in fix). At its long windows it can help it: paper-code as traced, 300 s window, P99 10.11 s ->
    #: 7.04 s (bench/simulate/issue11/autoscale_overflow.py, which gives `autoscale` that choice in every cell).
    route_prefill_overflow: bool = True
    #: route() sends a request to the instance with the fewest prompt tokens waiting for their prefill (then the
    #: fewest in flight), not to the one with the fewest requests in flight: a request's first token waits for the
    #: prefills queued before it, not for the decodes beside it (``state.least_loaded``). Every policy reads it,
    #: the static baselines too. Paired over six seeds (bench/simulate/issue11/route_least_prefill_paired_*.json):
    #: P99 TTFT 0.76x on artifact-conv as traced for warmserve (0.74-0.81x seed by seed), 0.78x for `shared` and
    #: `autoscale`; warmserve's 0.90x on paper-code as traced, 0.94-1.01x in the other cells, its SLO attainment
    #: lower on no seed by more than 0.5 points. On by default since 2026-12-04 (the headline files re-run with it);
    #: off is the fewest-in-flight order of the files before.
    route_least_prefill: bool = True
    #: The tick scales in on the 5 s averages, but never below the instances the prefill backlog of this moment
    #: needs: route() may have just started instances for a burst that the average has barely seen, and the
    #: scale-in would stop the one holding the burst's first prompts (it alone is past the minimum lifetime).
    #: Off for `autoscale` as registered (a vanilla autoscaler scales on its averages alone); README's headline
    #: takes autoscale's best of settings that include it on (bench/simulate/issue11/autoscale_best.json: at the 5 s
    #: window it lowers autoscale's P99 in 6 of 20 cells; the 32.3 / 73.1 s once quoted here were an older tree's).
    scale_in_floor_now: bool = True
    #: The tick scales out to what the prefill backlog of this moment needs as well as to what the averages over
    #: load_window_s need: a burst of long prompts gets its instances, and the GPUs of quiet models' last
    #: instances, at the next tick rather than once the 5 s average has risen. Not while the cluster is
    #: over-subscribed (``coserve.CoServing.oversubscribed``; with co-serving off, always): there it set models
    #: taking GPUs from one another (paper-conv, 12 models at x0.5, seed 2: SLO 0.993 -> 0.914). Off by default,
    #: an operator's choice: measured, it raises paper-code's max rate at a 0.98 SLO target from 16.1 to 23.7 rps
    #: (`shared`: 12.8) and cuts its P99 at x1 from 1.30 to 1.14 s, but with burst CV 4 the quiet models' last
    #: instances stop 3x as often and code's P99 grows (paper-code 1.83 -> 2.37 s);
    #: bench/simulate/ISSUE11_ROUNDS.md, "A later session (23:00 UTC)".
    scale_out_now: bool = False
    #: Scale in no lower than the most instances the model wanted (its averaged load, or its prefill backlog of the
    #: moment) over the last this many seconds, while no other model wants GPUs: bursts that recur within it find
    #: the instances the last one started still there (at burst CV 4 warmserve's SLO misses are prompts queued
    #: behind a burst's prefills on the one instance left after the last burst, not waits for a start). 0: off
    #: (§5: the 5 s averages alone). It buys SLO attainment with GPU-seconds (six seeds,
    #: bench/simulate/issue11/scale_in_hold.json): at burst CV 4 artifact-code 0.817 -> 0.924 (30 s) -> 0.947
    #: (300 s) at 15.1k -> 18.5k -> 19.2k GPU-s (`shared` 0.974 at 19.4k), paper-code 0.820 -> 0.864 -> 0.870; as
    #: traced, SLO unchanged and P99 1.04 -> 1.05-1.15 s on paper-code. Off by default.
    scale_in_hold_s: float = 0.0
    #: Scale in no lower than the in-flight load averaged over this many seconds keeps (ceil(load / 0.5 / B)),
    #: where that is more than load_window_s's average keeps; scale-out reads load_window_s alone. Unlike
    #: scale_in_hold_s it holds while other models want GPUs: at burst CV 4 a model's bursts recur within seconds
    #: and the instances a 5 s average stops are the ones the next burst lacks, while in a full cluster a GPU
    #: comes back only when another model goes quiet. 0: off (§5: one window). A trade, off by default: six seeds
    #: paired, 30 s (bench/simulate/issue11/scale_in_window_paired.txt): P99 at burst CV 4 paper-conv 0.54x,
    #: artifact-conv 0.89x; paper-code as traced 1.11x (2.70x at 60 s: its 70B's bursts wait for GPU groups that
    #: quiet models still hold); 2-5% more GPU-seconds.
    scale_in_window_s: float = 0.0
    #: While a model wants GPUs that are not free, a draining instance with at most this many requests in flight
    #: hands them to its model's other ready instances (``actions.Migrate``: each is prefilled again there,
    #: prompt and tokens so far, and goes on), so that its GPUs are free at once instead of when its longest
    #: generation ends (``arbitration.migrations``), and only where that frees an aligned group a wanting model can
    #: start on. Not while co-serving finds the cluster over-subscribed (there it moved GPUs between models back
    #: and forth: paper-conv, 12 models at x0.5, SLO 0.993 -> 0.988); with co-serving off nothing tells that, and
    #: it applies whenever the rule holds. 0: never.
    #: Default 8, a quarter of B: what the other instances prefill again stays a small share of their batch.
    #: Measured over 0-32 (bench/simulate/ISSUE11_ROUNDS.md, "Moving requests off draining instances"): paper-code
    #: P99 1.30 s at 0, 1.16 s from 8 on; at burst CV 4 paper-conv 5.58 s at 0, 2.35 s at 8, 2.34 s at 32.
    #: Off for `autoscale` as registered (a vanilla autoscaler does not move requests); README's headline takes
    #: autoscale's best of settings that include 8 (autoscale_best.json: better in 10 of 20 cells at the 5 s window,
    #: paper-code as traced 38.52 s with it against 46.71 s without; the 32.3 / 58.7 s once quoted were an older
    #: tree's).
    migrate_max_in_flight: int = 8
    #: When a serving tensor-parallel model finds no group of its size idle on any server but the cluster has that
    #: many idle GPUs, move light instances (make before break, not onto another model's prewarm but as
    #: defragment_over_prewarms allows) so that one server has the group: its next scale-out has somewhere to
    #: start (``arbitration.relocations``, ``moves.GpuMoves._defragment``). Needs ``prewarm``.
    defragment: bool = True
    #: Defragmenting may move a light instance onto GPUs whose prewarms all score below the tensor-parallel
    #: model's best replica (evicting them: worth less than that model's next start), and onto that model's own
    #: replicas on GPUs that other instances hold (a replica there can serve only once all of them stop). Without
    #: it, a low-score 7B prewarm on the one idle GPU kept the 70B from a whole server for the first burst of
    #: paper-code (x0.62, seed 0); bench/simulate/ISSUE11_ROUNDS.md, "A later session (23:00 UTC)".
    defragment_over_prewarms: bool = True
    #: An instance serves at least this long before a model that has no instance and no free GPUs may take its
    #: GPUs (time-sharing an over-subscribed cluster), seconds. As long as a published vLLM engine start
    #: (14-35 s, PAPER.md), so that a swap never spends more of the GPUs' time starting than serving. inf: never
    #: (such a model waits until GPUs free up on their own).
    preempt_after_s: float = 30.0
    #: A model with no instance and requests waiting for this long takes GPUs by time-sharing whatever the loads,
    #: seconds; 0: off. The rule's load test passes only after about 4 x preempt_after_s of waiting when loads are
    #: equal, past the controller's default request_timeout_s of 120 s (found in review: 4 models on 2 CPU workers,
    #: co-serving off, two models starved 100-126 s and 8 of 642 requests timed out; 0 of 666 at 45 s). 60: half
    #: that timeout, leaving the other half for a start. Measured (bench/simulate/issue11/max_starved.txt): six seeds
    #: paired on the four presets as traced and at burst CV 4 unchanged to the digit, the 12-model runs too, but for
    #: paper-conv at rate x2 with the rules alone (colocation off), where P99 TTFT went from 839 to 456 s.
    max_starved_s: float = 60.0
    #: A model left short of instances with no free GPUs takes GPUs from other models' instances when those
    #: models stay at least as well served (share of their scale-out demand met) as it will be, never a model's
    #: last ready instance (``arbitration.reclaim_victims``). False: only a model with no instance takes GPUs
    #: (time-sharing, below), as before this rule.
    reclaim_gpus: bool = True
    #: Stop a quiet model's last instance once its load has been 0 for load_window_s even while GPUs are free
    #: (the paper's §5 rule: hundreds of cold starts in 20 minutes on bursty traces). False: only when another
    #: model wants GPUs that are not free.
    idle_to_zero: bool = False
    #: Without idle_to_zero, a quiet model's last instance stops only where its GPUs complete a group of a model
    #: that wants GPUs (found in review: it stopped for a tp-2 model whose group's other GPU stayed busy, its GPU
    #: then idle). False: whenever another model wants GPUs that are not free, the earlier rule, kept as default:
    #: warmserve keeps a stopped instance's weights as a prewarm (its restart is an activation) and a GPU freed
    #: ahead of a burst starts it sooner; paper-code, seeds 0-2, warmserve's P99 1.056 s with it, 1.149 s with
    #: True, `autoscale`'s 10.106 s either way at its best load window (300 s) (bench/simulate/README.md, update
    #: of 2026-12-01)
    last_instance_for_groups: bool = False
    #: The reclaim rule (above) takes GPUs only from models that keep at least this share of their demand met
    #: after the loss (``arbitration.reclaim_victims``, ``floor``). Default 0.8, the §5 trigger level
    #: (scale_out_threshold): the victims' remaining instances carry at most B requests each. 0: the rule before
    #: (any model that stays at least as well served as the taker gives GPUs; when several models were short at
    #: once GPUs passed back and forth). A policy choice; bench/simulate/ISSUE11_ROUNDS.md shows 0, 0.5, 0.8 and 1.
    reclaim_floor_share: float = 0.8
    #: A model with no instance and requests waiting reclaims without the reclaim rule's two share tests (the floor
    #: and the order of shares): max-min on the share of demand met, its share 0 being the least, and its one
    #: instance cannot be reclaimed back (a last instance never is). Found by a simulator fuzz: with every model
    #: over its capacity (instance_capacity 1, the engines taking 8), the others' shares stayed below both tests'
    #: marks and a 0.2 rps model waited 226 s for time-sharing, whose aged load must pass twice the victims' in-
    #: flight load. False (the registered rule): on the presets it moves no median P99 (six seeds paired), and it
    #: trades one model's wait for another's (bench/simulate/README.md, 2026-12-06).
    reclaim_for_starved: bool = False
    #: A quiet co-served model's last instance, kept while its window forecast is above 0 (``CoServing.keeps_last``),
    #: is stopped for a model that starves (requests waiting, no instance, no GPUs found) on a cluster too small for
    #: one instance of every model. Found live: 64 models on 2 CPU workers, a closed window's forecast kept 8 idle
    #: co-served instances and the models with requests waited 30-40 s for time-sharing (`preempt_after_s`); with
    #: this, 5-10 s. False (the registered rule): a trade on ServeGen's 16 models on 16 GPUs (seeds 0-2, four start
    #: hours): P99 0.82-0.95x, SLO attainment 0.001-0.017 lower, 4-7% fewer GPU-seconds; 24 GPUs unchanged but one
    #: hour (P99 1.05x); the paper presets with 12 models unchanged (bench/simulate/README.md, 2026-12-07).
    forecast_keep_yields_to_starved: bool = False
    #: Without idle_to_zero, a quiet model's last instance stops for a model that wants GPUs only once its load
    #: (averaged over load_window_s, its prefill backlog and its queue) has been 0 for this long, seconds; 0: as
    #: soon as the averaged load is 0 (§5, the rule before 2026-12-05). At burst CV 4 a light model's next request
    #: came seconds after the stop and waited for GPUs the bursting model held (reclaim waits for their drain,
    #: time-sharing for preempt_after_s): paper-conv, seed 0, three light models' P99 9-10 s against 0.4-1.3 s
    #: with a hold. 10 s, chosen on six seeds paired over holds of 5-60 s
    #: (bench/simulate/issue11/last_instance_hold.*): paper-conv's P99 at burst CV 4 0.52x the rule before,
    #: artifact-conv's 0.90x, as traced the conv presets unchanged and paper-code 1.02x (1.22x at 60 s: its bursts
    #: wait for the GPUs held), GPU-seconds within 2%. No hold while co-serving finds the cluster over-subscribed
    #: (models with demand need more GPUs than are live): a held GPU is then one such a model has none of
    #: (ServeGen, 16 models on 16 GPUs: P99 1.6-2.1x at 10 s, found on a workload the hold was not chosen on;
    #: issue11/last_instance_hold_servegen.txt). With coserve_tpot_s = 0 there is no such count, and the hold
    #: applies. Nor does it hold, on a cluster too small for one instance of every model, while a model starves:
    #: requests waiting, no instance of it ready and no GPUs found for one this tick (found in review: the
    #: over-subscribed replay's twin, 6 models on 3 CPU workers, had four requests wait 8.4 s for a quiet model's
    #: held instance, P99 8.88 s against 1.27 s with no hold). Not on larger clusters: measured on the four presets
    #: (seeds 0-2), yielding to a starving model there cost paper-code 1.07x P99 as traced and paper-conv 1.07x at
    #: burst CV 4, where the model stopped for it burst again soon after.
    #: The registered `autoscale` keeps 0 (policy.registry): it is the paper's reactive baseline; its best
    #: settings (load windows up to 300 s, keep-alives up to 120 s: issue11/autoscale_seeds6.py) are searched
    #: apart, and the same hold offered to it in issue11/autoscale_hold.txt.
    last_instance_hold_s: float = 10.0
    #: Co-serving of light models (``policy.coserve``, beyond the paper): the TPOT the predicted decode round of
    #: a shared GPU group may reach (one decode step of each co-resident model, time-sharing), seconds; models
    #: join while the round stays within this x scale_in_threshold / scale_out_threshold and split out above it.
    #: 0.1 s: the TPOT SLO DistServe (Zhong et al., OSDI 2024, Table 1) sets for its chatbot workload. 0: never
    #: co-serve (every instance has its GPUs to itself, as in the paper). Co-serving engages only while the
    #: cluster is over-subscribed (``coserve.CoServing.update``: the models with demand need more GPUs, one
    #: instance each, than are live), unless coserve_always.
    coserve_tpot_s: float = 0.1
    #: Co-serve light models even when every model with demand could have GPUs of its own. Off by default
    #: because, measured, it lowers the max rate under the SLO where GPUs suffice (paper-code 8.3 -> 5.6 rps,
    #: seeds 0-2, 2 models per host; bench/simulate/OVERSUBSCRIBED.md, the first cut): time-sharing costs TTFT, and it
    #: frees GPUs only where none are short.
    coserve_always: bool = False
    #: Where the models with demand cannot each have GPUs of their own (one instance of each at its tp needs more
    #: GPUs than are live; a model with no forecast counts), lay out `shared`'s colocation at the first tick
    #: (``colocation.plan_shared``: GPU groups per tp class, replicas and KV shares in proportion to each model's
    #: forecast peak in flight for that window, each share floored at one request of coserve_context_tokens, or of
    #: the model's longest accepted context where known, ``ModelInfo.max_context_tokens``; no search, nothing read
    #: of the load to come) and keep it. While it stands the rules stand aside (route() may still start an instance
    #: on GPUs it left idle, and a busy model may take a spare slot: layout_follows_load). They take over, each
    #: colocated instance becoming a co-served host that takes what its own KV share holds, when GPUs join, when
    #: GPUs lost with its instances are not back within 20 s (back, their instances are laid out on them again), or
    #: when a later window's forecast, from history reaching a day back,
    #: fits those models on GPUs of their own (``colocating.Colocating``). Only with co-serving on
    #: (coserve_tpot_s > 0) and on an empty cluster. Beyond the paper: on over-subscribed clusters
    #: the online rules (co-serving at equal KV shares, time-sharing) served less than the fixed layout. Measured (seeds
    #: 0-2, bench/simulate/README.md): 12 models on 16 GPUs, max rate under the SLO paper-conv 10.10 -> 13.08 rps,
    #: paper-code 7.12 -> 8.46 (`shared` searched on the replay itself: 14.26, 8.46); ServeGen, 16 models on 24 GPUs,
    #: P99 TTFT 0.35-0.42 s at the three start hours where it is laid out, where the rules gave 0.66-1.11 s. The
    #: forecast matters here: weighted by the last window instead (`reactive`), P99 0.66 and 1.79 s at two of them
    #: (1.6x, 4.5x), 0.97x at the third. Off for `autoscale` (vanilla autoscaling lays nothing out ahead).
    colocate_when_oversubscribed: bool = True
    #: While that colocation stands, a model whose load passes the scale-out trigger takes an idle spare slot: an
    #: instance of a model that runs others and whose load is below the scale-in trigger, its weights and KV
    #: bytes becoming the busy model's instance (``colocating.Colocating._follow_load``; one move a tick). Found in
    #: review: with no history the layout weighs every model alike, so its spare slot went by tie-break and a
    #: flooded model kept one instance. A moved slot whose new instance is lost with its GPUs live (a failed start)
    #: gets the spare's model back, and that move is not made again. Off: the layout keeps the instances it laid
    #: out. Measured in the simulator
    #: on fresh clusters (``--history-days 0``, 12 models on 16 GPUs, seeds 0-2, medians), off -> on: P99 TTFT
    #: paper-conv x0.5 17.2 -> 12.2 s (SLO 0.78 -> 0.98), x1 1064 -> 675 s (3,512 dropped -> 0); paper-code x0.5
    #: 3.94 -> 0.94 s, x1 19.6 -> 8.8 s. With history (the presets as they run, ServeGen 32 on 4) nothing moved:
    #: every figure the same.
    layout_follows_load: bool = True
    #: Whether a tensor-parallel model (tp > 1) may share its GPU group with other models: co-served, in
    #: warmserve's colocation, in `shared`'s layout (MuxServe colocates such meshes, so the simulator does). Off:
    #: each tp > 1 instance has its group to itself, and a layout that would need to colocate one is refused
    #: (``colocation.UnplacedModelError``). The live workers run a tensor-parallel shard alone (``worker.tp``
    #: refuses a shared activation), so `warmserve serve` turns it off where a model has tp > 1.
    colocate_tp: bool = True
    #: Give GPUs back by co-serving (beyond the paper): a quiet model (load below scale_in_threshold x B, one
    #: instance with GPUs to itself) moves onto a co-serving host even when no other model wants GPUs, so its
    #: GPUs go idle: the merge rule below (``core.Policy``, step 3) without its "another model is short of GPUs"
    #: condition. The first such move opens a host on idle GPUs only when another quiet model of the same tp
    #: could share it (``CoServing.could_pair``; a lone move frees nothing). Engages co-serving as
    #: coserve_always does. For an operator who counts GPU-seconds (with idle_to_zero). Off by default: measured
    #: with idle_to_zero on the four presets
    #: (seeds 0-2), it saved at most 1.3% of the GPU-seconds on conv at a P99 of 2.11 s instead of 0.18 s, and
    #: cost code 3-6% more (0.536 -> 0.569x and 0.540 -> 0.555x of dedicated: merged models burst and split out
    #: again); bench/simulate/ISSUE11_ROUNDS.md.
    consolidate: bool = False
    #: Most models one co-serving GPU group hosts, over the memory rule (``coserve.CoServing.models_per_host``:
    #: weights within 80% of a GPU, as `shared` packs them, and each resident's KV share holding
    #: scale_in_threshold x B sequences of coserve_context_tokens; on a 72 GB pool that is 3 Llama-2 7B or 13B
    #: models at B = 32). Policy choice: 4, the most 7B shards (13.5 GB) within 80% of 72 GB, so that the memory
    #: rule decides for the paper's models; 2 was the first cut (bench/simulate/OVERSUBSCRIBED.md shows both).
    coserve_max_models: int = 4
    #: KV tokens per running sequence the co-serving rule plans a decode step with, tokens: the paper's prompts are
    #: cut to 1024 tokens (PAPER.md), a sequence reads its prompt plus what it generated.
    coserve_context_tokens: int = 1024
    #: Bytes/s a decode step reads device memory at, for the co-serving rule's step prediction: H100 SXM peak HBM
    #: 3.35 TB/s (NVIDIA datasheet) x 0.68 achievable (measured, ``sim.costmodel.HBM_ACHIEVABLE_FRACTION``).
    decode_read_bytes_per_s: float = 3.35e12 * 0.68
    #: Bytes/s the same prediction reads a model's weights at (its step's floor, the weight shard over this rate);
    #: 0: decode_read_bytes_per_s, as on GPUs, where weights and KV are read from the same HBM. CPU profiles set
    #: it apart (`warmserve calibrate` measures the context read far slower than a weight read). The simulator
    #: sets both from its GPU (``sim.inputs.planning_config``) unless given.
    weight_read_bytes_per_s: float = 0.0

    def __post_init__(self):
        import dataclasses
        import math

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            # NaN passes every range check below (each comparison is False) and failed later as a bare ValueError
            # naming no option (found in review: window_s nan, round(86400 / nan)); inf is "never" where a field
            # says so, not a length of window or a threshold
            if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and f.name in _FINITE)):
                raise InvalidArgumentError(f"policy option {f.name} must be a finite number, got {v}",
                                           option=f.name, value=str(v))
        if self.instance_capacity < 1:
            raise InvalidArgumentError(f"instance_capacity must be >= 1, got {self.instance_capacity}")
        # It becomes the engine's max_num_seqs (EngineConfig.resolved), sent to every worker: past 2**63-1 it was
        # accepted and each activation then failed to encode (found in review)
        cap = self.instance_capacity
        if isinstance(cap, numbers.Integral) and not isinstance(cap, bool):  # a numpy int too (a sweep's values)
            cap = int(cap)
        if (e := wire_int_error("policy option instance_capacity", cap, 1, option="instance_capacity")) is not None:
            raise e
        if not 0 < self.scale_in_threshold < self.scale_out_threshold:
            raise InvalidArgumentError(
                f"need 0 < scale_in_threshold < scale_out_threshold, got {self.scale_in_threshold} and "
                f"{self.scale_out_threshold}"
            )
        if self.window_s <= 0 or self.load_window_s <= 0:
            raise InvalidArgumentError(
                f"window_s and load_window_s must be > 0, got {self.window_s}, {self.load_window_s}")
        if self.window_s < 86400 and abs(86400 / self.window_s - round(86400 / self.window_s)) > 1e-9:
            per_day = 86400 / self.window_s
            near = min((d for d in range(1, 86401) if 86400 % d == 0), key=lambda d: abs(d - self.window_s))
            raise InvalidArgumentError(
                f"window_s {self.window_s} does not divide a day ({per_day:.3f} windows): the daily season would "
                f"drift by {abs(round(per_day) * self.window_s - 86400):.0f} s a day. Fix: a divisor of 86400, "
                f"e.g. {near} (or a day or more: no daily season)")
        if self.residual_windows < 1 or self.max_instances_per_model < 0:
            raise InvalidArgumentError(
                f"need residual_windows >= 1 (the forecast's correction averages them) and max_instances_per_model "
                f">= 0 (0: no limit); got {self.residual_windows} and {self.max_instances_per_model}")
        if self.forecaster not in FORECASTERS:
            raise InvalidArgumentError(f"forecaster must be one of {FORECASTERS}, got {self.forecaster!r}")
        if self.migrate_max_in_flight < 0:
            raise InvalidArgumentError(f"migrate_max_in_flight must be >= 0 (0: never migrate), got "
                                       f"{self.migrate_max_in_flight}")
        if self.route_cap_per_instance < 0 or self.ttft_target_prefills < 0 or self.preempt_after_s < 0:
            raise InvalidArgumentError(
                f"route_cap_per_instance, ttft_target_prefills and preempt_after_s must be >= 0, got "
                f"{self.route_cap_per_instance}, {self.ttft_target_prefills}, {self.preempt_after_s}")
        for name in ("scale_in_hold_s", "last_instance_hold_s", "scale_in_window_s", "max_starved_s"):
            if not getattr(self, name) >= 0:  # NaN too
                raise InvalidArgumentError(f"{name} must be >= 0 seconds (0: off), got {getattr(self, name)}",
                                           option=name, value=str(getattr(self, name)))
        if 0 < self.ttft_target_prefills <= 1:
            raise InvalidArgumentError(
                f"ttft_target_prefills must be 0 (off) or > 1 (the target includes the request's own prefill), "
                f"got {self.ttft_target_prefills}")
        if not 0 <= self.reclaim_floor_share <= 1:
            raise InvalidArgumentError(f"reclaim_floor_share must be in [0, 1], got {self.reclaim_floor_share}")
        if self.coserve_tpot_s < 0 or self.coserve_max_models < 1 or not self.decode_read_bytes_per_s > 0:
            raise InvalidArgumentError(
                f"need coserve_tpot_s >= 0, coserve_max_models >= 1 and decode_read_bytes_per_s > 0; got "
                f"{self.coserve_tpot_s}, {self.coserve_max_models}, {self.decode_read_bytes_per_s}")
        if not self.weight_read_bytes_per_s >= 0:  # NaN too
            raise InvalidArgumentError(f"weight_read_bytes_per_s must be >= 0 bytes/s (0: decode_read_bytes_per_s), "
                                       f"got {self.weight_read_bytes_per_s}", option="weight_read_bytes_per_s")
        if self.coserve_context_tokens < 1:
            # route() divides a co-served instance's KV share by one sequence's KV (``CoServing.seq_capacity``)
            raise InvalidArgumentError(
                f"coserve_context_tokens must be >= 1 (the KV tokens of one running sequence), got "
                f"{self.coserve_context_tokens}. Fix: a typical prompt plus output length, e.g. 1024 (the default)",
                coserve_context_tokens=self.coserve_context_tokens)
        if self.consolidate and self.coserve_tpot_s <= 0:
            raise InvalidArgumentError("consolidate moves quiet models onto co-serving hosts: it needs "
                                       f"coserve_tpot_s > 0, got {self.coserve_tpot_s}. Fix: set coserve_tpot_s "
                                       "(0.1 by default) or consolidate = false")
        if self.placement not in ("laminar", "round-robin"):
            raise InvalidArgumentError(f"placement must be 'laminar' or 'round-robin', got {self.placement!r}")


#: The float fields for which inf means nothing (the others' inf reads as "never" or "no limit").
_FINITE = frozenset({"window_s", "load_window_s", "scale_out_threshold", "scale_in_threshold", "reclaim_floor_share",
                     "decode_read_bytes_per_s", "weight_read_bytes_per_s", "coserve_tpot_s",
                     "scale_in_window_s"})


def policy_config_from_dict(data: dict, base: PolicyConfig | None = None, where: str = "[policy]") -> PolicyConfig:
    """The one parser of policy knobs, wherever they come from (a config file's ``[policy]`` table, a
    ``--policy-option KEY=VALUE`` flag, a simulator preset): ``data``'s fields over ``base`` (default: the
    paper's values). Values given as text (command lines) are converted to the field's type; an unknown field
    or a value of the wrong type raises InvalidArgumentError naming the known fields."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(PolicyConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidArgumentError(f"policy options {where}: unknown keys {unknown}; known: {sorted(fields)}",
                                   unknown=unknown)
    base = base or PolicyConfig()
    out = {}
    for k, v in data.items():
        want = type(getattr(base, k))
        if isinstance(v, str) and want is not str:
            v = _from_text(v, want, k, where)
        elif want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise InvalidArgumentError(f"policy option {where} {k}: expected {want.__name__}, got {v!r}",
                                       option=k)
        out[k] = v
    return dataclasses.replace(base, **out)


def _from_text(text: str, want: type, key: str, where: str):
    try:
        if want is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        return want(text)
    except ValueError:
        raise InvalidArgumentError(f"policy option {where} {key}: {text!r} is not a {want.__name__}",
                                   option=key) from None


def parse_policy_options(items: list[str] | tuple[str, ...], base: PolicyConfig | None = None,
                         where: str = "--policy-option") -> PolicyConfig:
    """``KEY=VALUE`` strings (repeatable command-line flags) over ``base``."""
    data = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgumentError(f"{where} {item!r}: write KEY=VALUE, e.g. instance_capacity=16")
        data[key.strip()] = value.strip()
    return policy_config_from_dict(data, base, where)
