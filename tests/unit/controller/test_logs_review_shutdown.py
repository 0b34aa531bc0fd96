"""A shutdown that fails requests says how many and why (the review of the logs, 2026-12-06): before, the requests
cut when the drain ran out (or was skipped) left no line in the controller's log, only their clients' 503s. A
scripted worker that never answers its Generate keeps one request running."""

import logging

import pytest

from warmserve.protocol import SamplingParams

from controller_harness import MODEL, Peer, make_controller, run, until


@pytest.mark.parametrize("drain", [True, False])
def test_requests_cut_at_shutdown_are_counted_with_why(model, caplog, drain):
    caplog.set_level(logging.INFO, logger="warmserve.controller")

    async def main():
        c = make_controller(model, drain_timeout_s=0.3)
        ep = await c.start()
        peer = Peer(ep)
        peer.hold_generate = True  # the request runs until the shutdown
        try:
            await c.wait_for_workers(1, 5)
            req = c.submit_nowait(MODEL, [1, 2, 3], SamplingParams(max_tokens=3))
            assert await until(lambda: any(type(m).__name__ == "Generate" for m in peer.got), 5)
            await c.close(drain=drain)
            assert req.done
        finally:
            peer.close()

    run(main())
    lines = [r for r in caplog.records if r.name == "warmserve.controller" and r.getMessage().startswith("shutdown")]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in caplog.records]
    msg = lines[0].getMessage()
    assert "1 request(s) still running and 0 waiting were failed: " in msg, msg
    why = "the drain's 0.3 s ran out (controller.drain_timeout_s" if drain else "stopped without a drain"
    assert why in msg, msg
