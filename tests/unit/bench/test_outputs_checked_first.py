"""`calibrate`, `simulate` and every `bench` command refuse an output they could not write, a plot they could not
draw and a count they would take a median over (or divide by) before measuring anything, in one line: they used to
find out after the whole run, with a traceback, and the work was lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from warmserve import cli

#: each command with what keeps its run short (were the check missing, the test still ends), its output option last
COMMANDS = {
    "calibrate": ["calibrate", "--models", "llama-20m", "--repeats", "1", "--no-fresh-engine", "--prefill-tokens",
                  "16", "--decode-batches", "1", "--decode-steps", "1", "--out"],
    "simulate --json": ["simulate", "--workload", "paper-code", "--models", "2", "--duration-s", "60", "--rate", "2",
                        "--policy", "warmserve", "--no-search", "--quiet", "--json"],
    "simulate --plot": ["simulate", "--workload", "paper-code", "--models", "2", "--duration-s", "60", "--rate", "2",
                        "--policy", "warmserve", "--no-search", "--quiet", "--plot"],
    "bench engine": ["bench", "engine", "--models", "llama-20m", "--repeats", "1", "--batches", "1", "--no-hf",
                     "--no-new-process", "--prompt-tokens", "4", "--new-tokens", "2", "--json"],
    "bench forecast --json": ["bench", "forecast", "--clients", "0", "--json"],
    "bench forecast --plot": ["bench", "forecast", "--clients", "0", "--plot"],
    "bench placement": ["bench", "placement", "--max-gpus", "16", "--repeats", "1", "--rounds", "1", "--json"],
    "bench overhead": ["bench", "overhead", "--requests", "1", "--duration-s", "0.2", "--concurrency", "1", "--json"],
    "bench replay --json": ["bench", "replay", "--endpoint", "http://127.0.0.1:9", "--duration-s", "120",
                            "--time-scale", "0.05", "--rate", "2", "--drain-s", "1", "--quiet", "--json"],
    "bench replay --plot": ["bench", "replay", "--endpoint", "http://127.0.0.1:9", "--duration-s", "120",
                            "--time-scale", "0.05", "--rate", "2", "--drain-s", "1", "--quiet", "--plot"],
    "bench replay --log-dir": ["bench", "replay", "--policy", "warmserve", "--duration-s", "120", "--time-scale",
                               "0.05", "--rate", "2", "--drain-s", "1", "--quiet", "--log-dir"],
    "bench switch --json": ["bench", "switch", "--parts", "activation", "--sizes-gib", "0.01", "--repeats", "1",
                            "--json"],
    "bench switch --plot": ["bench", "switch", "--parts", "activation", "--sizes-gib", "0.01", "--repeats", "1",
                            "--plot"],
    "bench tp": ["bench", "tp", "--repeats", "1", "--json"],
}


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    # demo checkpoints a run writes go here, not into the machine's shared cache
    monkeypatch.setenv("WARMSERVE_HOME", str(tmp_path / "home"))


def _run(argv, capsys) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err, time.perf_counter() - t0


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_under_a_file_is_refused_before_anything_is_measured(command, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    bad = str(tmp_path / "a-file" / ("out.png" if command.endswith("--plot") else "out.json"))
    flag = COMMANDS[command][-1]
    rc, out, err, wall_s = _run(COMMANDS[command] + [bad], capsys)
    # one line naming the option and the path; no measurement printed before it (progress goes to stderr too)
    assert out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert rc == 2 and flag in err and bad in err and "is a file" in err, err
    assert wall_s < 30, wall_s


def test_an_output_that_is_a_folder_is_refused_and_a_missing_folder_is_made(tmp_path, capsys):
    argv = ["bench", "placement", "--max-gpus", "16", "--repeats", "1", "--rounds", "1", "--json"]
    rc, out, err, _ = _run(argv + [str(tmp_path)], capsys)
    assert rc == 2 and out == "" and "is a folder" in err and "--json" in err, err
    deep = tmp_path / "new" / "deeper" / "p.json"
    assert _run(argv + [str(deep)], capsys)[0] == 0
    assert deep.stat().st_size > 0


def test_a_plot_format_matplotlib_cannot_write_is_refused_before_the_run(tmp_path, capsys):
    bad = str(tmp_path / "cdf.json")
    rc, out, err, _ = _run(COMMANDS["simulate --plot"] + [bad], capsys)
    assert rc == 2 and out == "" and "--plot" in err and ".json" in err and ".png" in err, err


def test_bench_engine_without_matplotlib_refuses_its_json_before_measuring(tmp_path):
    """`bench engine --json` always draws a PNG beside it: without matplotlib it wrote the JSON, then failed with a
    MissingExtraError traceback. A package named matplotlib that cannot be imported stands in for a missing one."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    env = dict(os.environ, WARMSERVE_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p))
    out_json = tmp_path / "e.json"
    proc = subprocess.run([sys.executable, "-m", "warmserve"] + COMMANDS["bench engine"] + [str(out_json)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, (proc.stdout, proc.stderr)
    assert "matplotlib" in proc.stderr and "--json" in proc.stderr and "warmserve[bench]" in proc.stderr
    assert not out_json.exists()


@pytest.mark.parametrize("argv, flag", [
    (["bench", "placement", "--max-gpus", "16", "--rounds", "1", "--repeats", "0"], "--repeats"),
    (["bench", "engine", "--models", "llama-20m", "--batches", "1", "--no-hf", "--no-new-process", "--prompt-tokens",
      "4", "--new-tokens", "2", "--repeats", "0"], "--repeats"),
    (["bench", "engine", "--models", "llama-20m", "--repeats", "1", "--no-hf", "--no-new-process", "--prompt-tokens",
      "4", "--new-tokens", "2", "--batches", "0"], "--batches"),
    (["bench", "engine", "--models", "llama-20m", "--repeats", "1", "--no-hf", "--no-new-process", "--prompt-tokens",
      "4", "--new-tokens", "2", "--batches"], "--batches"),
    (["bench", "overhead", "--duration-s", "0.2", "--concurrency", "1", "--requests", "0"], "--requests"),
    (["bench", "overhead", "--duration-s", "0.2", "--requests", "1", "--client-procs", "0"], "--client-procs"),
    (["bench", "overhead", "--duration-s", "0.2", "--requests", "1", "--concurrency", "0"], "--concurrency"),
    (["bench", "forecast", "--clients", "-1"], "--clients"),
    (["bench", "switch", "--parts", "activation", "--sizes-gib", "0.01", "--repeats", "0"], "--repeats"),
])
def test_a_count_below_one_is_refused_before_the_run(argv, flag, capsys):
    rc, out, err, wall_s = _run(argv, capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert flag in err and "at least" in err, err
    assert wall_s < 30, wall_s


def test_bench_overhead_refuses_a_throughput_run_of_no_time(capsys):
    rc, out, err, _ = _run(["bench", "overhead", "--requests", "1", "--concurrency", "1", "--duration-s", "0"], capsys)
    assert rc == 2 and out == "" and "--duration-s 0" in err, (out, err)
