"""An engine's measure of its decode steps: what a token of a running sequence waits for each step, reported by
workers (``protocol.WorkerInstance.decode_step_s``) for co-serving's TPOT rule (``policy.cosizing.HostSizing``)."""

from __future__ import annotations

#: Weight of the latest decode step in the recent means of step time and batch.
DECODE_STEP_WEIGHT = 0.2


class DecodeStepMeter:
    """Recent means of the wall time and batch of the steps that ran decodes only (``Engine.step`` times them)."""

    def __init__(self):
        #: Wall time of a decode step, s; running sequences in it; decode steps measured so far.
        self.step_s, self.batch, self.steps = 0.0, 0.0, 0

    def record(self, step_s: float, batch: int) -> None:
        self.steps += 1
        w = max(DECODE_STEP_WEIGHT, 1.0 / self.steps)  # the first few: a plain mean, not one biased to 0
        self.step_s += w * (step_s - self.step_s)
        self.batch += w * (batch - self.batch)
