"""The policy core: forecasts, prewarm plans, laminar placement, autoscaling, routing and KV reservation, and the
one driver that runs them.

The decisions are pure, shared by the live controller and the simulator: nothing here reads a clock, opens a
socket, starts a thread or imports torch. A policy takes a snapshot of cluster state and the time and returns
actions; ``PolicyDriver`` (``policy.driver``) keeps the state and carries the actions out through an ``Executor``.

Contract
--------
Units: seconds on the driver's clock (``now_s``; t = 0 is a midnight of the zone the load follows, and the policy's
``calendar`` (``policy.calendar``) gives the time of day there, daylight saving included; by default days are
86400 s, so ``now_s % 86400`` is the time of day), bytes, requests. Calls must come with non-decreasing ``now_s``.

Build::

    from warmserve.policy import make_policy, POLICY_NAMES, PolicyConfig
    from warmserve.policy.driver import PolicyDriver
    from warmserve.policy.state import ClusterState, ModelInfo

    models = [ModelInfo("llama-7b", weight_bytes=13_500_000_000, tp=1, kv_bytes_per_token=524288,
                        prefill_s=0.035, decode_s_per_token=0.015), ...]
    state = ClusterState.uniform(n_servers=2, models=models, gpu_bytes=72 << 30)
    policy = make_policy("warmserve", models=models, config=PolicyConfig(),
                         history={"llama-7b": (window_start_s, avg_concurrency, peak_concurrency)})
    driver = PolicyDriver(policy, state, executor)   # executor: see below

``history`` (optional) holds earlier windows per model as three equal-length arrays; a window of NaN is missing.
Window starts must be >= 0, so a run whose history covers D days starts its clock at ``D * 86400`` (or later).
A model with no history gets no prewarm until it has been observed for a window; it still autoscales.

Drive (what an executor's owner calls)::

    driver.submit(model, request, now_s, prompt_tokens=n)  # an arrival: queued in state.queues[model], routed
    driver.tick(now_s)                         # every ~1 s
    driver.withdraw(model, request, now_s)     # a waiting request left (aborted, timed out)
    driver.add_gpus(server_key, [bytes, ...])  # GPUs joined: new ids; then driver.route_all(now_s)

The executor reports back (it implements ``driver.Executor`` and calls these when things happen)::

    driver.prewarm_progress(pid, fraction) / prewarm_loaded(pid) / prewarm_failed(pid)
    driver.instance_ready(iid, now_s, kv_blocks_total=..., kv_blocks_mapped=...)   # the driver ticks at once
    driver.instance_failed(iid, now_s, error)  # starts of the model back off; after 3 its waiting requests fail
    driver.set_kv(iid, total=..., used=..., mapped=...)                            # measured KV blocks
    driver.prefill_done(request, now_s)        # its first token is out: its prompt no longer counts as prefill load
    driver.request_finished(model, iid, now_s, request=...)                        # routes the model's queue
    driver.lose_gpus(gpu_ids, now_s, requeue=[(model, request, prompt_tokens), ...])  # a worker died

What the driver does:

- **Queues**: ``state.queues[model]`` holds the waiting requests, oldest first (opaque to the policy, which reads
  their lengths: the queue is the count). The route loop asks ``policy.route`` for the oldest one until it
  answers None: a ``Route`` is sent (``executor.send``, ``in_flight += 1``); a ``StartInstance`` or
  ``ReviveInstance`` is applied and the loop goes on (ready instances may take the overflow meanwhile), ending
  at a second such answer. ``policy.on_request_start``/``on_request_done`` are called on arrival and on every
  end (finished, failed, withdrawn).
- **Prefill load**: prompt tokens given to ``submit`` count in ``state.queued_prompt_tokens`` while the request
  waits, then in its instance's ``prefill_tokens_pending`` until the executor reports ``prefill_done`` (or the
  request ends, is withdrawn or fails; a lost instance's requeued requests count as waiting again).
- **A tick**, in order: ``executor.sync`` (measured fields up to date); ``policy.tick``'s actions applied in
  order; weights kept from stopped instances that no Prewarm took are dropped (``executor.drop_kept``);
  ``executor.settle``; every queue routed.
- **Actions** (``driver.apply``; anything else raises ``InvalidArgumentError``): ``Prewarm`` adds
  ``PrewarmState(progress=0)`` and loads it (``executor.load_prewarm``), or, with ``kept_from`` naming a stopped
  instance whose weights are still on those GPUs, takes them at once with no copy (``executor.keep_prewarm``).
  ``CancelPrewarm``/``Evict`` delete it (``executor.drop_prewarm``). ``StartInstance`` drops the prewarms in
  ``evict``, takes ``prewarm_id``'s weights (the prewarm leaves the state), adds ``InstanceState(ready_s=None)``
  with ``kv_blocks_total`` from ``state.kv_blocks_for`` (``kv_fraction`` of the memory after its shard; a share
  never below one request at the model's context) and starts it (``executor.start_instance``). ``StopInstance`` sets
  ``draining`` (``ReviveInstance`` clears it); once ``in_flight`` is 0 the instance leaves the state, its weights are
  kept on its GPUs (``driver.kept``) and ``executor.stop_instance`` frees the rest. ``Migrate`` stops it at once:
  ``executor.migrate_requests`` takes its requests off it and they go to the front of the model's queue, each counting
  as prefill load its prompt and the tokens it has out (its next instance prefills both and goes on). ``Dedicate``
  raises a co-served instance's ``kv_blocks_total`` to a dedicated one's (``executor.dedicate_instance`` lifts the
  engine's KV cap in place). ``SetKvTarget`` sets ``kv_free_target`` (``executor.set_kv_target`` maps to used + free).
  ``Route`` (in tick's list) sends the model's oldest waiting request. Placing anything on GPUs that hold kept
  weights drops those first.
- **GPUs**: ``state.gpus[i].gpu_id == i`` for the life of the cluster. A lost GPU stays in ``state.gpus``
  marked ``gone`` and leaves its server's ``gpu_ids`` (placement sees servers only); its instances, prewarms and
  kept weights leave the state. A GPU that joins gets the next id. A server has at most 8 GPUs and a tp-replica
  lies on one server.

Executors: the live controller (``controller.executor.LiveExecutor``, workers over ZeroMQ), the simulator
(``sim.simulator.Simulator``, durations from a cost model) and ``instant.InstantExecutor`` (everything at once;
tests and benchmarks).

Memory: per GPU, ``total_bytes`` = weight shards of instances and prewarms + mapped KV blocks + free. Shards
and KV blocks are 2 MiB aligned (``ModelInfo.shard_bytes``, ``ModelInfo.kv_block_bytes``).

Ids: the policy picks every new instance and prewarm id (strings). ``PrewarmState.score`` is the score at
creation; the policy rescores its replicas each plan and keeps the current scores itself.

What ``tick`` does, in order: records the load (in-flight + queued per model, averaged over 5 s), closes
finished forecast windows; where the models with forecast demand outnumber the GPUs (one instance each at its
tp), lays out `shared`'s colocation weighted by the forecast at the first tick and, while it
stands, only moves an idle spare slot to a busy model (``colocate_when_oversubscribed``, ``layout_follows_load``;
``policy.colocation``); otherwise keeps the weights of stopped instances that
have drained as prewarms on their GPUs (a ``Prewarm`` with ``kept_from``; for an instance stopped with nothing in
flight, right after its ``StopInstance`` in the same list), autoscales (§5, plus a prefill trigger: the 5 s average of
the backlog's prefill time, tokens x prefill_s / 1024, against 0.8 x the per-instance budget ``prefill_budget_s``: the
TTFT target of ttft_target_prefills prefills, less the request's own;
GPUs arbitrated by unmet demand: draining instances revived first, new ones one at a time to the model whose
demand is least met, a quiet model's last instance stopped only when another model wants GPUs that are not
free, and a model waiting with no instance and no free GPUs taking, after ``preempt_after_s``, those of the
instances whose loss hurts least when its load is twice their harm, ``policy.arbitration``; a model left
short taking (reclaim) a GPU group from models that keep ``reclaim_floor_share`` of their demand met; draining
instances with at most ``migrate_max_in_flight`` requests handing them to their model's other instances so that
their GPUs are free at once while a model wants GPUs (not while over-subscribed); new
instances placed by §4, packed so that free GPUs stay in whole blocks; while the cluster is over-subscribed
(the models with demand need more GPUs, one instance each, than are live; or always, ``coserve_always``), light
models' first instances share GPU groups within the ``coserve_tpot_s`` round, a quiet model with steady demand
keeps its instance there instead of going to zero, and a model that outgrows its host splits out (time-sharing
GPUs when none are free), ``policy.coserve``;
the load signals and KV targets live in ``policy.signals``), sets KV targets (§6; growth evicts the
lowest-score prewarm on the GPU first), and, at each window start and every ``replan_s``, forecasts the window
now under way from the windows before it (``policy.history`` keeps them), plans replicas (§2) and places them
laminarly (§3), evicting lower-score prewarms where needed.

Policies by name (``POLICY_NAMES``, registered once in ``policy.registry``): ``warmserve``, ``autoscale``
(reactive, no prewarming, engine started cold, weights from host memory), ``shared`` (static colocation of every
model with fixed KV shares; several instances per GPU), ``dedicated`` (fixed GPUs per model), and the ablations
``no-kv-reservation``, ``round-robin-placement``, ``reactive`` (plans prewarms from the last window instead of a
forecast) and ``engine-prewarm-only`` (engines ahead, no weights prewarmed). ``shared`` and ``dedicated``
(``policy.baselines``, their layouts from ``policy.colocation``) lay out all their instances on the first tick and never
change them; route() sends a request to the model's least-loaded instance whatever its load, and returns None for a
model that got no GPUs.

Routing (``Policy.route``): the least-loaded ready instance below B; else a draining one revived; else a new
instance (one creation in flight per model, none while another model waits with no instance); else the
least-loaded ready instance takes the overflow, up to ``route_cap_per_instance`` when set (0, the default: no
cap; 32 = B: the paper's artifact, whose manager makes the rest wait), and never past its engine's max_num_seqs
(``InstanceState.max_seqs``, which the live executor gives ``instance_ready``; the simulator's gives none): a
request beyond waits in the driver's queue, where whichever instance frees a slot or becomes ready first takes it,
not in one engine's own queue.
"""

from __future__ import annotations

from warmserve.policy.config import FORECASTERS, PolicyConfig
from warmserve.policy.core import Policy
from warmserve.policy.registry import POLICIES, POLICY_NAMES, make_policy

__all__ = ["FORECASTERS", "POLICIES", "POLICY_NAMES", "Policy", "PolicyConfig", "make_policy"]
