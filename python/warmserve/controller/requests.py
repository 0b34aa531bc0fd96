"""One generation request as the controller tracks it, from arrival to its last token.

A request is consumed with ``async for token_ids in req`` (the front end's TextGeneration turns it into text); it
ends normally (``finish_reason`` set) or raises the typed error that ended it. ``abort()`` is safe at any time and
from any state.
"""

from __future__ import annotations

import asyncio
import collections
import time

from warmserve.errors import WarmServeError

_END = object()


class Req:
    __slots__ = (
        "rid", "model", "prompt_ids", "sampling", "arrival_s", "first_token_s", "last_token_s", "generated",
        "finish_reason", "error", "worker", "instance_id", "_q", "_abort_cb", "done", "reroutes", "deadline_s",
        "_waiter", "sent_s", "end_s", "gid", "logprobs", "prompt_logprobs", "abort_reason", "token_ids", "prefilling",
        "outcome_by_consumer", "_settle", "family", "queue_s",
    )

    def __init__(self, rid: int, model: str, prompt_ids: list[int], sampling, timeout_s: float, siblings=()):
        self.rid = rid
        self.model = model
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.arrival_s = time.monotonic()
        self.deadline_s = self.arrival_s + timeout_s
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.generated = 0
        #: Every token id streamed so far: a resumption elsewhere (``protocol.Generate.output_ids``) starts after them.
        self.token_ids: list[int] = []
        #: Its last Generate has not answered with a token yet (its prefill counts as the instance's load).
        self.prefilling = False
        self.finish_reason: str | None = None
        self.error: WarmServeError | None = None
        self.worker = None          # the WorkerRecord it runs on, None while queued
        self.instance_id: str | None = None
        self.gid = 0                # id of its Generate on that worker
        self.done = False
        self.reroutes = 0
        self.sent_s: float | None = None   # when its Generate left for the worker (last one, if re-routed)
        #: Arrival to its first send (``Executor.send``), set once: what a re-route waits later is not added, as
        #: warmserve_request_queue_seconds observes it once per request. None while it was never sent.
        self.queue_s: float | None = None
        self.end_s: float | None = None    # when the worker's final event arrived
        # Token lists and the end marker; one waiter at most (the consumer). Lighter than an asyncio.Queue.
        self._q: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._abort_cb = None       # set by the controller: abort(req) frees it wherever it is
        self.logprobs: list = []    # protocol.TokenLogprobs of each generated token, when sampling asks for them
        self.prompt_logprobs: list = []  # of prompt tokens 1.., when sampling asks for prompt_logprobs
        self.abort_reason = ""      # why the front end aborted it: "stop" (a stop string) or "abort"
        #: Its consumer reads its text (the front end's TextGeneration) and settles its outcome (``settle``): an
        #: end its text may still turn into another finish reason is counted once that text has been read.
        self.outcome_by_consumer = False
        self._settle = None         # counts the outcome held for the consumer (``ended``), once
        #: The requests of the choices of its n > 1 HTTP request, itself included (one list, shared): a queued
        #: choice does not time out while a sibling produced a token within request_timeout_s (``expiry.expire``).
        #: ``siblings``: the earlier choices of its HTTP request, whose family it joins.
        self.family: list = siblings[0].family if siblings else []
        self.family.append(self)

    # ------------------------------------------------------------------------------------------ producer side

    def server_timing(self) -> str:
        """A Server-Timing header value: time queued in the controller before the first send (``queue_s``, as the
        access log's queue_ms and warmserve_request_queue_seconds), and the rest to the end, the workers' share
        (ZeroMQ both ways plus the engine; for a re-routed request its time on each worker and between), in ms.
        What a client measures beyond these is the controller's (and HTTP's) share. Found in review: the queue was
        measured to the last send, so a re-routed request's header disagreed with its access line."""
        if self.queue_s is None or self.end_s is None:
            return ""
        return (f"queue;dur={self.queue_s * 1e3:.3f}, "
                f"worker;dur={(self.end_s - self.arrival_s - self.queue_s) * 1e3:.3f}")

    def _put(self, item) -> None:
        self._q.append(item)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def push(self, token_ids: list[int], logprobs=None, prompt_logprobs=None) -> bool:
        """Tokens from its worker. True when they are the first of its last Generate (its prefill is done)."""
        if self.done or not token_ids:
            return False
        if logprobs:
            self.logprobs.extend(logprobs)
        if prompt_logprobs:
            self.prompt_logprobs = list(prompt_logprobs)
        now = time.monotonic()
        if self.first_token_s is None:
            self.first_token_s = now
        self.last_token_s = now
        self.generated += len(token_ids)
        self.token_ids.extend(token_ids)
        self._put(token_ids)
        first, self.prefilling = self.prefilling, False
        return first

    @property
    def resume_prompt_tokens(self) -> int | None:
        """The prompt tokens its next instance prefills (``PolicyDriver`` prefill load): its prompt and the tokens
        it has out; None with none out (its prompt, as the driver counts it already)."""
        return len(self.prompt_ids) + self.generated if self.generated else None

    def requeued(self, timeout_s: float) -> None:
        """It left its worker to start over elsewhere: it waits in its model's queue again, for up to
        ``timeout_s`` from now (not from its arrival: a long generation must not time out for having run)."""
        self.worker = self.instance_id = None
        self.deadline_s = time.monotonic() + timeout_s

    def ended(self, reason: str, count) -> None:
        """It ended on its engine with ``reason``; ``count(outcome)`` counts it, now, or for a "length" with stop
        strings whose consumer reads its text (``outcome_by_consumer``), once that consumer has read the last
        tokens (``settle``): a stop string they complete makes it "stop" for the client, and so for the count
        (found in review: the client got "stop", the count said "length")."""
        held = self.outcome_by_consumer and reason == "length" and bool(self.sampling.stop)
        if held:  # before finish: a consumer that finds it done finds its count held
            self._settle = lambda outcome: count(outcome or reason)
        self.finish(reason)
        if not held:
            count(reason)

    def settle(self, outcome: str | None = None) -> None:
        """The consumer is through with it (read it to its end, found a stop string, or left): an outcome held for
        it (``ended``) is counted now, as ``outcome`` (the finish reason the client got) or, with None, as its
        engine ended it; one still running is counted at its end, as any request."""
        self.outcome_by_consumer = False
        count, self._settle = self._settle, None
        if count is not None:
            count(outcome)

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.finish_reason = reason
        self._put(_END)

    def fail(self, error: WarmServeError) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        self._put(_END)

    # ------------------------------------------------------------------------------------------ consumer side

    def __aiter__(self):
        return self

    async def __anext__(self) -> list[int]:
        while not self._q:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._q.popleft()
        if item is _END:
            self._q.appendleft(_END)  # later calls end too
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        # Coalesce what is already queued, so a slow reader does one write per burst, not per token.
        while self._q and self._q[0] is not _END:
            item = item + self._q.popleft()
        return item

    def abort(self, reason: str = "abort") -> None:
        """Stop the request wherever it is (queued, running); no-op once it ended. ``reason`` "stop": the text
        reached a stop string, so the request ended as it should (finish reason and outcome "stop"); "error": a
        sibling choice of its request failed or was refused (outcome "error": the client did not go away)."""
        if self.done:
            return
        self.abort_reason = reason
        cb = self._abort_cb
        if cb is not None:
            cb(self)
        self.finish(reason)
