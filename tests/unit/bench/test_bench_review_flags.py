"""`bench tp`, `bench placement`, `bench engine`, `calibrate` and `bench overhead` after a review of their flags:
refused before anything runs, naming the flag (exit 2), and --concurrency kept as given.

Found in review: `bench tp --kv-blocks -1` / `--memory-gib 0` were met only once the workers had started, in
messages naming no flag, leaving the workers' logs in /tmp; `bench placement --rounds 0` and `--max-gpus 8` and
`bench engine --models` (no names) measured nothing and exited 0; `calibrate --prefill-tokens 0` or
`--decode-batches x` said "expected integers >= 1" naming neither flag; `bench overhead --concurrency 1
--client-procs 3` ran 3 connections (5 over 2 ran 4)."""

from __future__ import annotations

import json

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve.bench import calibrate, engine, overhead, placement, tp


@pytest.mark.parametrize("flags,named", [
    (["--kv-blocks", "-1"], "--kv-blocks"),
    (["--kv-blocks", "0"], "--kv-blocks"),
    (["--memory-gib", "0"], "--memory-gib"),
    (["--memory-gib", "-2"], "--memory-gib"),
    (["--memory-gib", "nan"], "--memory-gib"),
])
def test_tp_refuses_bad_kv_blocks_and_memory_before_any_worker(flags, named, monkeypatch, capsys):
    monkeypatch.setattr(tp, "run", never("the tp run (workers spawned)"))
    rc, _, err = run(["bench", "tp", "--repeats", "1"] + flags, capsys)
    assert rc == 2 and named in err, err


@pytest.mark.parametrize("flags,named", [
    (["--rounds", "0"], "--rounds"),
    (["--rounds", "-3"], "--rounds"),
    (["--max-gpus", "8"], "--max-gpus"),
    (["--max-gpus", "0"], "--max-gpus"),
])
def test_placement_refuses_options_that_leave_nothing_to_measure(flags, named, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(placement, "plan_time", never("a planning round"))
    monkeypatch.setattr(placement, "survival", never("the survival experiment"))
    out = tmp_path / "r.json"
    rc, _, err = run(["bench", "placement", "--repeats", "1", "--json", str(out)] + flags, capsys)
    assert rc == 2 and named in err, err
    assert not out.exists()


def test_placement_at_the_smallest_size_still_runs(monkeypatch, capsys):
    sizes = []
    monkeypatch.setattr(placement, "SIZES", [(16, 8)])
    monkeypatch.setattr(placement, "plan_time", lambda g, m, r: sizes.append(g) or {
        "plan_ms": 1.0, "next_plan_ms": 1.0, "prewarms_placed": 1, "instances": 1, "busy_gpus": 1,
        "idle_plan_ms": 1.0, "idle_prewarms_placed": 1})
    monkeypatch.setattr(placement, "survival", lambda p, g, m, r: sizes.append(g) or {
        "prewarms_placed": 1, "destroyed_by_other_models": 0, "destroyed_share": 0.0, "prewarm_hit_rate": 1.0,
        "kept_weight_hits": 0, "server_rounds_not_laminar": 0})
    rc, _, err = run(["bench", "placement", "--max-gpus", "16", "--repeats", "1", "--rounds", "1"], capsys)
    assert rc == 0, err
    assert set(sizes) == {16}


def test_engine_refuses_an_empty_models_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "run", never("the engine benchmark"))
    out = tmp_path / "r.json"
    rc, _, err = run(["bench", "engine", "--models", "--no-hf", "--no-new-process", "--repeats", "1", "--json",
                      str(out)], capsys)
    assert rc == 2 and "--models" in err, err
    assert not out.exists()


@pytest.mark.parametrize("flag,value", [("--prefill-tokens", "0"), ("--prefill-tokens", ","),
                                        ("--decode-batches", "x"), ("--decode-batches", "1,-2")])
def test_calibrate_list_errors_name_their_flag(flag, value, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(calibrate, "measure_model", never("a model's measurement"))
    rc, _, err = run(["calibrate", "--models", "llama-20m", "--out", str(tmp_path / "p.json"), flag, value], capsys)
    assert rc == 2 and f"{flag} {value!r}" in err, err  # before: "expected integers >= 1, got '0'"
    assert "Traceback" not in err


def test_overhead_refuses_more_client_processes_than_connections(monkeypatch, capsys):
    monkeypatch.setattr(overhead, "run", never("the overhead run (server started)"))
    rc, _, err = run(["bench", "overhead", "--concurrency", "1", "--client-procs", "3"], capsys)
    assert rc == 2 and "--client-procs" in err and "--concurrency" in err, err


@pytest.mark.parametrize("concurrency,procs,each", [(5, 2, [3, 2]), (64, 3, [22, 21, 21]), (4, 4, [1, 1, 1, 1]),
                                                    (64, 1, [64])])
def test_overhead_runs_exactly_the_connections_asked(concurrency, procs, each, monkeypatch):
    started = []

    class Client:
        """A client process that ran its connections at once: one request each."""

        def __init__(self, argv, **kw):
            self.conns = json.loads(argv[-1])[1]
            started.append(self.conns)

        def communicate(self, timeout=None):
            line = {"done": self.conns, "errors": 0, "wall_s": 1.0, "p50_s": 0.001, "p99_s": 0.002}
            return json.dumps(line) + "\n", None

    monkeypatch.setattr(overhead.subprocess, "Popen", Client)
    res = overhead.throughput("http", "http://127.0.0.1:1", [1], concurrency, 0.1, procs)
    assert started == each  # before: concurrency // procs each (2 and 2 for 5 over 2)
    assert res["concurrency"] == concurrency and res["client_procs"] == procs
