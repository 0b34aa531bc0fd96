"""A local aiohttp server whose /v1/completions is one handler, for the replay client's tests."""

from __future__ import annotations

from warmserve.workload.replay_client import ClientConfig, replay


async def replay_against(handler, reqs, drain_s: float, progress=None):
    """``replay`` of ``reqs`` against a server on 127.0.0.1 answering /v1/completions with ``handler``."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        cfg = ClientConfig(f"http://127.0.0.1:{runner.addresses[0][1]}", drain_s=drain_s)
        return await replay(cfg, reqs, progress=progress)
    finally:
        await runner.cleanup()
