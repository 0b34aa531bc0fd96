"""How ``prewarms.start_words`` words a start's weights in its instance's ready line (found by mutation testing): a
cold start's own load ("prewarm miss") says the bytes and seconds its worker reported. A real Controller with a
scripted peer on a real ZeroMQ socket."""

import logging

from warmserve.protocol import SamplingParams

from controller_harness import MODEL, TablePeer, admitted, collect, make_controller, run


def test_a_cold_starts_ready_line_says_what_its_load_took(model, caplog):
    """The worker answers the cold start's Prewarm with 1 byte loaded in 0.25 s: the ready line reads "prewarm
    miss: loaded 0.0 MiB in 0.25 s"."""
    async def main():
        c = make_controller(model)
        async with admitted(c, peer_cls=TablePeer, load_s=0.25):
            assert await collect(c.submit_nowait(MODEL, [1, 2], SamplingParams(max_tokens=3))) == [5, 6, 7]

    with caplog.at_level(logging.INFO, logger="warmserve"):
        run(main())
    ready = [r.getMessage() for r in caplog.records if " ready on " in r.getMessage()]
    assert len(ready) == 1 and ready[0].endswith("(prewarm miss: loaded 0.0 MiB in 0.25 s)"), ready
