import os
import subprocess
import sys

import pytest

from warmserve import errors
from warmserve.cli import COMMANDS, main


def test_errors_round_trip_the_wire_with_their_numbers():
    err = errors.OutOfMemoryError("needs 3.0 GiB, 1.0 GiB free", asked_bytes=3 << 30, free_bytes=1 << 30,
                                  total_bytes=8 << 30)
    back = errors.from_wire(err.to_wire())
    assert type(back) is errors.OutOfMemoryError
    assert isinstance(back, MemoryError)
    assert (back.asked_bytes, back.free_bytes, back.total_bytes) == (3 << 30, 1 << 30, 8 << 30)
    assert str(back) == "needs 3.0 GiB, 1.0 GiB free"


def test_caller_mistakes_are_value_errors():
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.PromptTooLongError, ValueError)
    assert str(errors.UnknownModelError("no model 'x'")) == "no model 'x'"


def test_fmt_bytes():
    assert errors.fmt_bytes(3.2 * 2**30) == "3.2 GiB"
    assert errors.fmt_bytes(512) == "512 B"


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for words in COMMANDS:
        assert " ".join(words) in out
    assert main(["nonsense"]) == 2


# Found in review: each of these ended in a traceback (zmq's "Invalid argument", torch's internals, logging's
# "Unknown level", an OSError from a key file), ran on with a value it should refuse (a heartbeat of 0 busy-looped,
# port 99999 bound another port), or took a NaN. Each must be one line naming the flag, before any slow start-up.
# Workers get a tiny pool: before the fix, some of them started.
_WORKER = ("worker", "--memory-gib", "0.01")
CLI_MISTAKES = [
    (("models", "demo", "--models", "bogus"), 2, "UnknownModelError: unknown demo model(s) ['bogus']"),
    (("models", "demo", "--models", "llama-20m", "--out", "/proc/nope"), 2,
     "--out /proc/nope: cannot create the folder"),
    ((*_WORKER, "--log-level", "foo"), 2, "invalid choice: 'FOO'"),
    ((*_WORKER, "--controller", "notanaddress"), 2, "--controller must be a ZeroMQ address"),
    ((*_WORKER, "--controller", "tcp://127.0.0.1:0"), 2, "--controller: port '0'"),
    ((*_WORKER, "--controller", "tcp://127.0.0.1:5", "--curve-server-key", "/nonexist.key"), 2,
     "--curve-server-key /nonexist.key: no such file"),
    ((*_WORKER, "--heartbeat-interval-s", "0"), 2, "--heartbeat-interval-s must be a finite number > 0"),
    ((*_WORKER, "--drain-timeout-s", "-1"), 2, "--drain-timeout-s must be a finite number >= 0"),
    ((*_WORKER, "--drain-timeout-s", "nan"), 2, "--drain-timeout-s must be a finite number >= 0"),
    ((*_WORKER, "--peer-timeout-s", "nan"), 2, "--peer-timeout-s must be a finite number > 0"),
    ((*_WORKER, "--bind", "tcp://127.0.0.1:99999"), 2, "must be a number in 0-65535"),
    (("worker", "--memory-gib", "nan"), 2, "--memory-gib must be a finite number"),
    (("serve", "--bind", "nonsense", "--insecure", "--port", "0"), 2, "bind must be a ZeroMQ address"),
    (("serve", "--bind", "tcp://127.0.0.1:99999", "--port", "0"), 2, "must be a number in 0-65535"),
    (("serve", "--host", "", "--port", "0"), 2, "host must name an interface"),
    (("serve", "--window-s", "nan", "--port", "0"), 2, "window_s: nan is not a finite number"),
    (("serve", "--window-s", "60", "--policy-option", "window_s=300", "--port", "0"), 2,
     "--window-s and --policy-option window_s=... both set the forecast window"),
    # found in review (2026-12-05): a file as an output folder was a bare NotADirectoryError / FileExistsError, exit 1
    (("bench", "switch", "--dir", "/etc/passwd"), 2, "--dir /etc/passwd: is a file, not a folder"),
    (("bench", "engine", "--demo-dir", "/etc/passwd"), 2, "--demo-dir /etc/passwd: is a file, not a folder"),
    (("calibrate", "--out", "c.json", "--demo-dir", "/etc/passwd"), 2, "--demo-dir /etc/passwd: is a file"),
    (("bench", "forecast", "--traces", "/nonexistent"), 2, "--traces /nonexistent: no such folder"),
    (("bench", "forecast", "--periodic-acf", "5"), 2, "--periodic-acf must be an autocorrelation, from -1 to 1"),
    # found in review (2026-12-05, evening): each was taken and ignored, or ran with a default
    (("bench", "replay", "--api-key", "k", "--duration-s", "10"), 2, "--api-key is the Bearer key for an --endpoint"),
    ((*_WORKER, "--curve-secret-key", "/etc/hostname"), 2, "--curve-secret-key needs --curve-clients-dir"),
    (("models", "demo", "--out", ""), 2, "--out '' names no folder"),
    (("simulate", "--seeds", "", "--no-search"), 2, "--seeds '' names no seed"),
    (("simulate", "--sweep-rate", "", "--no-search"), 2, "--sweep-rate '' names no rate scale"),
    (("serve", "--devices", ",,", "--port", "0"), 2, "--devices ',,' names nothing"),
    (("serve", "--history", "", "--port", "0"), 2, "--history '' names nothing"),
    (("bench", "switch", "--device", "cuda:1"), 2, "--device 1 is the GPU of --backend cuda"),
    (("bench", "switch", "--backend", "cuda", "--device", "cuda:1"), 2, "--device cuda:1: no CUDA device visible"),
    # found in review: '' was taken as no output (calibrate measured a minute, then IsADirectoryError; the rest
    # exited 0 having written nothing)
    (("calibrate", "--out", ""), 2, "--out '': names no path"),
    (("simulate", "--json", "", "--no-search"), 2, "--json '': names no path"),
    (("simulate", "--plot", "", "--no-search"), 2, "--plot '': names no path"),
    (("bench", "placement", "--json", ""), 2, "--json '': names no path"),
    (("bench", "switch", "--plot", ""), 2, "--plot '': names no path"),
]


@pytest.mark.parametrize("argv, rc, says", CLI_MISTAKES, ids=[" ".join(a) for a, _, _ in CLI_MISTAKES])
def test_command_line_mistakes_are_one_line(argv, rc, says, tmp_path):
    env = dict(os.environ, WARMSERVE_HOME=str(tmp_path))
    try:
        proc = subprocess.run([sys.executable, "-m", "warmserve", *argv], capture_output=True, text=True, timeout=30,
                              env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`warmserve {' '.join(argv)}` ran on for 30 s instead of refusing its arguments")
    err = proc.stderr.strip()
    assert "Traceback" not in err, err[-3000:]
    if "invalid choice" not in says:  # argparse's own refusals print the usage first
        assert len(err.splitlines()) == 1, err[-3000:]
    last = err.splitlines()[-1]
    assert says in last and last.startswith(f"warmserve {argv[0]}"), err[-3000:]
    assert proc.returncode == rc, err


def test_a_config_of_the_wrong_shape_is_one_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("hello\n")
    proc = subprocess.run([sys.executable, "-m", "warmserve", "serve", "--config", str(f), "--port", "0"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "must hold a table of keys" in proc.stderr, proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]


def test_a_cuda_device_without_cuda_is_one_line_from_serve_and_worker(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    # the caller's to fix, from either command: exit 2 (serve exited 1 for it, as for a failure met running)
    for argv, rc in ((("worker", "--device", "cuda:0", "--memory-gib", "0.01"), 2),
                     (("serve", "--devices", "cuda:0", "--model", str(tmp_path / "none"), "--port", "0"), 2)):
        proc = subprocess.run([sys.executable, "-m", "warmserve", *argv], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == rc and "no CUDA device visible" in proc.stderr, proc.stderr[-3000:]
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
