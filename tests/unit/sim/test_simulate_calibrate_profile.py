"""`warmserve simulate --profile` of a profile whose GPU cannot serve the run's models is refused before any policy
runs, naming the profile as the cause. Found in review: a `warmserve calibrate` profile (CPU workers of about 1 GiB,
the demo models), which is for `warmserve bench replay --profile`, ended `simulate --policy warmserve --profile P.json
--duration-s 120` in "model 'llama2-13b-a' cannot be served ... raise tp or use larger GPUs", blaming the models."""

from __future__ import annotations

import json
from pathlib import Path

from warmserve import cli
from warmserve.sim import cli as sim_cli
from warmserve.sim import runner
from warmserve.sim.costmodel import SCHEMA

REPO = Path(__file__).resolve().parents[3]
SIM = ["simulate", "--policy", "warmserve", "--duration-s", "30", "--history-days", "0", "--quiet", "--no-search"]


def _no_run(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a policy ran: the profile was not checked first")

    # sim_cli imported above, not here: an import after runner.run_once is patched would bind the stand-in for good
    monkeypatch.setattr(runner, "run_once", boom)
    monkeypatch.setattr(sim_cli, "run_once", boom)


def test_a_calibrate_profile_is_named_as_the_cause_and_bench_replay_as_its_use(monkeypatch, capsys):
    _no_run(monkeypatch)
    prof = REPO / "bench" / "replay" / "profile_cpu.json"  # what `warmserve calibrate` wrote
    rc = cli.main([*SIM, "--profile", str(prof)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--profile" in err and str(prof) in err and "cpu-worker-1t" in err, err
    assert "warmserve calibrate" in err and "bench replay" in err and "llama2-13b-a" in err, err
    assert "raise tp" not in err, err


def test_a_gpu_profile_too_small_for_the_models_names_its_memory(tmp_path, monkeypatch, capsys):
    _no_run(monkeypatch)
    prof = tmp_path / "small.json"
    prof.write_text(json.dumps({"schema": SCHEMA, "gpu": {"name": "tiny-gpu", "memory_bytes": 8e9}}))
    rc = cli.main([*SIM, "--profile", str(prof)])
    err = capsys.readouterr().err
    assert rc == 2 and "--profile" in err and "tiny-gpu" in err and "gpu.memory_bytes" in err, err
    assert "warmserve calibrate" not in err, err


def test_a_profile_that_holds_the_models_still_runs(tmp_path, capsys):
    prof = tmp_path / "big.json"
    prof.write_text(json.dumps({"schema": SCHEMA, "gpu": {"name": "big-gpu", "memory_bytes": 80e9}}))
    assert cli.main([*SIM, "--models", "2", "--rate", "1", "--profile", str(prof)]) == 0
