"""``cli.exit_process``, the end of every `warmserve` process (``python -m warmserve``, the script, the fork server's
workers): Python's own exit less the interpreter's teardown, which took 0.6 to 0.9 s at each worker's exit. What a
normal exit does before that teardown must still happen: the status, threads not daemonic joined, atexit handlers
run, buffered output written; and a closed pipe still says 120, as Python's exit does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import atexit, sys, threading, time
    from warmserve.cli import exit_process

    out = sys.argv[1]
    def late():
        time.sleep(0.3)
        with open(out, "a") as f:
            f.write("thread\\n")
    threading.Thread(target=late).start()  # not a daemon: a normal exit waits for it
    atexit.register(lambda: open(out, "a").write("atexit\\n"))
    sys.stdout.write("buffered " * 100)  # a pipe: block-buffered (8 KiB), so only a flush writes it
    exit_process(int(sys.argv[2]))
""")


#: Output buffered as it is by default (a shell or CI may set PYTHONUNBUFFERED, which would make the flush a no-op)
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_exit_process_keeps_the_status_threads_atexit_and_buffered_output(tmp_path):
    out = tmp_path / "order.txt"
    p = subprocess.run([sys.executable, "-c", CHILD, str(out), "3"], capture_output=True, text=True, timeout=60,
                       env=BUFFERED)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "buffered " * 100
    assert out.read_text().splitlines() == ["thread", "atexit"], "the thread is joined before the atexit handlers"


def test_exit_process_into_a_closed_pipe_exits_120(tmp_path):
    out = tmp_path / "order.txt"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(out), "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=BUFFERED)
    p.stdout.close()  # `warmserve ... | head` whose reader is gone
    assert p.wait(60) == 120
    assert out.read_text().splitlines() == ["thread", "atexit"]


def test_python_m_warmserve_keeps_its_exit_statuses():
    p = subprocess.run([sys.executable, "-m", "warmserve", "models"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "needs a subcommand" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "warmserve", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("warmserve "), p


def test_a_reader_gone_from_unbuffered_output_is_120_and_no_traceback():
    """Found in review: with PYTHONUNBUFFERED set (as many shells and CI runners do) `warmserve --help | head -1`
    ended in a BrokenPipeError traceback: the print itself raised, before exit_process's flush."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first byte
    try:
        p = subprocess.run([sys.executable, "-m", "warmserve", "--help"], stdout=w, stderr=subprocess.PIPE,
                           text=True, timeout=60, env=env)
    finally:
        os.close(w)
    assert p.returncode == 120 and "Traceback" not in p.stderr, p.stderr
