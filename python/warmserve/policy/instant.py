"""The instant executor: everything the policy driver decides happens at once. The reference executor of the
policy's tests and of the placement benchmark (``warmserve.bench.placement``)."""

from __future__ import annotations

from warmserve.policy import actions as A
from warmserve.policy.driver import KeptWeights, PolicyDriver
from warmserve.policy.state import ClusterState, InstanceState, PrewarmState


class InstantExecutor:
    """Everything happens at once: prewarms load and instances start when applied, requests stay in flight until
    the caller finishes them (``driver.request_finished``). The reference executor of tests and benchmarks."""

    def __init__(self, start_ready: bool = True):
        #: Instances are ready when started; False: they wait for the caller's ``driver.instance_ready``.
        self.start_ready = start_ready
        self.driver: PolicyDriver | None = None
        #: Requests sent, by instance id, oldest first (the caller finishes them).
        self.running: dict[str, list] = {}
        #: Every call, as (method name, id), in order: what the driver decided, for comparisons.
        self.log: list[tuple[str, str]] = []

    def attach(self, driver: PolicyDriver) -> PolicyDriver:
        self.driver = driver
        return driver

    def sync(self, now_s: float) -> None:
        pass

    def settle(self, now_s: float) -> None:
        pass

    def load_prewarm(self, prewarm: PrewarmState, now_s: float) -> None:
        self.log.append(("load_prewarm", prewarm.prewarm_id))
        prewarm.progress = 1.0

    def keep_prewarm(self, prewarm: PrewarmState, kept: KeptWeights, now_s: float) -> None:
        self.log.append(("keep_prewarm", prewarm.prewarm_id))

    def drop_prewarm(self, prewarm: PrewarmState, evicted: bool, now_s: float) -> None:
        self.log.append(("drop_prewarm", prewarm.prewarm_id))

    def drop_kept(self, kept: KeptWeights, now_s: float) -> None:
        self.log.append(("drop_kept", kept.instance_id))

    def start_instance(self, inst: InstanceState, act: A.StartInstance, prewarm: PrewarmState | None,
                       now_s: float) -> None:
        self.log.append(("start_instance", inst.instance_id))
        if self.start_ready:
            inst.ready_s = now_s
            inst.kv_blocks_mapped = inst.kv_blocks_total

    def stop_instance(self, inst: InstanceState, now_s: float) -> None:
        self.log.append(("stop_instance", inst.instance_id))
        self.running.pop(inst.instance_id, None)

    def migrate_requests(self, inst: InstanceState, now_s: float) -> list:
        """The newest ``inst.in_flight`` requests sent to it (the caller finishes requests oldest first); nothing
        runs here, so none has tokens out: each waits with its prompt as counted (None)."""
        self.log.append(("migrate_requests", inst.instance_id))
        sent = self.running.pop(inst.instance_id, [])
        return [(r, None) for r in sent[len(sent) - max(inst.in_flight, 0):]]

    def dedicate_instance(self, inst: InstanceState, now_s: float) -> None:
        self.log.append(("dedicate_instance", inst.instance_id))

    def set_kv_target(self, inst: InstanceState, free_blocks: int, now_s: float) -> None:
        inst.kv_blocks_mapped = min(inst.kv_blocks_total, inst.kv_blocks_used + free_blocks)

    def send(self, request, inst: InstanceState, now_s: float) -> None:
        self.log.append(("send", inst.instance_id))
        self.running.setdefault(inst.instance_id, []).append(request)

    def fail(self, request, error: BaseException, now_s: float) -> None:
        self.log.append(("fail", str(request)))


def instant_driver(policy, state: ClusterState, *, start_ready: bool = True) -> PolicyDriver:
    """A driver over ``state`` with an ``InstantExecutor`` (``driver.executor``)."""
    ex = InstantExecutor(start_ready)
    return ex.attach(PolicyDriver(policy, state, ex))
