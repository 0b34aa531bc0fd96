"""ServerErrorLog (controller/answer_log.py): the WARNING of a 503 or 504 answer at most once per interval per
status, with the count of like answers since; any other 5xx (a bug's 500) a line each, as before."""

from __future__ import annotations

import logging

from warmserve.controller.answer_log import ServerErrorLog


def test_overload_answers_are_summed_per_status_and_other_errors_logged_each(caplog):
    now = [100.0]
    errors = ServerErrorLog(every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="warmserve.controller"):
        for i in range(50):
            errors("POST", "/v1/completions", 503, f"r{i}", False)
            errors("POST", "/v1/completions", 504, f"t{i}", True)
        errors("POST", "/v1/completions", 500, "bug1", False)
        errors("POST", "/v1/completions", 500, "bug2", False)
        now[0] += 12.0
        errors("POST", "/v1/completions", 503, "r50", False)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5, lines
    assert "answered 503 (request r0); 1 answer(s) of status 503 (" in lines[0]
    assert "answered 200, then its stream ended with an error event of 504 (request t0)" in lines[1]
    assert lines[2:4] == ["POST /v1/completions answered 500 (request bug1)",
                          "POST /v1/completions answered 500 (request bug2)"]
    # the 49 held back in the first window and this one, said with the time they span
    assert "(request r50); 50 answer(s) of status 503 in the last 12 s" in lines[4], lines[4]
