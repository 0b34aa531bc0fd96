"""A real aiohttp server on a thread of its own, for bench tests that stand a local server in for a cluster or an
`--endpoint`: it binds 127.0.0.1 on a free port and is torn down with its loop closed (else the loop is collected
unclosed later, a ResourceWarning in another test)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass


@dataclass
class Served:
    url: str
    loop: asyncio.AbstractEventLoop


@contextlib.contextmanager
def serve_in_thread(routes):
    """Serve `routes` ((method, path, handler) triples) until the block ends; yields the url and the loop."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    box: dict = {}
    started = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        app = web.Application()
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        box["runner"] = web.AppRunner(app, access_log=None)
        loop.run_until_complete(box["runner"].setup())
        loop.run_until_complete(web.TCPSite(box["runner"], "127.0.0.1", 0).start())
        box["url"] = f"http://127.0.0.1:{box['runner'].addresses[0][1]}"
        started.set()
        loop.run_forever()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert started.wait(10), "the stub server did not start within 10 s"
    try:
        yield Served(box["url"], loop)
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
        if not th.is_alive():
            loop.close()


async def stream_completion(request, text: str = "t"):
    """Answer an OpenAI completions request at once: one chunk of `text` and the usage the request asked for."""
    from aiohttp import web

    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    msg = {"choices": [{"index": 0, "text": text, "finish_reason": "length"}],
           "usage": {"completion_tokens": body["max_tokens"]}}
    await resp.write(f"data: {json.dumps(msg)}\n\ndata: [DONE]\n\n".encode())
    return resp
