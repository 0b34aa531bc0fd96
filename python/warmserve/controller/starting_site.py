"""What `warmserve serve` answers on its HTTP port while the cluster starts (``StartingSite``).

The port is bound before the workers start, so that a port in use fails at once; found in review: until the cluster
was up (minutes, waiting for remote workers or loading checkpoints), a connection then waited in the listen backlog
unanswered, and a health probe or a client timed out with no word. Meanwhile every request is answered 503 at once:
``/health`` with the body it has when ready (``views.health``) and ``"starting": true``, any other path with an
OpenAI-style error and ``Retry-After``. The site serves a duplicate of the listening socket, so closing it leaves the
listener open for the API's site; connections that arrive between the two wait in the backlog.
"""

from __future__ import annotations

from aiohttp import web

from warmserve.controller.openai_api import error_body

#: Retry-After of a request answered while starting, seconds.
STARTING_RETRY_AFTER_S = 5
_MESSAGE = ("the server is starting (its workers start and load the models): retry in a few seconds; GET /health "
            "answers 200 once it serves")


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": False, "starting": True, "workers": 0, "instances": 0, "closing": False},
                             status=503, headers={"Retry-After": str(STARTING_RETRY_AFTER_S)})


async def _starting(request: web.Request) -> web.Response:
    # OpenAI's shape as every other 503 has it (error_body): found in review, type and code were swapped, the code
    # a number
    return web.json_response(error_body(503, _MESSAGE), status=503,
                             headers={"Retry-After": str(STARTING_RETRY_AFTER_S)})


class StartingSite:
    """An HTTP site on a duplicate of ``listener`` answering 503 until ``close``."""

    def __init__(self, listener, backlog: int):
        self._listener, self._backlog = listener, backlog
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", _health)
        app.router.add_route("*", "/{tail:.*}", _starting)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, self._listener.dup(), backlog=self._backlog).start()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
