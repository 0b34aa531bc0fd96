"""A request that would wait in its model's queue past request_timeout_s is refused at once (503 with Retry-After),
by the queue ahead of it and the rate that queue is measured to drain at, rather than queued to fail with a 504 once
the timeout has run out.

Found in the overload review (one model flooded by streaming clients, max_queue 24, request_timeout_s 5, one CPU
worker, clients retrying after 0.2 s): 66 requests were served and 48 waited the whole 5.0-5.2 s for a 504, while
the queue drained at about 3.3 requests a second, 24 ahead being about 7 s of waiting; a client refused at once
could have gone to another server. At the defaults (max_queue 512, request_timeout_s 120) a flooded model whose
instances start 2 requests a second keeps 512 waiting, and every one past about the 240th waits 120 s for its 504.

The drain rate is measured, never assumed: requests of the model first sent to an instance (``DrainMeter.started``,
from ``ControllerMetrics.first_sent``) per second, over the last ``DRAIN_WINDOW_S``, and only over the time its queue
held a request all along (``DrainMeter.backlogged_since``). A queue that runs dry starts requests as fast as they
come, not as fast as its instances can take them: a rate taken then would understate what they take, and refuse
the first burst after a quiet spell. So a fresh server, a model's first burst and a queue that has not been
backlogged for ``MIN_STARTS`` starts have no measure, and their requests are admitted as they always were; they may
still end in a 504. Only HTTP requests are checked (``Api._generate``): ``warmserve.Cluster`` callers give a
timeout of their own."""

from __future__ import annotations

import bisect
import math
import time

from warmserve.controller.errors import OverloadedError

#: The recent window a drain rate is measured over, seconds: long enough for ``MIN_STARTS`` at a few requests a
#: second, short enough that an instance the policy added (or stopped) shows in the rate within it.
DRAIN_WINDOW_S = 30.0
#: Fewest starts, within the window and the backlog, that make a measure: an instance's batch frees its slots
#: together when its sequences end together, so starts come in clumps of up to its capacity; over 16 the rate of a
#: clump or two (a batch of 2 ending at once) is not read as that of the queue.
MIN_STARTS = 16
#: While its measure spans less than MATURE_SPAN_S, a request is refused only when the queue ahead of it would take more
#: than this many times its timeout to drain at the measured rate. Above 1 because the error is asymmetric: a false
#: refusal sends away a request that would have been served, a late one costs only the timeout that it would have waited
#: anyway. The rate is measured on what the instances did, but the policy may add an instance for a flooded model during
#: the wait (which raises the rate), and starts come in batch-sized clumps that can shift a measure by one clump, and a
#: CPU shared with busy clients slows the instances unevenly (live, one run: a refusal measured 1.66 a second where the
#: run served 2.05 a second). 1.5 keeps refusals to requests whose wait is clearly past the timeout while the measure is
#: young.
WAIT_MARGIN = 1.5
#: A measure spanning at least this long is trusted at 1x the timeout, not WAIT_MARGIN: found in the live review of
#: this rule (a flood that kept on, request_timeout_s 10 and 5), clients retrying at once held the queue at the
#: refusal line, so a request admitted there expected 1.5x its timeout and about half of those admitted still waited
#: it out for a 504 (242 answered, 264 504s; 664 and 968 in the other run). Over 10 s a measure holds several of an
#: instance's batches, so one clump of starts no longer shifts it much.
MATURE_SPAN_S = 10.0
#: Most seconds a refusal's Retry-After asks for: the time the queue needs to drain to the admission line is a
#: forecast, and a long one is as likely to be cut short by an instance the policy adds.
MAX_RETRY_AFTER_S = 60


class DrainMeter:
    """The times requests of each model were first sent to an instance (time.monotonic() seconds), the last
    ``window_s`` of them; fed by ``ControllerMetrics.first_sent`` (once per request, not when a request moved off
    its instance is sent again: those are not counted ahead of a new one either, ``expected_wait_s``)."""

    def __init__(self, window_s: float = DRAIN_WINDOW_S):
        self.window_s = window_s
        self._starts: dict[str, list[float]] = {}
        #: model -> (since when its queue has held a request all along, when that was last seen)
        self._backlog: dict[str, tuple[float, float]] = {}

    def backlogged_since(self, model: str, head_arrival_s: float, now_s: float) -> float:
        """Since when ``model``'s queue has held a request all along, seen at ``now_s`` with its oldest request
        waiting since its arrival at ``head_arrival_s``. That request alone says since its arrival, which a flood
        cuts short: past request_timeout_s it is withdrawn, so a measure since the head's arrival never spans more
        than the timeout. So the last look is kept: a head that was already waiting then overlaps the stretch seen
        then, and the two make one (a queue that ran dry since refilled with requests that all came after)."""
        since_s, seen_s = self._backlog.get(model, (head_arrival_s, now_s))
        since_s = min(since_s, head_arrival_s) if head_arrival_s <= seen_s else head_arrival_s
        self._backlog[model] = (since_s, now_s)
        return since_s

    def started(self, model: str, at_s: float) -> None:
        times = self._starts.setdefault(model, [])
        if times and at_s < times[-1]:  # sends on one event loop come in order; a stray earlier one is placed
            bisect.insort(times, at_s)
        else:
            times.append(at_s)
        old = bisect.bisect_left(times, at_s - self.window_s)
        if old > 64 or old * 2 > len(times):  # trimmed in batches: a del from the front moves the whole list
            del times[:old]

    def rate_per_s(self, model: str, since_s: float, now_s: float) -> tuple[float, int, float] | None:
        """(starts per second, starts, span seconds) of ``model`` after ``since_s`` and within the window before
        ``now_s``; None with fewer than MIN_STARTS of them, or all at one instant. Taken from the first start to the
        last, not to ``now_s``: starts that stopped (an instance going) read as the rate they had, which errs
        towards admitting."""
        times = self._starts.get(model)
        if not times:
            return None
        first = bisect.bisect_right(times, max(since_s, now_s - self.window_s))
        n = len(times) - first
        if n < MIN_STARTS:
            return None
        span_s = times[-1] - times[first]
        if span_s <= 0:
            return None
        return (n - 1) / span_s, n, span_s


def expected_wait_s(queue, meter: DrainMeter, model: str, now_s: float) -> tuple[float, int, float, float] | None:
    """(expected wait in seconds, requests ahead, drain rate per second, span of its measure in seconds) of a request
    of ``model`` queued now behind ``queue`` (its waiting requests, oldest first, those moved off an instance and
    waiting again at its front); None without a measure. Those waiting again are left out of the queue ahead, as
    their second send is out of the rate."""
    fresh = 0
    for req in queue:  # the ones waiting again first: usually none
        if req.sent_s is None:
            break
        fresh += 1
    else:
        return None
    ahead = len(queue) - fresh
    measure = meter.rate_per_s(model, meter.backlogged_since(model, queue[fresh].arrival_s, now_s), now_s)
    if measure is None:
        return None
    rate, _, span_s = measure
    return ahead / rate, ahead, rate, span_s


def check(controller, model: str) -> None:
    """Raise OverloadedError (503, Retry-After) when a request of ``model`` queued now would wait more than
    controller.request_timeout_s (the API takes no timeout of a request's own), WAIT_MARGIN times it while the
    measure spans less than MATURE_SPAN_S, by the measured drain rate of its queue. A controller without queues or
    a meter (the HTTP layer's test doubles) is not checked."""
    state, metrics, cc = (getattr(controller, a, None) for a in ("state", "metrics", "cc"))
    meter = getattr(metrics, "drain", None)
    if state is None or meter is None or cc is None:
        return
    queue = state.queues.get(model)
    if not queue:
        return
    found = expected_wait_s(queue, meter, model, time.monotonic())
    if found is None:
        return
    wait_s, ahead, rate, span_s = found
    timeout_s = cc.request_timeout_s
    line_s = (1.0 if span_s >= MATURE_SPAN_S else WAIT_MARGIN) * timeout_s
    if wait_s <= line_s:
        return
    # Retry-After: until the queue ahead would have drained to the line at the measured rate (found in review: a
    # fixed 1 s brought clients that honour it straight back to a queue seconds from admitting them)
    retry_after_s = max(1, min(MAX_RETRY_AFTER_S, math.ceil(wait_s - line_s)))
    raise OverloadedError(
        f"{ahead} requests for {model!r} are waiting ahead of this one, and its instances took {rate:.3g} a second "
        f"over the last {span_s:.0f} s: it would wait about {wait_s:.0f} s for one, past the {timeout_s:g} s a "
        f"request may wait (controller.request_timeout_s); refused now rather than timed out then: retry later or on "
        f"another server, add workers, or raise controller.request_timeout_s",
        model=model, queued=ahead, drain_rate_per_s=round(rate, 3), expected_wait_s=round(wait_s, 1),
        timeout_s=timeout_s, retry_after_s=retry_after_s)
