"""Progress bars (``warmserve.extras.progress_bar``) where stderr is no terminal, and where tqdm is not installed.

Found in review: into a log file or a pipe tqdm wrote a whole line at each refresh, ten a second (a 6-second
`simulate` of two seeds wrote 75 lines, so a sweep of minutes wrote thousands); and `warmserve simulate` without
--quiet raised ModuleNotFoundError where tqdm is not installed, while the benchmarks' bars simply showed none (tqdm
comes with the bench extra; today tokenizers' huggingface_hub brings it to the serving-only install too)."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest

from warmserve import extras


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines_of_a_busy_second(monkeypatch, stderr) -> int:
    """The lines a bar writes for 200 updates over about one second."""
    monkeypatch.setattr(sys, "stderr", stderr)
    bar = extras.progress_bar(total=200, desc="x")
    for _ in range(200):
        bar.update(1)
        time.sleep(0.005)
    bar.close()
    return len(stderr.getvalue().replace("\r", "\n").splitlines())


def test_into_a_file_a_bar_writes_a_line_at_most_every_interval(monkeypatch):
    pytest.importorskip("tqdm")
    assert extras.LOG_PROGRESS_INTERVAL_S >= 10
    lines = _lines_of_a_busy_second(monkeypatch, io.StringIO())
    assert lines <= 3, lines  # its first line and its end: before, about ten more


def test_on_a_terminal_a_bar_keeps_tqdms_refresh(monkeypatch):
    pytest.importorskip("tqdm")
    assert _lines_of_a_busy_second(monkeypatch, _Terminal()) >= 5


def test_simulate_without_tqdm_runs_and_shows_no_bar():
    code = ("import sys; sys.modules['tqdm'] = None\n"  # as where it is not installed: its import raises
            "from warmserve.cli import main\n"
            "sys.exit(main(['simulate', '--preset', 'paper-code', '--seeds', '0', '--no-search', '--policy', "
            "'warmserve', '--duration-s', '120']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warmserve: p99 TTFT" in r.stderr and "sim-s" not in r.stderr, r.stderr[-2000:]
