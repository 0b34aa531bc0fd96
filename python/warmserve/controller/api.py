"""The OpenAI-compatible HTTP front end (aiohttp): /v1/completions, /v1/chat/completions, /v1/models, /health,
/metrics. It parses the OpenAI bodies and writes the answers, as one JSON body or as server-sent events; prompt
preparation and the text of a generation are the front end's (frontend.py), shared with ``warmserve.Cluster``."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from warmserve.controller import openai_api as oa, prechecks
from warmserve.controller import queue_wait, textstream, tokenize_api
from warmserve.controller.admission import HttpSlots
from warmserve.controller.answer_log import ServerErrorLog
from warmserve.controller.api_key import key_bytes, key_matches
from warmserve.controller.body import BodyTimeoutError, expect_handler, read_body
from warmserve.controller.cors import Cors, is_preflight
from warmserve.controller.errors import UnauthorizedError
from warmserve.controller.frontend import Choices, TextGeneration, aprepare, check_max_tokens
from warmserve.controller.log_text import field_value, printable
from warmserve.controller.metrics import CONTENT_TYPE
from warmserve.controller.stall import StallWatch
from warmserve.errors import InvalidArgumentError, UnknownModelError, WarmServeError
from warmserve.protocol import SEED_MAX

log = logging.getLogger("warmserve.controller")

_JSON = "application/json"
#: When the request reached the controller (time.monotonic()), for Server-Timing.
_T0 = web.RequestKey("warmserve_t0", float)
#: What the access log line reports about a request (model, tokens, TTFT, id), filled in by its handler.
_INFO = web.RequestKey("warmserve_info", dict)
access_log = logging.getLogger("warmserve.access")
#: The response header with the request's id: the id of its access-log line, and of a generation's body.
REQUEST_ID_HEADER = "x-request-id"
#: The longest X-Request-Id a client may send and see taken as the request's id, characters.
MAX_CLIENT_ID_CHARS = 128
#: Retry-After of a 429, 503 (overload, no worker yet, a drain; /health's 503 too) or 504 (no instance took the
#: request, or none gave it a token, within request_timeout_s): seconds a client should wait before retrying. Short:
#: a drain's is answered by a server going away, whose clients retry on another behind it. RFC 9110 (10.2.3) lets any
#: answer carry it and gives it a meaning of its own on 503 and 3xx only, but clients honour it on whatever status
#: they retry (OpenAI's SDKs on 408, 409, 429 and every 5xx); a 504 without it had them back off blind (found in the
#: overload review: the timeouts of a flood were the one overload answer without it).
RETRY_AFTER_S = 1
#: The status logged for a request whose client hung up before its answer (nginx's "client closed request").
CLIENT_CLOSED = 499
#: Largest request body accepted, also once decompressed; a larger one is a 413 that names this limit.
MAX_BODY_BYTES = 16 << 20
#: The rejections' route label of an error answer no route could be matched for: no resource has its path.
UNMATCHED = "unmatched"
#: Paths outside /v1 that need the API key too: the controller's view, and the tokenizer routes (tokenize_api.py).
_KEYED = ("/stats", "/tokenize", "/detokenize")
#: The route label of aiohttp's own answer to a request it could not parse (a 400 before any middleware runs).
UNPARSED = "unparsed"
#: Longest a write of an answer (a stream's event, or a whole body) may wait with its client taking no bytes (the
#: socket's buffers full): past it the client is taken to have stopped reading, and its connection is closed
#: (``stall.StallWatch``).
STREAM_WRITE_TIMEOUT_S = 60.0
#: More than an answer's headers take (ours, with an Origin echoed): room for them in ``_cannot_wait``.
_HEADERS_ROOM = 16 << 10
#: Chat bodies larger than this are parsed on a worker thread, after a check of their message count
#: (``_parse_chat``); smaller ones on the event loop, where they take well under a millisecond.
INLINE_BODY_BYTES = 256 << 10
def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=oa._enc.encode(body), content_type=_JSON)


def _error(e: BaseException) -> web.Response:
    status, body = oa.error_from_exception(e)
    resp = _json(status, body)
    if status in (429, 503, 504):  # 504: see RETRY_AFTER_S; a queue's refusal names its own (queue_wait)
        resp.headers["Retry-After"] = str(getattr(e, "retry_after_s", None) or RETRY_AFTER_S)
    return resp


def _request_id(given: str | None) -> str:
    """The request's id: the client's X-Request-Id when it sends a usable one, as vLLM takes it (found in review:
    gateways that match their logs by it found it nowhere), else a fresh one. Usable: 1 to MAX_CLIENT_ID_CHARS
    visible ASCII characters, which a response header and a log line carry as they are; any other is replaced."""
    if given and len(given) <= MAX_CLIENT_ID_CHARS and all("!" <= c <= "~" for c in given):
        return "req-" + given
    return oa.new_id("req")


async def _parsed(request, controller, parse, body: bytes, off_loop: bool = False):
    """``parse(body)`` (on a worker thread ``off_loop``); when it refuses the body, the access log still names the
    model the body asks for, where it can be read (found in review: a 400 over a bad field logged model=-). A
    min_tokens above max_tokens that alone leaves the model no room for a prompt is refused as over the context
    (code context_length_exceeded), as it is where no limit is set: found in review, a completion's min_tokens past
    the context, above the default max_tokens of 16, had no code where a chat's had it."""
    try:
        return await asyncio.to_thread(parse, body) if off_loop else parse(body)
    except InvalidArgumentError as e:
        name = request[_INFO]["model"] = oa.model_named(body) or "-"
        least = e.fields.get("min_tokens") if e.fields.get("param") == "min_tokens" else None
        if isinstance(least, int) and name in controller.model_names():
            check_max_tokens(controller.model(name), least, "min_tokens")
        raise


def _prefixed(rid: str, prefix: str) -> str:
    """The request id ``req-...`` with another prefix (``cmpl``, ``chatcmpl``): the same id as the API names it."""
    return prefix + rid[rid.index("-"):]


class Api:
    def __init__(self, controller, api_key: str = "", max_concurrent_requests: int = 1024, allowed_origins=()):
        from warmserve.config import check_api_key

        check_api_key(api_key, "the API key")  # one never matched: see check_api_key
        self.controller = controller
        self.api_key = api_key
        self._key = key_bytes(api_key)  # once: check_api_key refused any key it cannot encode
        self._cors = Cors(allowed_origins) if allowed_origins else None  # None: no CORS headers (the default)
        self._slots = HttpSlots(max_concurrent_requests)  # per model: a flood of some must not 429 the others
        self.created = int(time.time())
        self._server_errors = ServerErrorLog()  # 503s and 504s come in floods: rate-limited there

    def app(self) -> web.Application:
        # handler_args: whatever the runner says (serve.py turns aiohttp's access log off), the hook that counts
        # aiohttp's own answers is on (found in review: a malformed request's 400 was no rejection). Its decoding
        # of compressed bodies is off: it refused an encoding it lacks (br, zstd) with a text 400 before any
        # middleware ran, and a body that failed to decode was a 500; ``body.read_body`` decodes them.
        # CORS inside _guard: a preflight has its id and access-log line; its headers go on every answer, streams too.
        middlewares = [self._guard] + ([self._cors.middleware] if self._cors else [])
        app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES, handler_args={
            "access_log_class": _own_answers(self), "access_log": access_log, "auto_decompress": False})
        if self._cors:
            app.on_response_prepare.append(self._cors.on_prepare)
        expect = expect_handler(MAX_BODY_BYTES, self._authorized)  # routes that read a body
        app.router.add_post("/v1/completions", self.completions, expect_handler=expect)
        app.router.add_post("/v1/chat/completions", self.chat, expect_handler=expect)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{name:.+}", self.model)  # Hugging Face names have a "/" in them
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/tokenize", self.tokenize, expect_handler=expect)  # vLLM's paths, outside /v1
        app.router.add_post("/detokenize", self.detokenize, expect_handler=expect)
        return app

    def _authorized(self, request: web.Request) -> bool:
        """Whether the request may be served as to its API key: none is set, its path needs none, or it sent it."""
        if not self.api_key or not (request.path.startswith("/v1/") or request.path in _KEYED):
            return True
        return key_matches(request.headers.get("Authorization", ""), self._key)

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        request[_T0] = time.monotonic()
        # One id per request, assigned first: every response carries it (REQUEST_ID_HEADER), so does the access
        # log line, and a generation's body as its own id (found in review: no id ever reached the client).
        info = request[_INFO] = {"id": _request_id(request.headers.get(REQUEST_ID_HEADER))}
        close = False
        preflight = self._cors is not None and is_preflight(request)  # a browser sends no API key with one
        try:
            if not preflight and not self._authorized(request):
                raise UnauthorizedError("missing or wrong API key: send 'Authorization: Bearer <key>'")
            resp = await handler(request)
            if preflight:  # labelled by its path's route: no route takes OPTIONS
                info["route"] = await _route_of_path(request)
        except web.HTTPRequestEntityTooLarge as e:  # found in review: the 413 did not say what the limit is
            resp = _json(e.status, oa.error_body(
                e.status, f"the request body is larger than the {MAX_BODY_BYTES} bytes ({MAX_BODY_BYTES >> 20} MiB) "
                          f"this server accepts: send a smaller body"))
            close = True  # the rest of the body is not wanted: aiohttp would read on for it (its lingering)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            resp = _json(e.status, oa.error_body(e.status, f"{e.reason}: {request.method} {request.path}"))
            if "Allow" in e.headers:  # a 405 names the methods the path takes (RFC 9110; lost here before)
                resp.headers["Allow"] = e.headers["Allow"]
            if e.status == 405:  # aiohttp matched its path, not its method: no route in its match_info
                info["route"] = await _route_of_path(request)
        except BodyTimeoutError as e:
            resp, close = _error(e), True
        except WarmServeError as e:
            resp = _error(e)
        except (ConnectionError, asyncio.CancelledError):
            # The client hung up (aiohttp cancels its handler): the request is still logged (found in review:
            # such requests were missing from the access log), then the cancellation goes on.
            self._log(request, CLIENT_CLOSED)
            raise
        except Exception as e:  # a bug: the client still gets an OpenAI-shaped 500, the log gets the trace
            log.exception("%s %s failed (request %s)", request.method, printable(request.rel_url.raw_path), info["id"])
            resp = _error(e)
        status = resp.status
        if not resp.prepared:  # a stream sent its headers, the id among them, when it began
            resp.headers[REQUEST_ID_HEADER] = info["id"]
            try:
                await _write_whole(request, resp, info["id"], close)
            except ConnectionError:  # aiohttp's own write of it then fails too, and ends the connection quietly
                status = CLIENT_CLOSED
            except asyncio.CancelledError:  # the client hung up (or stopped reading) while it was written
                self._log(request, CLIENT_CLOSED)
                raise
        self._log(request, status)
        return resp

    def _log(self, request: web.Request, status: int) -> None:
        """The access-log line, and the rejection counter for an error status (not for a client that left, nor for
        /health's 503: a probe's answer while the server drains or has no worker, not a refused request; found in
        review: each probe during a drain was a WARNING and a rejection). The path is logged as it came on the
        wire, with control characters escaped, and the model (the client's text) escaped as a field's value
        (``log_text.field_value``), so a client can write neither lines nor fields of its own (found in review: a
        %0A in the path wrote a line)."""
        info = request[_INFO]
        status = info.get("status", status)
        route = request.match_info.route.resource
        # not the raw path: bounded label values
        route = info.get("route") or (route.canonical if route is not None else UNMATCHED)
        probe = route == "/health"
        path = printable(request.rel_url.raw_path)
        if status >= 400 and status != CLIENT_CLOSED and not probe and not info.get("status_after_200"):
            self._rejected(status, route)
        ttft, queue = info.get("ttft_s"), info.get("queue_s")
        if access_log.isEnabledFor(logging.INFO):  # its fields are not made for a line not written (--log-level)
            access_log.info(
                '%s %s model=%s status=%d prompt_tokens=%s completion_tokens=%s ttft_ms=%s queue_ms=%s total_ms=%.1f '
                'id=%s', request.method, path, field_value(info.get("model", "-")), status,
                info.get("prompt_tokens", "-"), info.get("completion_tokens", "-"),
                f"{ttft * 1e3:.1f}" if ttft is not None else "-", f"{queue * 1e3:.1f}" if queue is not None else "-",
                (time.monotonic() - request[_T0]) * 1e3, info["id"])
        if status >= 500 and not probe:  # found in review: a stream's error event read as an answer of that status
            self._server_errors(request.method, path, status, info["id"], bool(info.get("status_after_200")))

    def _rejected(self, status: int, route: str) -> None:
        metrics = getattr(self.controller, "metrics", None)
        if metrics is not None:
            metrics.rejected_request(status, route)

    # ------------------------------------------------------------------------------------------- simple routes

    async def models(self, request):
        names = self.controller.model_names()
        return _json(200, oa.models_body([self.controller.model(n) for n in names], self.created))

    async def model(self, request):
        return _json(200, oa.model_card(self.controller.model(request.match_info["name"]), self.created))

    async def health(self, request):
        h = self.controller.health()
        resp = _json(200 if h["ok"] else 503, h)
        if not h["ok"]:  # as every other 503, and the starting site's /health, have it (a drain's had none)
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp

    async def stats(self, request):
        """The controller's view as JSON: workers (pool pages, models), instances, prewarms, queues."""
        return _json(200, self.controller.stats())

    async def tokenize(self, request):
        return _json(200, await tokenize_api.tokenize(self.controller, await read_body(request, MAX_BODY_BYTES)))

    async def detokenize(self, request):
        return _json(200, await tokenize_api.detokenize(self.controller, await read_body(request, MAX_BODY_BYTES)))

    async def metrics(self, request):
        return web.Response(body=self.controller.metrics.registry.render().encode(),
                            headers={"Content-Type": CONTENT_TYPE})

    # --------------------------------------------------------------------------------------------- generation

    async def completions(self, request: web.Request):
        body = await read_body(request, MAX_BODY_BYTES)
        if len(body) <= INLINE_BODY_BYTES:
            req, sampling = await _parsed(request, self.controller, oa.parse_completion, body)
        else:  # as a large chat's (_parse_chat): found in review, a batch of 5M prompts took 7.6 s of the loop
            head = await asyncio.to_thread(prechecks.completion_head, body)
            if head is not None:
                await self._precheck(request, head, prechecks.check_prompt_shape)
            req, sampling = await _parsed(request, self.controller, oa.parse_completion, body, off_loop=True)
        request[_INFO]["model"] = req.model  # for the access log, also when the model does not exist
        model = self.controller.model(req.model)
        ids = await aprepare(model, req.prompt, max_tokens=sampling.max_tokens,
                             max_tokens_param=oa.max_tokens_param(req))
        sampling = oa.fill_max_tokens(req, sampling, model.max_context, len(ids), model.default_max_tokens)
        return await self._generate(request, "completion", req, model, ids, sampling)

    async def chat(self, request: web.Request):
        req, sampling, messages = await self._parse_chat(request, await read_body(request, MAX_BODY_BYTES))
        model = self.controller.model(req.model)
        ids = await aprepare(model, messages=messages, max_tokens=sampling.max_tokens,
                             max_tokens_param=oa.max_tokens_param(req))
        sampling = oa.fill_max_tokens(req, sampling, model.max_context, len(ids), model.default_max_tokens)
        return await self._generate(request, "chat", req, model, ids, sampling)

    async def _parse_chat(self, request: web.Request, body: bytes):
        """The chat request, its sampling and its messages as dicts. A body over INLINE_BODY_BYTES is parsed on a
        worker thread, once its message count is known to fit the model's context (each message costs the prompt
        at least one token of its template). Found in review: a 16 MiB body of 1M empty messages took 3 s of the
        event loop (decoded, checked and made dicts there), stalling every other client; a thread alone would not
        do, as the JSON decoder holds the GIL throughout, so such a body is refused before its messages are
        decoded."""
        info = request[_INFO]
        if len(body) <= INLINE_BODY_BYTES:
            req, sampling = await _parsed(request, self.controller, oa.parse_chat, body)
            info["model"] = req.model
            return req, sampling, oa.chat_dicts(req)
        head = await asyncio.to_thread(prechecks.chat_head, body)
        if head is not None:  # else the body is not even a chat's: parse_chat says why
            await self._precheck(request, head, prechecks.check_message_count)
        req, sampling, messages = await _parsed(request, self.controller, oa.chat_parts, body, off_loop=True)
        info["model"] = req.model
        return req, sampling, messages

    async def _precheck(self, request: web.Request, head, check) -> None:
        """``check`` (of ``prechecks``) of a large body's list (``head``: its model and the list's JSON) against
        its model's context, on a thread. For a model that does not exist nothing is checked: its 404 comes after
        the body's own errors, as for a small body."""
        request[_INFO]["model"] = head[0]
        try:
            max_context = self.controller.model(head[0]).max_context
        except UnknownModelError:
            return
        await asyncio.to_thread(check, head[1], max_context)

    async def _generate(self, request, kind, req, model, ids, sampling):
        sampling = oa.with_model_defaults(sampling, model.sampling_defaults, lambda field: getattr(req, field, None))
        n = req.n
        served = self.controller.model_names()
        most = self._slots.most_for_one(len(served))
        if n > most:  # a 429 would tell the client to retry what can never be admitted
            raise InvalidArgumentError(
                f"n={n} choices are more than the {most} requests this server runs at once for one model: lower n "
                f"or raise server.max_concurrent_requests", param="n", limit=most)
        self._slots.check(model.name, n, served)
        queue_wait.check(self.controller, model.name)  # a wait past the timeout refused now, not as a 504 then
        info = request[_INFO]
        rid = info["id"] = _prefixed(info["id"], "cmpl" if kind == "completion" else "chatcmpl")
        info.update(model=model.name, prompt_tokens=len(ids))
        # echo (completions): the prompt's text, as sent or decoded from its token ids, before each choice's text;
        # told by the flag, not by the text, which may be "" (special tokens only) while its logprobs are still due
        echo = kind == "completion" and bool(req.echo)
        prefix = "" if not echo else req.prompt if isinstance(req.prompt, str) else model.tokenizer.decode(ids)
        # max_tokens 0 with echo scores the prompt (OpenAI's legacy completions, lm-eval's loglikelihood): the one
        # token generated for it (parse_completion) is left out of the answer
        score_only = echo and req.max_tokens == 0
        self._slots.take(model.name, n)
        # n choices are n sequences of their own (the prompt's KV is computed once per choice), each with its own
        # seed when the request gives one, so that seeded choices differ and repeat.
        gens: list[TextGeneration] = []
        try:
            for i in range(n):
                handle = await self.controller.submit(model.name, ids, _choice_sampling(sampling, i),
                                                      siblings=[g.req for g in gens])
                gens.append(TextGeneration(handle, model.tokenizer.decode, sampling.stop, _token_text(model)))
            want_logprobs = sampling.logprobs is not None
            # Streamed, each piece's logprobs are taken with it; whole, all at the end.
            choices = Choices(gens, logprobs=req.stream and want_logprobs)
            if req.stream:
                return await self._stream(request, kind, req, model, choices, ids, rid, echo, prefix, want_logprobs)
            texts = await choices.collect()
            decode = _token_text(model)
            prompt_starts = _prompt_starts(model, req.prompt, ids) if echo and want_logprobs else []
            items = []
            for i, (g, text) in enumerate(zip(gens, texts)):
                lp = None
                if want_logprobs:
                    entries, starts = g.take_logprobs_and_offsets()
                    if score_only:
                        entries, starts = [], []
                    if kind == "chat":
                        lp = oa.chat_logprobs(entries, decode, _token_bytes(model))
                    else:  # echo: the prompt's tokens first, then the choice's
                        lp = oa.completion_logprobs(
                            oa.prompt_logprob_entries(ids, g.req.prompt_logprobs, decode) + entries if echo
                            else entries, decode, _echoed(prompt_starts, prefix) + [len(prefix) + o for o in starts])
                items.append((oa.completion_choice if kind == "completion" else oa.chat_choice)(
                    i, prefix if score_only else prefix + text, "length" if score_only else g.finish_reason, lp))
            body = (oa.completion_body if kind == "completion" else oa.chat_body)(
                rid, model.name, "", "", len(ids), 0 if score_only else choices.completion_tokens, choices=items)
            resp = _json(200, body)
            handle = gens[0].req
            timing = handle.server_timing() if n == 1 else ""
            if timing:
                # The controller's own time on this request: its handler's span minus the worker's share.
                ctl = time.monotonic() - request[_T0] - (handle.end_s - handle.sent_s)
                resp.headers["Server-Timing"] = f"{timing}, controller;dur={ctl * 1e3:.3f}"
            return resp
        except WarmServeError:
            info["failed"] = True
            raise
        finally:
            # the choices still running end: the client went away, or (found in review: counted as client aborts)
            # one of them failed or was refused
            for g in gens:
                g.abort("error" if info.get("failed") else "abort")
            self._slots.give(model.name, n)
            _account(info, request, gens)

    async def _stream(self, request, kind, req, model, choices: Choices, prompt_ids: list[int], rid: str,
                      echo: bool, prefix: str, want_logprobs: bool):
        created = int(time.time())
        # The status waits for the first piece of text: a failure before it (every worker lost, a queue timeout,
        # a worker's refusal) is a real HTTP status with the OpenAI error body, not an event after a 200.
        try:
            first = await choices.__anext__()
        except StopAsyncIteration:
            first = None
        except WarmServeError as e:
            return _error(e)
        # the charset said: found in review, `requests` decoded an event stream without one as ISO-8859-1
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                       "Cache-Control": "no-cache", REQUEST_ID_HEADER: rid})
        await resp.prepare(request)
        decode = _token_text(model)
        token_bytes = _token_bytes(model)
        with_usage = req.stream_options is not None and req.stream_options.include_usage

        def sse(body: dict) -> bytes:
            """A chunk event; with include_usage, every chunk but the last carries "usage": null (OpenAI's
            contract; found in review: the key was missing)."""
            return oa.sse({**body, "usage": None} if with_usage else body)

        def chunk(i: int, delta: str, finish, taken):
            entries, starts = taken if want_logprobs else (None, None)
            if kind == "completion":
                lp = oa.completion_logprobs(entries, decode, [len(prefix) + o for o in starts]) \
                    if want_logprobs else None
                return sse(oa.completion_chunk(rid, model.name, created, delta, finish, index=i, logprobs=lp))
            d = {"content": delta} if delta or finish is None else {}
            lp = oa.chat_logprobs(entries, decode, token_bytes) if want_logprobs else None
            return sse(oa.chat_chunk(rid, model.name, created, d, finish, index=i, logprobs=lp))

        echoed = [not echo] * len(choices.gens)
        prompt_starts = _prompt_starts(model, req.prompt, prompt_ids) if echo and want_logprobs else []

        def echo_event(i: int) -> bytes:
            """The echoed prompt of choice i, sent with its first event: its prompt logprobs come with its first
            token."""
            echoed[i] = True
            lp = None
            if want_logprobs:
                lp = oa.completion_logprobs(oa.prompt_logprob_entries(prompt_ids, choices.gens[i].req.prompt_logprobs,
                                                                      decode), decode, _echoed(prompt_starts, prefix))
            return sse(oa.completion_chunk(rid, model.name, created, prefix, None, index=i, logprobs=lp))

        def event(ev) -> bytes:
            i, piece, taken = ev
            head = b"" if echoed[i] else echo_event(i)
            return head + (chunk(i, piece, None, taken) if piece is not None
                           else chunk(i, "", choices.gens[i].finish_reason, taken))

        watch = StallWatch(request, rid, STREAM_WRITE_TIMEOUT_S)
        try:
            for i in range(len(choices.gens) if kind == "chat" else 0):
                await watch.write(resp, sse(oa.chat_chunk(rid, model.name, created,
                                                          {"role": "assistant", "content": ""}, None, index=i)))
            try:
                if first is not None:
                    await watch.write(resp, event(first))
                async for ev in choices:
                    await watch.write(resp, event(ev))
            except ConnectionError:
                raise  # the client hung up: a 499 (below), no error event to write and no bug to log
            except Exception as e:
                # Headers are gone: the error travels as an SSE event, which OpenAI clients raise as APIError. Its
                # status goes to the access log; no rejection is counted, the answer's status was 200 (found in
                # review: the rejections panel showed 503s no client saw). A bug (not a WarmServeError) too: found
                # in review, it reached _guard, whose fresh 500 could not be sent on the started stream, and the
                # client waited with its connection open for bytes that never came.
                if not isinstance(e, WarmServeError):
                    log.exception("%s %s failed mid-stream (request %s)", request.method, request.path, rid)
                status, body = oa.error_from_exception(e)
                request[_INFO].update(status=status, failed=True, status_after_200=True)
                await watch.write(resp, oa.sse(body))
                await watch.write(resp, oa.SSE_DONE)
                return resp
            if with_usage:
                obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
                await watch.write(resp, oa.sse(oa.usage_chunk(rid, model.name, created, obj, len(prompt_ids),
                                                               choices.completion_tokens)))
            await watch.write(resp, oa.SSE_DONE)
        except ConnectionError:
            request[_INFO]["status"] = CLIENT_CLOSED  # for the access log only
        finally:
            watch.close()
            choices.abort()
        return resp


async def _write_whole(request: web.Request, resp: web.StreamResponse, rid: str, close: bool) -> None:
    """Writes an answer of one body as aiohttp would once its handler returned, but under a ``StallWatch``, as a
    stream's writes are: found in review, aiohttp's write has no timeout, and a client that never read an answer
    larger than its socket's buffers (n choices, logprobs) kept its connection, and the body unsent, for as long as
    it kept its socket open. With ``close``, the connection is closed after it (the transport sends what it holds
    first): the rest of the request's body may never come, and aiohttp would otherwise read on for it up to 10 s
    (its lingering) before closing."""
    if close:
        resp.force_close()
    await resp.prepare(request)
    size = resp.content_length or 0
    if _cannot_wait(request, size):
        await resp.write_eof()
    else:
        watch = StallWatch(request, rid, STREAM_WRITE_TIMEOUT_S)
        try:
            await watch.wait(resp.write_eof(), size)
        finally:
            watch.close()
    if close and request.protocol is not None:
        request.protocol.force_close()


def _cannot_wait(request: web.Request, size: int) -> bool:
    """Whether writing an answer of ``size`` bytes (with its headers) cannot wait for its client: on a connection
    whose writes are not paused, an answer that stays under the transport's high-water mark with what it holds does
    not pause them, and its write returns at once. Such an answer (most: errors, /health, /v1/models) goes without
    a ``StallWatch``, whose timer took some 5% of a small answer's time on the event loop (8 us of 150)."""
    transport, protocol = request.transport, request.protocol
    if transport is None or protocol is None or protocol.writing_paused:
        return False
    return transport.get_write_buffer_size() + size + _HEADERS_ROOM <= transport.get_write_buffer_limits()[1]


async def _route_of_path(request: web.Request) -> str:
    """The route template whose path the request's is, whatever its method (a 405's), or UNMATCHED: found in
    review, a 405 was labelled as a 404 for a path that does not exist."""
    for resource in request.app.router.resources():
        _, allowed = await resource.resolve(request)
        if allowed:  # the path matched (with the method, the answer would have been no 405)
            return resource.canonical
    return UNMATCHED


def _own_answers(api: Api) -> type[AbstractAccessLogger]:
    """aiohttp's access-log hook for ``api``'s application: it sees every answer, also those aiohttp gives
    itself before any middleware runs (a 400 for a request it could not parse: a bad request line or header),
    which ``_guard`` never sees; those are counted as rejections, route UNPARSED. The rest are ``_guard``'s (its
    access log and rejections: marked with _INFO)."""

    class OwnAnswers(AbstractAccessLogger):
        def log(self, request, response, time: float) -> None:
            if response.status >= 400 and _INFO not in request:
                api._rejected(response.status, UNPARSED)

    return OwnAnswers


def _token_text(model):
    """A logprob's token text: the token's decode with special tokens kept, as vLLM labels logprobs (found in review:
    "<|im_end|>" ending a generation read "", and a completion's top_logprobs kept one special alternative under "")."""
    return getattr(model.tokenizer, "token_text", model.tokenizer.decode)


def _token_bytes(model):
    """The tokenizer's raw bytes of a token, when it has them (the engine's Tokenizer does)."""
    return getattr(model.tokenizer, "token_bytes", None)


def _prompt_starts(model, prompt, ids: list[int]) -> list[int]:
    """Where the echoed prompt's tokens begin in the echoed text. A string prompt is echoed as sent (as vLLM and
    OpenAI echo it), so its offsets are its encoding's, into that string (found in review: they were taken from
    the tokens' decode, 12 characters early after a skipped "<|im_start|>", off after an NFC-normalized "e\u0301");
    token ids are echoed as their decode, and their offsets are in it."""
    offsets = getattr(model.tokenizer, "token_offsets", None) if isinstance(prompt, str) else None
    found = offsets(prompt, ids) if offsets is not None else None
    return found if found is not None else textstream.token_starts(ids, model.tokenizer.decode)


def _echoed(prompt_starts: list[int], prefix: str) -> list[int]:
    """Where the echoed prompt's tokens begin in the echoed text, which may be the client's own string rather
    than the tokens' decode: never past its end."""
    return [min(o, len(prefix)) for o in prompt_starts]


def _choice_sampling(sampling, i: int):
    """Choice i's sampling: the request's, with seed + i when it has a seed (wrapping within 64 bits)."""
    if i == 0 or sampling.seed is None:
        return sampling
    seed = sampling.seed + i
    if seed > SEED_MAX:
        seed -= 1 << 64
    return msgspec.structs.replace(sampling, seed=seed)


def _account(info: dict, request, gens) -> None:
    """What the access log reports about a generation: tokens, the first token's time from arrival, and the
    longest time one of its choices waited in the controller's queue before its first send (the longest: one
    choice held behind a cold start holds the answer; choices never sent are left out, as from TTFT)."""
    info["completion_tokens"] = sum(g.completion_tokens for g in gens)
    firsts = [g.req.first_token_s for g in gens if g.req.first_token_s is not None]
    if firsts:
        info["ttft_s"] = min(firsts) - request[_T0]
    queued = [g.req.queue_s for g in gens if g.req.queue_s is not None]
    if queued:
        info["queue_s"] = max(queued)
