"""An engine's measures of its steps: what a token of a running sequence waits for each decode step, reported by
workers (``protocol.WorkerInstance.decode_step_s``) for co-serving's TPOT rule (``policy.cosizing.HostSizing``);
and what a token of a step that prefills costs, from which a worker sizes a co-served instance's step to its turn
(``turn_tokens``)."""

from __future__ import annotations

#: Weight of the latest decode step in the recent means of step time and batch.
DECODE_STEP_WEIGHT = 0.2
#: Weight of the latest prefilling step in the recent mean of its cost per token.
PREFILL_STEP_WEIGHT = 0.2
#: Tokens of a co-served instance's step before its prefill cost was ever measured.
DEFAULT_TURN_TOKENS = 256
#: Prompt tokens a co-served instance's step may always run beside its decodes, however short its turn, so that
#: a long prompt still advances (its step then takes more than its turn).
MIN_TURN_PROMPT_TOKENS = 16


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


class PrefillTokenMeter:
    """Recent mean of the wall time per token of the steps that ran prompt chunks: the step's seconds over all its
    tokens, decodes beside the chunks included (a step's fixed cost is spread over its tokens, so a budget sized
    from it converges on the tokens that fill a turn: ``turn_tokens``)."""

    def __init__(self):
        #: Wall seconds per token of a prefilling step; such steps measured so far.
        self.token_s, self.steps = 0.0, 0

    def record(self, step_s: float, tokens: int) -> None:
        self.steps += 1
        w = max(PREFILL_STEP_WEIGHT, 1.0 / self.steps)
        self.token_s += w * (step_s / max(1, tokens) - self.token_s)


def record_step(decode: DecodeStepMeter, prefill: PrefillTokenMeter, chunks, step_s: float) -> None:
    """Measure a step that ran ``chunks`` (``scheduler.ScheduledChunk``) in ``step_s`` wall seconds."""
    if all(c.n == 1 and c.start > 0 for c in chunks):  # a decode step, what a token waits for
        decode.record(step_s, len(chunks))
    else:
        prefill.record(step_s, sum(c.n for c in chunks))


def turn_tokens(turn_s: float, meter: PrefillTokenMeter, running: int, max_batch_tokens: int) -> int:
    """Tokens (decodes and prompt chunks, as ``Scheduler.schedule`` counts them) of a step that should take at most
    ``turn_s`` wall seconds at the measured cost per token; ``DEFAULT_TURN_TOKENS`` before any was measured. Never
    below ``running`` decodes + ``MIN_TURN_PROMPT_TOKENS`` nor above ``max_batch_tokens``."""
    # capped before int(): a huge turn over a tiny cost is inf, which int() refuses (found in review)
    measured = meter.steps and meter.token_s > 0
    want = int(min(turn_s / meter.token_s, max_batch_tokens)) if measured else DEFAULT_TURN_TOKENS
    return min(max_batch_tokens, max(running + MIN_TURN_PROMPT_TOKENS, want))
