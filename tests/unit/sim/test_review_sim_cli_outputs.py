"""`warmserve simulate`'s inputs and outputs, from a review of the simulator CLI (each found there):
--json or --plot naming the --profile file overwrote the cost profile the run read; the max-rate search ran rate
scales whose workloads exceed the request budget the command refuses at --rate-scale; a misspelled top-level key of
a profile was taken and ignored; and --slo-target / --search-iters under --no-search, --search-iters under
--sweep-rate and --cold-start-band LOW,HIGH with no cold-start policy were taken, recorded and had no effect."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from warmserve import cli
from warmserve.errors import InvalidArgumentError
from warmserve.sim import runner
from warmserve.sim.cli import add_arguments, check_args
from warmserve.sim.cli_checks import MAX_REQUESTS
from warmserve.sim.config import SimConfig
from warmserve.sim.costmodel import SCHEMA, CostModel
from warmserve.sim.metrics import RunResult
from warmserve.sim.presets import Preset

REPO = Path(__file__).resolve().parents[3]
SMALL = ["simulate", "--workload", "paper-conv", "--models", "2", "--duration-s", "30", "--rate", "1",
         "--history-days", "0", "--policy", "warmserve", "--quiet"]


def _args(*flags):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(flags))


def _no_run(monkeypatch):
    """A refusal must come before any policy runs."""
    def boom(*a, **k):
        raise AssertionError("a policy ran")

    monkeypatch.setattr(runner, "run_once", boom)
    monkeypatch.setattr("warmserve.sim.cli.run_once", boom)


# ------------------------------------------------------------------------------ --profile as --json or --plot

@pytest.mark.parametrize("flag", ["--json", "--plot"])
@pytest.mark.parametrize("mode", [["--no-search"], ["--sweep-rate", "1", "--cold-start-band", "off"]])
def test_an_output_naming_the_profile_is_refused_and_the_profile_kept(tmp_path, monkeypatch, capsys, flag, mode):
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    _no_run(monkeypatch)
    # no extension: a name --plot takes too (matplotlib's default format), so only the clash refuses it
    prof = tmp_path / "prof"
    text = json.dumps({"schema": SCHEMA, "colocation_interference": "none"})
    prof.write_text(text)
    rc = cli.main([*SMALL, *mode, "--profile", str(prof), flag, str(tmp_path / "." / "prof")])
    err = capsys.readouterr().err
    assert rc == 2 and "--profile" in err and flag in err, err
    assert prof.read_text() == text


def test_a_profile_and_outputs_on_other_paths_still_run(tmp_path, capsys):
    prof = tmp_path / "prof.json"
    prof.write_text(json.dumps({"schema": SCHEMA, "colocation_interference": "none"}))
    out = tmp_path / "out.json"
    assert cli.main([*SMALL, "--no-search", "--profile", str(prof), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["args"]["profile"] == str(prof)


# ------------------------------------------------------------------------------ the max-rate search's budget

def _preset(requests_at_scale_1: float) -> Preset:
    # expected_requests(s) = base_rate_rps x s x span_s x (1 + history_days): requests_at_scale_1 x s
    return Preset("budget", SimConfig(), [], None, base_rate_rps=requests_at_scale_1 / 100.0, span_s=100.0)


def _fake_runs(monkeypatch, meets=lambda scale: True):
    asked = []

    def run_once(preset, policy, *, rate_scale=1.0, seed=0, cost=None, progress=False, workload=None):
        asked.append(rate_scale)
        s = {"slo_attainment": 1.0 if meets(rate_scale) else 0.5, "offered_rate_rps": rate_scale}
        return RunResult(policy, s, {}, np.zeros(0))

    monkeypatch.setattr(runner, "run_once", run_once)
    return asked


def test_the_search_never_runs_a_scale_over_the_request_budget_and_says_its_rate_is_a_lower_bound(monkeypatch):
    asked = _fake_runs(monkeypatch)
    p = _preset(MAX_REQUESTS / 3)  # scale 3 is the most the simulator takes
    rate, tried, bound = runner.max_rate_under_slo(p, "warmserve", iters=2)
    assert max(p.expected_requests(s) for s in asked) <= MAX_REQUESTS, asked
    assert bound and max(asked) == pytest.approx(3.0) and rate == pytest.approx(max(asked))
    assert [t["rate_scale"] for t in tried] == asked


def test_a_search_that_fails_under_the_cap_bisects_below_it(monkeypatch):
    asked = _fake_runs(monkeypatch, meets=lambda s: s <= 2.5)
    p = _preset(MAX_REQUESTS / 3)
    rate, _, bound = runner.max_rate_under_slo(p, "warmserve", iters=3)
    assert not bound and 2.0 <= rate <= 2.5 and max(asked) == pytest.approx(3.0), asked
    # a budget far above the search's own top: the search as before, doubling to 16x
    asked = _fake_runs(monkeypatch)
    assert runner.max_rate_under_slo(_preset(1000.0), "warmserve", iters=0)[2] and asked == [1, 2, 4, 8, 16]


def test_a_search_whose_first_scale_is_over_the_budget_is_refused(monkeypatch):
    asked = _fake_runs(monkeypatch)
    with pytest.raises(InvalidArgumentError, match="--no-search"):
        runner.max_rate_under_slo(_preset(2 * MAX_REQUESTS), "warmserve")
    assert asked == []


def test_simulate_refuses_a_search_whose_first_run_is_over_the_budget_before_any_run(monkeypatch, capsys):
    # the reviewer's case: 1,024 GPUs at the default hour; --rate-scale 0.5 passes the budget, scale 1 does not
    _no_run(monkeypatch)
    monkeypatch.setattr("warmserve.sim.presets.Preset.build", lambda *a, **k: pytest.fail("a workload was built"))
    rc = cli.main(["simulate", "--preset", "scale", "--gpus", "1024", "--models", "256", "--start-hour", "12",
                   "--rate-scale", "0.5", "--policy", "warmserve", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--no-search" in err and "1e+07" in err, err


# ------------------------------------------------------------------------------ the profile's top-level keys

@pytest.mark.parametrize("key", ["colocation_interferance", "engine_init_sec", "Models"])
def test_an_unknown_top_level_profile_key_is_refused_naming_it_and_the_known_ones(key):
    with pytest.raises(InvalidArgumentError, match=key) as e:
        CostModel.from_profile({"schema": SCHEMA, key: "none"})
    assert "engine_init_s" in str(e.value) and "measured" in str(e.value)


def test_simulate_refuses_a_profile_with_a_misspelled_key(tmp_path, monkeypatch, capsys):
    _no_run(monkeypatch)
    prof = tmp_path / "typo.json"
    prof.write_text(json.dumps({"schema": SCHEMA, "colocation_interferance": "none"}))
    assert cli.main([*SMALL, "--no-search", "--profile", str(prof)]) == 2
    err = capsys.readouterr().err
    assert "colocation_interferance" in err and "colocation_interference" in err, err


def _committed_profiles():
    out = []
    for path in sorted((REPO / "bench").rglob("*.json")):
        if "profile" in str(path.relative_to(REPO)):
            d = json.loads(path.read_text())
            if isinstance(d, dict) and d.get("schema") == SCHEMA:
                out.append(path)
    return out


def test_every_committed_profile_and_what_calibrate_writes_still_load():
    paths = _committed_profiles()
    assert len(paths) >= 7, paths  # bench/replay's calibrations and bench/simulate/issue11/profiles
    for path in paths:
        CostModel.from_profile(str(path))
    from warmserve.bench import calibrate as C

    m = {"weight_bytes": 75e6, "tp": 1, "kv_bytes_per_token": 49152,
         "prefill_table": [[16, 0.02], [256, 0.2]], "decode_table": [[1, 0.01], [8, 0.03]],
         "measured": {"load_s": 0.04, "activation_s": 0.002}}
    prof = C.build_profile({"llama-20m": m}, 1 << 30, 1, {"init_s": 2.0, "init_s_runs": [2.0],
                                                        "load_s": {"llama-20m": 0.1}})
    prof["parallel"] = {"processes": 2, "runs": []}  # as `calibrate --parallel` adds it
    assert {"measured", "machine", "measured_fresh_engine", "skipped", "parallel"} <= set(prof)
    CostModel.from_profile(json.loads(json.dumps(prof)))


# ------------------------------------------------------------------------------ settings without effect

@pytest.mark.parametrize("flags,named", [
    (["--no-search", "--slo-target", "0.99"], "--slo-target"),
    (["--no-search", "--search-iters", "12"], "--search-iters"),
    (["--sweep-rate", "1", "--search-iters", "12"], "--search-iters"),
    (["--sweep-rate", "1", "--policy", "warmserve,shared", "--cold-start-band", "20,40"], "--cold-start-band"),
])
def test_a_setting_the_run_would_not_use_is_refused_naming_it(flags, named):
    with pytest.raises(InvalidArgumentError, match=named) as e:
        check_args(_args(*flags))
    assert e.value.fields.get("flag") == named


@pytest.mark.parametrize("flags,iters,target", [
    ([], 4, "0.99"), (["--no-search"], 4, "0.99"), (["--slo-target", "0.95", "--search-iters", "2"], 2, "0.95"),
    (["--sweep-rate", "1", "--slo-target", "0.95"], 4, "0.95"),
    (["--sweep-rate", "1", "--no-search", "--slo-target", "0.95"], 4, "0.95"),  # a sweep judges at the target
    (["--sweep-rate", "1", "--policy", "warmserve,autoscale", "--cold-start-band", "20,40"], 4, "0.99"),
    (["--sweep-rate", "1", "--policy", "warmserve", "--cold-start-band", "off"], 4, "0.99"),
])
def test_the_settings_a_run_uses_are_taken_and_recorded_as_before(flags, iters, target):
    a = _args(*flags)
    check_args(a)
    # the JSON's "args" as before: the defaults filled in
    assert (a.search_iters, a.slo_target) == (iters, target)


def test_simulate_refuses_an_unused_setting_before_any_run(monkeypatch, capsys):
    _no_run(monkeypatch)
    assert cli.main([*SMALL, "--no-search", "--slo-target", "0.5", "--search-iters", "12"]) == 2
    err = capsys.readouterr().err
    assert "--no-search" in err and ("--slo-target" in err or "--search-iters" in err), err
