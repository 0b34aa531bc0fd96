"""The policy core: forecasts, prewarm plans, laminar placement, autoscaling, routing and KV reservation.

Pure decision logic shared by the live controller and the simulator: nothing here reads a clock, opens a socket,
starts a thread or imports torch. A driver passes a snapshot of cluster state and the time; the policy returns
actions; the driver applies them and updates the state.

Contract
--------
Units: seconds on the driver's clock (``now_s``; t = 0 is a local midnight, so ``now_s % 86400`` is the time of
day), bytes, requests. Calls must come with non-decreasing ``now_s``.

Build::

    from warmserve.policy import make_policy, POLICY_NAMES, PolicyConfig
    from warmserve.policy.state import ClusterState, ModelInfo, InstanceState, PrewarmState
    from warmserve.policy import actions as A

    models = [ModelInfo("llama-7b", weight_bytes=13_500_000_000, tp=1, kv_bytes_per_token=524288,
                        prefill_s=0.035, decode_s_per_token=0.015), ...]
    state = ClusterState.uniform(n_servers=2, models=models, gpu_bytes=72 << 30)
    policy = make_policy("warmserve", models=models, config=PolicyConfig(),
                         history={"llama-7b": (window_start_s, avg_concurrency, peak_concurrency)})

``history`` (optional) holds earlier windows per model as three equal-length arrays; a window of NaN is missing.
Window starts must be >= 0, so a run whose history covers D days starts its clock at ``D * 86400`` (or later).
A model with no history gets no prewarm until it has been observed for a window; it still autoscales.

Drive::

    # every request arrival (the request is counted in state.queued[model] until routed):
    act = policy.route(state, model, now_s, request_id)
        # A.Route          -> send it there, inst.in_flight += 1
        # A.StartInstance  -> apply it (see below); the request waits in state.queued
        # None             -> wait in state.queued (a creation is in flight, or no GPU is free)
    policy.on_request_start(model, now_s)   # optional, on arrival: exact concurrency for the forecast windows
    policy.on_request_done(model, now_s)    # optional, on finish (and inst.in_flight -= 1 by the driver)

    # every ~1 s (and right after an instance becomes ready):
    for act in policy.tick(state, now_s): apply(act)   # in order
    # then retry route() for the queued requests of each model, oldest first, until it returns None

    # when the driver measures windows itself (instead of on_request_*), or to feed history later:
    policy.observe_window(model, window_start_s, avg_concurrency, peak_concurrency)
    policy.load_history(model, window_start_s_array, avg_array, peak_array)   # many windows at once

Applying actions (the driver keeps ``state`` in step; see ``actions`` for each one):

- ``Prewarm``: add ``PrewarmState(progress=0)``; raise ``progress`` to 1.0 as the weights load.
- ``CancelPrewarm`` / ``Evict``: delete the prewarm, free its memory.
- ``StartInstance``: delete the prewarms in ``evict``; if ``prewarm_id`` is set, take that prewarm's weights and
  delete it from ``state.prewarms``; add ``InstanceState(ready_s=None, created_s=now_s)``; set ``ready_s`` and
  ``kv_blocks_total``/``kv_blocks_mapped`` when it can serve (``apply.kv_blocks_for`` gives the total:
  ``kv_fraction`` of the GPU memory left after the model's own shard).
- ``StopInstance``: set ``draining``; route nothing more to it; delete it when ``in_flight`` reaches 0.
- ``SetKvTarget``: map or unmap KV pages so that ``kv_blocks_mapped = min(total, used + free_blocks)``.

GPUs: ``state.gpus[i].gpu_id == i``; a server has at most 8 GPUs and a tp-replica lies on one server.
Memory: per GPU, ``total_bytes`` = weight shards of instances and prewarms + mapped KV blocks + free. Shards
and KV blocks are 2 MiB aligned (``ModelInfo.shard_bytes``, ``ModelInfo.kv_block_bytes``).

Ids: the policy picks every new instance and prewarm id (strings). ``PrewarmState.score`` is the score at
creation; the policy rescores its replicas each plan and keeps the current scores itself.

What ``tick`` does, in order: records the load (in-flight + queued per model, averaged over 5 s), closes
finished forecast windows, keeps the weights of stopped instances that have drained as prewarms on their GPUs
(an ordinary ``Prewarm``; for an instance stopped with nothing in flight, right after its ``StopInstance`` in the
same list), autoscales (§5; new instances placed by §4, packed so that free GPUs stay in whole blocks), sets KV
targets (§6; growth evicts the
lowest-score prewarm on the GPU first), and, at each window start and every ``replan_s``, forecasts the window
now under way from the windows before it, plans replicas (§2) and places them laminarly (§3), evicting
lower-score prewarms where needed.

Policies by name (``POLICY_NAMES``): ``warmserve``, ``autoscale`` (reactive, no prewarming, engine started
cold, weights from host memory), ``shared`` (static colocation of every model with fixed KV shares; several
instances per GPU), ``dedicated`` (fixed GPUs per model), and the ablations ``no-kv-reservation``,
``round-robin-placement``, ``reactive`` (plans prewarms from the last window instead of a forecast).
``shared`` and ``dedicated`` lay out all their instances on the first tick and never change them; route() sends a
request to the model's least-loaded instance whatever its load, and returns None for a model that got no GPUs.

``apply.apply(state, action, now_s)`` is the reference bookkeeping for every action (instant loads); drivers
with real or simulated durations make the same changes spread over time.
"""

from __future__ import annotations

from warmserve.policy.config import FORECASTERS, PolicyConfig
from warmserve.policy.core import POLICY_NAMES, Policy, make_policy

__all__ = ["FORECASTERS", "POLICY_NAMES", "Policy", "PolicyConfig", "make_policy"]
