"""``exit_signals.exit_on_signals`` in a process started ignoring SIGHUP (`nohup warmserve bench replay ... &`).
Found in review: its handler replaced nohup's SIG_IGN, so closing the terminal ended the benchmark, status 129."""

from __future__ import annotations

import signal
import subprocess
import sys

SCRIPT = """
import os, signal, time
from warmserve.bench.exit_signals import exit_on_signals, run_async

async def hup():
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0.1)  # the handler runs at the next bytecode: an asyncio one at the loop's next turn
    import asyncio
    await asyncio.sleep(0.2)
    return "ran on"

with exit_on_signals():
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0.2)
    print("block ran on", flush=True)
    print(run_async(hup()), flush=True)
print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, flush=True)
"""


def _run(ignore_hup: bool) -> subprocess.CompletedProcess:
    def preexec():
        if ignore_hup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup(1) does

    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                          preexec_fn=preexec)


def test_sighup_ignored_by_nohup_stays_ignored_in_the_block():
    out = _run(ignore_hup=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["block ran on", "ran on", "True"], out


def test_sighup_otherwise_still_ends_the_block_with_129():
    out = _run(ignore_hup=False)
    assert out.returncode == 128 + signal.SIGHUP, out
    assert "block ran on" not in out.stdout
