"""`warmserve worker --controller` with `--curve-secret-key` and no `--curve-server-key`, from a security review: the
key was ignored and the worker connected in plain text, unwarned (the client classes refuse the same pair)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest
import zmq.auth

from warmserve.errors import InvalidArgumentError
from warmserve.worker import main as M


def _args(argv):
    p = argparse.ArgumentParser()
    M.add_arguments(p)
    return p.parse_args(argv)


def test_a_secret_key_without_the_server_key_is_refused(tmp_path):
    _, secret = zmq.auth.create_certificates(str(tmp_path), "w1")
    with pytest.raises(InvalidArgumentError, match="--curve-secret-key needs --curve-server-key") as e:
        M.check_security(_args(["--controller", "tcp://127.0.0.1:5", "--curve-secret-key", secret]))
    assert "plain text" in str(e.value)
    # Both, or neither, are fine.
    M.check_security(_args(["--controller", "tcp://127.0.0.1:5"]))
    M.check_security(_args(["--controller", "tcp://127.0.0.1:5", "--curve-server-key", secret,
                            "--curve-secret-key", secret]))


def test_a_bound_workers_secret_key_without_the_clients_dir_is_refused(tmp_path):
    """Found in review (2026-12-05): with --bind, --curve-secret-key alone was ignored and the worker served in plain
    text."""
    _, secret = zmq.auth.create_certificates(str(tmp_path), "w1")
    with pytest.raises(InvalidArgumentError, match="--curve-secret-key needs --curve-clients-dir") as e:
        M.check_security(_args(["--bind", "tcp://127.0.0.1:5", "--curve-secret-key", secret]))
    assert "plain text" in str(e.value)
    M.check_security(_args(["--bind", "tcp://127.0.0.1:5", "--curve-secret-key", secret,
                            "--curve-clients-dir", str(tmp_path)]))


def test_the_worker_command_exits_2_at_once(tmp_path):
    _, secret = zmq.auth.create_certificates(str(tmp_path), "w1")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "warmserve", "worker", "--controller", "tcp://127.0.0.1:5",
                        "--curve-secret-key", secret, "--memory-gib", "0.05", "--threads", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--curve-secret-key" in r.stderr and "--curve-server-key" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 30
