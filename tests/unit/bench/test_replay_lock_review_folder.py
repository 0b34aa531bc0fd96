"""Two `warmserve bench replay` runs with one log folder (found in review: the second truncated the first's
serve-POLICY.log and rewrote the history-POLICY.csv its server reads). The first run's hold on the folder is taken
here by a second real process, as a running replay takes it."""

import os
import signal
import subprocess
import sys

from cli_run import never, own_home, run  # noqa: F401  (own_home: an autouse fixture)

from warmserve.bench import replay as R

# a workload the run builds in about a second and finds empty: it ends (status 2) after taking its folder
EMPTY = ["bench", "replay", "--policy", "warmserve", "--models", "2", "--checkpoints", "llama-20m", "--cpu-workers",
         "1", "--duration-s", "120", "--time-scale", "0.05", "--rate", "0.5", "--history-days", "1", "--pre-s", "300",
         "--seed", "1", "--quiet"]

HOLDER = """
import argparse, sys
from warmserve.bench import replay as R
from warmserve.outputs import check_output_folder
p = argparse.ArgumentParser()
R.add_arguments(p)
args = p.parse_args(sys.argv[1:])
check_output_folder("--log-dir", R.log_folder(args))  # as the run makes it, first
lock = R.hold_log_folder(args)
print("held" if lock is not None else "no lock", flush=True)
sys.stdin.read()
"""


def _holder(cwd, *argv):
    """A process that holds the log folder of a replay with ``argv`` started in ``cwd``, until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, *argv], cwd=cwd, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _stop(p):
    p.stdin.close()
    p.wait(30)
    p.stdout.close()


def test_a_second_run_in_a_held_folder_is_refused_at_once_and_touches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = _holder(tmp_path)  # no --json, no --log-dir: replay-logs/ here, the review's case
    try:
        logs = tmp_path / "replay-logs"
        (logs / "serve-warmserve.log").write_text("the first run's server log\n")
        (logs / "history-warmserve.csv").write_text("model,window_start_s,avg,peak\nm,0,1,2\n")
        before = {f: (logs / f).read_bytes() for f in os.listdir(logs)}
        monkeypatch.setattr(R, "build_workload", never("the workload"))
        rc, out, err = run(EMPTY, capsys)
        assert rc == 2, err
        assert str(logs) in err and f"pid {first.pid}" in err and "--log-dir DIR" in err, err
        assert {f: (logs / f).read_bytes() for f in os.listdir(logs)} == before
    finally:
        _stop(first)


def test_an_explicit_log_dir_is_refused_naming_the_option(tmp_path, capsys, monkeypatch):
    logs = tmp_path / "logs"
    first = _holder(tmp_path, "--log-dir", str(logs))
    try:
        monkeypatch.setattr(R, "build_workload", never("the workload"))
        rc, out, err = run(EMPTY + ["--log-dir", str(logs)], capsys)
        assert rc == 2, err
        assert f"--log-dir {logs}:" in err and f"pid {first.pid}" in err, err
    finally:
        _stop(first)


def test_a_lock_file_left_by_a_killed_run_does_not_block_the_next(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    killed = _holder(tmp_path)
    lock = tmp_path / "replay-logs" / R.LOG_LOCK_NAME
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    killed.stdout.close()
    killed.stdin.close()
    assert lock.read_text().strip() == str(killed.pid)  # left behind, naming a dead process
    rc, out, err = run(EMPTY, capsys)
    assert rc == 2 and "the workload has no requests" in err and "holds it" not in err, err


def test_a_run_gives_its_folder_back_when_it_ends(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(EMPTY, capsys)
    assert rc == 2 and "the workload has no requests" in err, err
    assert not (tmp_path / "replay-logs" / R.LOG_LOCK_NAME).exists()
    _stop(_holder(tmp_path))  # a next run takes it
