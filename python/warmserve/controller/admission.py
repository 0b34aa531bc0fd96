"""The HTTP generation requests in flight, per model, against server.max_concurrent_requests, with room kept for
each model's first ``limit // (2 x models)`` so that a flood of some models cannot refuse the others.

Found in the overload review (the three demo models, the defaults: max_concurrent_requests 1024, max_queue 512):
two models flooded by 600 streaming clients each held 1,024 requests (512 and 416 queued, 96 running), and every
request of the third, idle model (nothing queued, an instance with nothing in flight) was answered 429, 25 of 25
probes in 30 s. Each model's max_queue bounds one flood, but the sum of the models' queues is past the server's
limit from two models on. The reserve keeps the limit a hard bound on the total."""

from __future__ import annotations

from warmserve.controller.errors import TooManyRequestsError


class HttpSlots:
    """``limit``: server.max_concurrent_requests."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self.by_model: dict[str, int] = {}

    def reserve_each(self, models: int) -> int:
        """Requests of each model admitted whatever the other models hold: half the limit shared out (0 for one
        model, which has the whole limit)."""
        return self.limit // (2 * models) if models > 1 else 0

    def most_for_one(self, models: int) -> int:
        """Requests one model can ever hold at once: the limit less the others' reserves (an n above it is a 400,
        not a 429 that would have the client retry what can never be admitted)."""
        return self.limit - (models - 1) * self.reserve_each(models)

    def check(self, model: str, n: int, models: list[str]) -> None:
        """Raise TooManyRequestsError when ``n`` more requests of ``model`` (one of ``models``, those served) do not
        fit the limit less the room kept for the other models below their reserve."""
        floor = self.reserve_each(len(models))
        kept = sum(max(0, floor - self.by_model.get(m, 0)) for m in models if m != model)
        if self.total + n > self.limit - kept:
            mine = self.by_model.get(model, 0)
            why = (f", room for {kept} more kept for the other models (each has its first {floor} whatever the "
                   f"others hold)" if kept else "")
            raise TooManyRequestsError(
                f"{self.total} requests are in flight (generating, or streaming their answers), {mine} of them for "
                f"{model!r}; the limit is {self.limit}{why}: retry later or raise server.max_concurrent_requests",
                active=self.total, limit=self.limit, model_active=mine, kept_for_others=kept)

    def take(self, model: str, n: int) -> None:
        """Count ``n`` requests of ``model`` in flight (``check`` first), until ``give``."""
        self.total += n
        self.by_model[model] = self.by_model.get(model, 0) + n

    def give(self, model: str, n: int) -> None:
        self.total -= n
        left = self.by_model[model] - n
        if left:
            self.by_model[model] = left
        else:
            del self.by_model[model]
