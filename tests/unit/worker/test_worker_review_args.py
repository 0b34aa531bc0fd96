"""`warmserve worker` flags refused before torch is imported and the pool made. Found in review: --threads -1 was a
traceback from torch after its import (exit 1) and 0 silently meant all threads; --exit-with-parent -5 ran the whole
start-up and exited 0; a --ready-fd that is not open failed only once the worker had started (exit 1)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from warmserve import errors
from warmserve.worker.main import add_arguments, check_args


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("threads", ["-1", "0"])
def test_threads_below_one_are_refused(threads):
    with pytest.raises(errors.InvalidArgumentError, match="--threads must be >= 1") as ei:
        check_args(_args("--threads", threads))
    assert ei.value.threads == int(threads)


def test_a_parent_pid_below_zero_is_refused_and_the_others_pass():
    with pytest.raises(errors.InvalidArgumentError, match="--exit-with-parent PID must be") as ei:
        check_args(_args("--exit-with-parent", "-5"))
    assert ei.value.pid == -5
    check_args(_args("--exit-with-parent"))  # the parent at start
    check_args(_args("--exit-with-parent", str(os.getpid())))
    check_args(_args("--threads", "1"))


def test_a_ready_fd_not_open_for_writing_is_refused():
    r, w = os.pipe()
    closed = os.dup(w)
    os.close(closed)  # a descriptor number nothing holds
    try:
        for fd in (closed, r, -1):
            with pytest.raises(errors.InvalidArgumentError, match=f"--ready-fd {fd} is no file descriptor") as ei:
                check_args(_args("--ready-fd", str(fd)))
            assert ei.value.fd == fd
        check_args(_args("--ready-fd", str(w)))
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("flags", [["--threads", "-1"], ["--exit-with-parent", "-5"], ["--ready-fd", "999"]])
def test_the_command_refuses_them_with_status_2_before_importing_torch(flags):
    code = ("import sys, argparse; from warmserve.worker.main import add_arguments, main;"
            " p = argparse.ArgumentParser();"
            f" add_arguments(p); rc = main(p.parse_args({flags!r})); sys.exit(rc if 'torch' not in sys.modules else 9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "InvalidArgumentError" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
