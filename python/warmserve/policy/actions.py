"""What the policy asks the driver to do. Frozen and hashable; a list of them is applied in order.

Ids: the policy chooses every new ``instance_id`` and ``prewarm_id`` (strings, unique for the policy object's
life: ``"<model>/i<n>"`` and ``"<model>/p<n>"``). The driver uses them as keys in ClusterState.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Prewarm:
    """Load ``model``'s weights onto ``gpus`` (one shard per GPU) without serving.

    The driver adds ``PrewarmState(prewarm_id, model, gpus, progress=0, score)`` at once (the memory counts as
    taken from then on) and raises ``progress`` to 1.0 as the load goes."""

    prewarm_id: str
    model: str
    gpus: tuple[int, ...]
    score: float
    #: Keep the weights that the stopped instance ``kept_from`` (same model, same GPUs) left resident: the
    #: prewarm is loaded at once with no copy. When those weights are gone already (the driver drops kept weights
    #: that no Prewarm claimed by the end of the tick after the stop), the driver loads them again.
    kept_from: str | None = None


@dataclass(frozen=True, slots=True)
class CancelPrewarm:
    """Stop a prewarm that is still loading and release its pages; the driver deletes it from state."""

    prewarm_id: str


@dataclass(frozen=True, slots=True)
class Evict:
    """Drop a prewarm (loaded or loading) and release its pages; the driver deletes it from state."""

    prewarm_id: str
    #: Why, for logs and metrics: "scale_up" (another model took the GPUs), "placement" (a higher-score replica
    #: needed the room), "kv" (a running instance's KV cache needed the pages back), "plan" (no longer wanted).
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StartInstance:
    """Create a serving instance of ``model`` on ``gpus``.

    The driver first drops every prewarm in ``evict`` (other models' weights on these GPUs), then adds
    ``InstanceState(instance_id, model, gpus, created_s=now, ready_s=None)`` and sets ``ready_s`` when it can
    serve. With ``prewarm_id`` set, the instance is made from that prewarm's weights with no copy (a hit; when the
    prewarm is still loading, the load finishes first, and the start is counted apart, not a hit) and the prewarm
    leaves the state; otherwise the weights
    are loaded cold from host memory, unless the driver holds the model's own weights kept on exactly these GPUs
    from a stopped instance (``PolicyDriver.kept``): it makes them the start's prewarm, a hit."""

    instance_id: str
    model: str
    gpus: tuple[int, ...]
    prewarm_id: str | None = None
    evict: tuple[str, ...] = ()
    #: Share of each GPU's memory after this model's own weights shard that its KV cache may ever use: 1.0,
    #: except in the `shared` baseline, where the models colocated on a GPU split what their weights leave.
    kv_fraction: float = 1.0
    #: Engine processes, CUDA contexts and communicators exist already (WarmServe's engine prewarming); False
    #: for the `autoscale` baseline, which starts an engine from scratch.
    warm_engine: bool = True


@dataclass(frozen=True, slots=True)
class StopInstance:
    """Stop routing to the instance; once its in-flight requests finish, free its GPUs (driver sets draining)."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class Migrate:
    """Stop the instance now and move every request in flight on it to the front of its model's queue, oldest
    first, to be routed again (vLLM's recompute preemption, across instances): a request that has tokens out
    already keeps them, and its next instance prefills its prompt and those tokens before it goes on. The GPUs
    are free at once instead of when its longest generation ends."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class ReviveInstance:
    """Take a draining instance (StopInstance applied, requests still in flight) back into service: the driver
    clears ``draining``; the instance never stopped, so there is nothing for an executor to do."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class Dedicate:
    """A co-served instance (started with ``kv_fraction`` < 1), now alone on its GPUs, becomes a dedicated one in
    place: the driver raises its ``kv_blocks_total`` to what a dedicated instance holds (kv_fraction 1) and the
    executor lifts the engine's KV cap. Nothing is copied, no request waits (the worker "turns into" an instance
    of the model that burst)."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class SetKvTarget:
    """Keep ``free_blocks`` free KV blocks mapped beyond those in use (so mapped = used + free_blocks, capped at
    kv_blocks_total). Shrinking returns pages to the GPU pool for prewarms; growing maps pages that the policy has
    freed first (any Evict it needs comes earlier in the same list)."""

    instance_id: str
    free_blocks: int


@dataclass(frozen=True, slots=True)
class Route:
    """Send one request of ``model`` to ``instance_id`` (the driver adds 1 to its in_flight). From ``route`` it is
    the request just asked about; in ``tick``'s list it is the model's oldest waiting request (none: no-op)."""

    model: str
    instance_id: str
    request_id: str | int | None = None


Action = (Prewarm | CancelPrewarm | Evict | StartInstance | StopInstance | Migrate | ReviveInstance | Dedicate
          | SetKvTarget | Route)


def stopping(actions) -> set[str]:
    """Ids of the instances that ``actions`` (a tick's list so far) stop."""
    return {a.instance_id for a in actions if type(a) is StopInstance or type(a) is Migrate}
