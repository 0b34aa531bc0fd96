"""Errors only the controller raises; registered so they keep their class across a ZeroMQ hop."""

from __future__ import annotations

from warmserve.errors import WarmServeError, register


@register
class OverloadedError(WarmServeError):
    """Too many requests are waiting for a model; the client should retry later."""

    http_status = 503


@register
class TooManyRequestsError(WarmServeError):
    """Too many requests are in flight over HTTP at once."""

    http_status = 429


@register
class UnauthorizedError(WarmServeError):
    """The request carried no API key, or the wrong one."""

    http_status = 401


@register
class NoWorkersError(WarmServeError):
    """No live worker can host the model (all lost, or none registered yet)."""

    http_status = 503


@register
class InstanceGoneError(WarmServeError):
    """A request reached a worker that no longer ran its instance there (the controller's routing raced a stop or
    switch of it) once more than controller.max_worker_losses_per_request allows it to start over, or after the
    controller had dropped that instance: the controller's doing, not the client's; retry it. Fields: model,
    worker_id, instance_id, refusals (of this request), limit."""

    http_status = 503
