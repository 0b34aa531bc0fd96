"""Measured decode steps, from the workers' Stats to the policy (``Policy.observe_decode_step``).

The policy's co-serving rule admits light models onto one worker while their combined decode step stays within
``PolicyConfig.coserve_tpot_s``. Its predicted step comes from planning figures (a profiled 20 ms step, an H100's
read bandwidth) that may be far from the hardware the workers run (a CPU, a slower GPU, bigger models), so each
tick the steps the engines measured are handed to the policy, which takes a model's step as no less than them.

Each worker reports per engine (``protocol.WorkerInstance.decode_step_s``, ``decode_batch``, ``decode_steps``):
co-served engines on one worker step in turn, and the policy sums its host's models' steps itself. Per model the
slowest of its engines' fresh measures is handed on (a model's copies and tensor-parallel ranks run the same
step; the slowest is the one its tokens wait for). A measure is fresh when the engine's count of decode steps
moved since the last tick: an engine that stopped decoding hands on nothing more, and the policy drops what it
last gave once that is older than ``cosizing.OBSERVED_STEP_MAX_AGE_S``.
"""

from __future__ import annotations


class ObservedSteps:
    """The controller's feed of measured decode steps to its policy (``Controller._tick``, before each tick)."""

    def __init__(self):
        #: (worker id, model) -> the engine's decode step count last seen: a measure is handed on once per count.
        self._counts: dict[tuple[str, str], int] = {}

    def feed(self, ctl) -> dict[str, tuple[float, float]]:
        """Hand ``ctl.policy`` (the Controller's) each model's slowest fresh measure from its workers' latest Stats;
        returns them, model -> (step seconds, batch)."""
        counts: dict[tuple[str, str], int] = {}
        slowest: dict[str, tuple[float, float]] = {}
        for w in ctl.gpu_workers:
            stats = w.stats
            if stats is None or not w.alive:
                continue
            for inst in stats.instances:
                key = (w.worker_id, inst.name)
                counts[key] = inst.decode_steps
                # a count that moved either way is fresh: a new activation of the model counts from 0 again
                if inst.decode_steps and inst.decode_steps != self._counts.get(key) and inst.decode_step_s > 0 \
                        and inst.decode_step_s > slowest.get(inst.name, (0.0, 0.0))[0]:
                    slowest[inst.name] = (inst.decode_step_s, inst.decode_batch)
        self._counts = counts  # workers and engines gone are forgotten
        now_s = ctl.now_s()
        for model, (step_s, batch) in slowest.items():
            ctl.policy.observe_decode_step(model, step_s, batch, now_s)
        return slowest
