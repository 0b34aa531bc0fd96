"""bench/gpu_graphs.py's text report, from its JSON on the CPU: the H200 run of 2026-12-04 (15:32 UTC) gives back
the text that run printed, and a run stopped by its time limit (SIGTERM: ``Stopped``) reports the parts it finished
and says it was stopped instead of losing them."""

from __future__ import annotations

import copy
import importlib.util
import json
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("gpu_graphs", ROOT / "bench" / "gpu_graphs.py")
GG = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(GG)

RUN = json.loads((ROOT / "bench" / "engine" / "graphs-h200-1b-2026-12-04-run4.json").read_text())
TEXT = (ROOT / "bench" / "gpu-runs" / "2026-12-04" / "run4-graphs-cuda.txt").read_text()


def test_the_report_of_a_stored_run_is_the_text_it_printed():
    assert "\n".join(GG.text_lines(RUN)) + "\n" == TEXT


def test_a_stopped_run_reports_what_it_finished_and_that_it_stopped():
    res = copy.deepcopy(RUN)
    for later in ("profile", "blas", "gemv", "phases", "launch_savings", "lookahead", "lookahead_phases"):
        res.pop(later)
    res["stopped"] = "stopped by signal 15"
    lines = GG.text_lines(res)
    assert lines[-1] == "STOPPED: stopped by signal 15"
    assert any(x.startswith("fused layer kernels, decode batch 1") for x in lines)
    assert not any("profile" in x or "lookahead" in x for x in lines)
    assert not any(x.startswith("capture at prewarm") for x in GG.text_lines({k: v for k, v in res.items()
                                                                                if k != "capture"}))


def test_sigterm_raises_what_the_parts_own_handlers_let_through():
    old = signal.signal(signal.SIGTERM, GG._stop)
    try:
        with pytest.raises(GG.Stopped):
            try:
                signal.raise_signal(signal.SIGTERM)
            except Exception:  # a part's handler: records a failure and goes on; Stopped must pass it
                pytest.fail("Stopped was caught as an Exception")
    finally:
        signal.signal(signal.SIGTERM, old)
