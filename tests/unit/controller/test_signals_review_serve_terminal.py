"""``serve_terminal``: which signals stop `warmserve serve`, and its lines once the terminal is gone. Found in
review: SIGHUP (the terminal closed) killed the server on the spot, and a line to a stderr whose reader had gone
raised BrokenPipeError before the drain began."""

from __future__ import annotations

import os
import signal

from warmserve.controller.serve_terminal import say, stop_signals


def test_sighup_is_left_alone_when_serve_was_started_under_nohup():
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        ignored = stop_signals()
    finally:
        signal.signal(signal.SIGHUP, before)
    assert signal.SIGHUP not in ignored and {signal.SIGINT, signal.SIGTERM} <= set(ignored)
    assert signal.SIGHUP in stop_signals()


def test_a_line_to_a_stderr_whose_reader_is_gone_is_dropped_and_leaves_nothing_to_flush(monkeypatch):
    read, write = os.pipe()
    os.close(read)
    stream = os.fdopen(write, "w")
    try:
        monkeypatch.setattr("sys.stderr", stream)
        say("shutting down")  # EPIPE: Python ignores SIGPIPE
        say("stopped")
        stream.flush()  # what the exit does last: it failed on the bytes left, and the exit status became 120
    finally:
        monkeypatch.undo()
        stream.close()
