"""The OpenAI-compatible HTTP front end (aiohttp): /v1/completions, /v1/chat/completions, /v1/models, /health,
/metrics. It parses the OpenAI bodies and writes the answers, as one JSON body or as server-sent events; prompt
preparation and the text of a generation are the front end's (frontend.py), shared with ``warmserve.Cluster``."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from aiohttp import web

from warmserve.controller import openai_api as oa
from warmserve.controller.errors import TooManyRequestsError, UnauthorizedError
from warmserve.controller.frontend import TextGeneration, aprepare
from warmserve.errors import WarmServeError

log = logging.getLogger("warmserve.controller")

_JSON = "application/json"
#: When the request reached the controller (time.monotonic()), for Server-Timing.
_T0 = web.RequestKey("warmserve_t0", float)


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=oa._enc.encode(body), content_type=_JSON)


def _error(e: BaseException) -> web.Response:
    status, body = oa.error_from_exception(e)
    return _json(status, body)


class Api:
    def __init__(self, controller, api_key: str = "", max_concurrent_requests: int = 1024):
        self.controller = controller
        self.api_key = api_key
        self.max_concurrent = max_concurrent_requests
        self.active = 0
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=16 << 20)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{name}", self.model)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/stats", self.stats)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        request[_T0] = time.monotonic()
        try:
            if self.api_key and (request.path.startswith("/v1/") or request.path == "/stats"):
                auth = request.headers.get("Authorization", "")
                given = auth[7:] if auth.startswith("Bearer ") else ""
                if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                    raise UnauthorizedError("missing or wrong API key: send 'Authorization: Bearer <key>'")
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _json(e.status, oa.error_body(e.status, f"{e.reason}: {request.method} {request.path}"))
        except WarmServeError as e:
            return _error(e)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # a bug: the client still gets an OpenAI-shaped 500, the log gets the trace
            log.exception("%s %s failed", request.method, request.path)
            return _error(e)

    # ------------------------------------------------------------------------------------------- simple routes

    async def models(self, request):
        return _json(200, oa.models_body(self.controller.model_names(), self.created))

    async def model(self, request):
        m = self.controller.model(request.match_info["name"])
        return _json(200, {"id": m.name, "object": "model", "created": self.created, "owned_by": "warmserve"})

    async def health(self, request):
        h = self.controller.health()
        return _json(200 if h["ok"] else 503, h)

    async def stats(self, request):
        """The controller's view as JSON: workers (pool pages, models), instances, prewarms, queues."""
        return _json(200, self.controller.stats())

    async def metrics(self, request):
        return web.Response(body=self.controller.metrics.registry.render().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    # --------------------------------------------------------------------------------------------- generation

    async def completions(self, request: web.Request):
        req, sampling = oa.parse_completion(await request.read())
        model = self.controller.model(req.model)
        ids = await aprepare(model, req.prompt, max_tokens=sampling.max_tokens)
        return await self._generate(request, "completion", req, model, ids, sampling)

    async def chat(self, request: web.Request):
        req, sampling = oa.parse_chat(await request.read())
        model = self.controller.model(req.model)
        ids = await aprepare(model, messages=oa.chat_dicts(req), max_tokens=sampling.max_tokens)
        return await self._generate(request, "chat", req, model, ids, sampling)

    async def _generate(self, request, kind, req, model, ids, sampling):
        if self.active >= self.max_concurrent:
            raise TooManyRequestsError(
                f"{self.active} requests are in flight, the limit is {self.max_concurrent}: retry later "
                f"or raise server.max_concurrent_requests", active=self.active, limit=self.max_concurrent)
        self.active += 1
        try:
            handle = await self.controller.submit(model.name, ids, sampling)
            gen = TextGeneration(handle, model.tokenizer.decode, sampling.stop)
            if req.stream:
                return await self._stream(request, kind, req, model, gen, len(ids))
            text = await gen.collect()
            body = (oa.completion_body if kind == "completion" else oa.chat_body)(
                oa.new_id("cmpl" if kind == "completion" else "chatcmpl"), model.name, text,
                gen.finish_reason, len(ids), gen.completion_tokens)
            resp = _json(200, body)
            timing = handle.server_timing()
            if timing:
                # The controller's own time on this request: its handler's span minus the worker's share.
                ctl = time.monotonic() - request[_T0] - (handle.end_s - handle.sent_s)
                resp.headers["Server-Timing"] = f"{timing}, controller;dur={ctl * 1e3:.3f}"
            return resp
        finally:
            self.active -= 1

    async def _stream(self, request, kind, req, model, gen: TextGeneration, n_prompt: int):
        rid = oa.new_id("cmpl" if kind == "completion" else "chatcmpl")
        created = int(time.time())
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        def chunk(delta: str, finish):
            if kind == "completion":
                return oa.sse(oa.completion_chunk(rid, model.name, created, delta, finish))
            d = {"content": delta} if delta or finish is None else {}
            return oa.sse(oa.chat_chunk(rid, model.name, created, d, finish))

        try:
            if kind == "chat":
                await resp.write(oa.sse(oa.chat_chunk(rid, model.name, created, {"role": "assistant", "content": ""}, None)))
            try:
                async for delta in gen:
                    await resp.write(chunk(delta, None))
            except WarmServeError as e:
                # Headers are gone: the error travels as an SSE event, which OpenAI clients raise as APIError.
                await resp.write(oa.sse(oa.error_from_exception(e)[1]))
                await resp.write(oa.SSE_DONE)
                return resp
            await resp.write(chunk("", gen.finish_reason))
            if req.stream_options is not None and req.stream_options.include_usage:
                obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
                await resp.write(oa.sse(oa.usage_chunk(rid, model.name, created, obj, n_prompt, gen.completion_tokens)))
            await resp.write(oa.SSE_DONE)
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; the finally below frees the request on its worker
        finally:
            gen.abort()
        return resp
