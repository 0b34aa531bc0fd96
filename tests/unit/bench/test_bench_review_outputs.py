"""The result and plot files of `calibrate` / `bench ...` after a review of where they are written.

Found in review: ``write_json_atomic`` wrote a temporary file beside ``--json`` and renamed it over it, so a device
node (a copy of /dev/null) was replaced by a plain file, and `--json /dev/stdout | cat` failed after the whole run
(FileNotFoundError on a temporary file in /proc/PID/fd); `--json >(cmd)` was refused (/dev/fd holds no files).
`bench engine --json eng.png` drew its plot (at the --json path with .png) over the results, and `bench switch /
replay / forecast / overhead --json P --plot P` the same: "wrote", exit 0, no JSON left.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve.bench import engine, forecast, overhead, replay, switch
from warmserve.errors import InvalidArgumentError
from warmserve.outputs import check_output, write_json_atomic

DOC = {"results": [1, 2, 3], "name": "x"}


# ------------------------------------------------------------------------ 1. --json to a pipe, device or socket

def test_a_fifo_gets_the_json_and_stays_a_fifo(tmp_path):
    fifo = str(tmp_path / "results.fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader waiting, as `jq < fifo` would be
    try:
        check_output("--json", fifo)
        write_json_atomic(fifo, DOC, indent=1)
        assert json.loads(os.read(reader, 1 << 16)) == DOC
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a file"
    assert os.listdir(tmp_path) == ["results.fifo"], "a temporary file was left beside it"


def test_a_pipe_named_by_dev_fd_is_accepted_and_written():
    # bash's `--json >(jq .)` passes /dev/fd/63, a pipe
    r, w = os.pipe()
    try:
        path = f"/dev/fd/{w}"
        check_output("--json", path)  # before: "cannot write in /dev/fd", exit 2
        write_json_atomic(path, DOC)
        os.close(w)
        w = -1
        assert json.loads(os.read(r, 1 << 16)) == DOC
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_device_node_is_written_not_replaced(tmp_path):
    null = str(tmp_path / "null")
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private copy of /dev/null
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    check_output("--json", null)
    write_json_atomic(null, DOC, indent=1)
    st = os.stat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3), "the device was replaced by a file"


def test_a_regular_file_is_still_replaced_whole(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    write_json_atomic(str(out), DOC)
    assert json.loads(out.read_text()) == DOC and os.listdir(tmp_path) == ["r.json"]


def test_bench_placement_json_to_dev_stdout_through_a_pipe(tmp_path):
    p = subprocess.run([sys.executable, "-m", "warmserve", "bench", "placement", "--max-gpus", "16", "--repeats",
                        "1", "--rounds", "1", "--json", "/dev/stdout"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert '"planning"' in p.stdout  # the JSON went down the pipe, after the table
    assert "Error" not in p.stderr


# ------------------------------------------------------------------------------- 2. --json and the plot one file

def test_engine_refuses_a_json_path_its_plot_would_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "run", never("the engine measurement"))
    out = tmp_path / "eng.png"
    rc, _, err = run(["bench", "engine", "--models", "llama-20m", "--json", str(out), "--no-hf", "--no-new-process",
                      "--repeats", "1", "--batches", "1"], capsys)
    assert rc == 2 and "--json" in err and "overwrite" in err, err
    assert not out.exists()


def test_overhead_refuses_a_json_path_its_default_plot_would_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(overhead, "run", never("the overhead measurement"))
    out = tmp_path / "oh.png"
    rc, _, err = run(["bench", "overhead", "--requests", "1", "--json", str(out)], capsys)
    assert rc == 2 and "--json" in err and "--plot" in err and "overwrite" in err, err
    assert not out.exists()


@pytest.mark.parametrize("cmd,stop", [
    (["bench", "overhead", "--requests", "1"], (overhead, "run")),
    (["bench", "switch", "--parts", "activation", "--sizes-gib", "0.02", "--repeats", "1"],
     (switch, "activation_vs_cold")),
    (["bench", "replay"], (replay, "run_policies")),
    (["bench", "forecast"], (forecast, "load_series")),
])
@pytest.mark.parametrize("link", [False, True])
def test_json_and_plot_on_one_file_are_refused_before_the_run(cmd, stop, link, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(*stop, never(f"{cmd[1]}'s run"))
    out = tmp_path / "r.png"
    plot = out
    if link:  # another name of the same file
        out.write_text("earlier results")
        plot = tmp_path / "plot.png"
        plot.symlink_to(out)
    rc, _, err = run(cmd + ["--json", str(out), "--plot", str(plot)], capsys)
    assert rc == 2 and "--json" in err and "--plot" in err and "overwrite" in err, err
    assert not link or out.read_text() == "earlier results"


def test_the_shared_check_accepts_two_files_and_names_both_flags(tmp_path):
    from warmserve.outputs import check_distinct_outputs

    check_distinct_outputs(str(tmp_path / "a.json"), str(tmp_path / "a.png"))
    check_distinct_outputs(None, str(tmp_path / "a.png"))
    (tmp_path / "a.json").write_text("{}")
    os.link(tmp_path / "a.json", tmp_path / "hard.png")
    with pytest.raises(InvalidArgumentError) as e:
        check_distinct_outputs(str(tmp_path / "a.json"), str(tmp_path / "hard.png"))
    assert e.value.fields["flags"] == ["--json", "--plot"]


def test_a_socket_is_refused_before_the_run(tmp_path):
    import socket

    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        with pytest.raises(InvalidArgumentError, match="socket"):
            check_output("--json", path)
