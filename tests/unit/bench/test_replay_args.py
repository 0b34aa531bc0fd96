"""`bench replay`'s arguments: per-policy options for the cluster and the twin, the --reuse-live check, bad values
refused up front with their fix, a `serve` child that exits early, and results kept when a later policy fails."""

import argparse
import json
import os

import numpy as np
import pytest

from warmserve.bench import replay as R
from warmserve.errors import InvalidArgumentError, WarmServeError

PROFILE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "bench", "replay", "profile_cpu.json")
WORKLOAD = ["--time-scale", "0.15", "--rate", "0.8", "--duration-s", "1200"]


def _args(*extra):
    p = argparse.ArgumentParser()
    R.add_arguments(p)
    return p.parse_args(list(extra))


# --------------------------------------------------------------------------------------------- --policy-option

def test_policy_options_are_scaled_per_policy_and_reach_the_twin():
    a = _args(*WORKLOAD, "--policy-option", "load_window_s=60", "--policy-option", "warmserve:scale_out_now=true",
              "--policy-option", "autoscale:min_lifetime_s=20", "--policy-option", "warmserve:coserve_tpot_s=0.2")
    opts = R.policy_options(a, ["warmserve", "autoscale"])
    # times are trace seconds, scaled like --window-s; coserve_tpot_s is a decode latency, not trace time
    assert float(opts["warmserve"]["load_window_s"]) == pytest.approx(9.0)
    assert opts["warmserve"]["scale_out_now"] == "true" and "min_lifetime_s" not in opts["warmserve"]
    assert float(opts["autoscale"]["min_lifetime_s"]) == pytest.approx(3.0)
    assert "scale_out_now" not in opts["autoscale"] and opts["warmserve"]["coserve_tpot_s"] == "0.2"
    assert {"load_window_s", "min_lifetime_s", "preempt_after_s", "replan_s", "retain_wait_s",
            "scale_in_hold_s", "last_instance_hold_s", "scale_in_window_s"} == set(R.TRACE_TIME_OPTIONS)
    # the twin runs the policy with them: no prewarming, no prewarm hits
    from warmserve.sim.config import ServedModel
    from warmserve.sim.costmodel import CostModel

    w, served = R.build_workload(a)
    ss = [ServedModel(n, c) for n, c in served]
    cost = CostModel.from_profile(PROFILE)
    plain, _ = R.run_sim("warmserve", w, ss, a, cost)
    off, _ = R.run_sim("warmserve", w, ss, a, cost, {"prewarm": "false"})
    assert plain["starts_from_prewarm"] > 0 and off["starts_from_prewarm"] == 0


@pytest.mark.parametrize("option,policies,says", [
    ("migrate_max_in_flight=4", "warmserve,autoscale", "autoscale fixes migrate_max_in_flight=0"),
    ("autoscale:prewarm=true", "warmserve,autoscale", "autoscale fixes prewarm=False"),
    ("window_s=60", "warmserve", "--window-s"),
    ("shared:load_window_s=60", "warmserve,autoscale", "not one of the policies"),
    ("load_window_s=soon", "warmserve", "time in trace seconds"),
    ("load_window_s=inf", "warmserve", "finite"),
    ("no_such_field=1", "warmserve", "unknown keys"),
    ("prewarm", "warmserve", "KEY=VALUE"),
])
def test_policy_options_refused(option, policies, says):
    a = _args(*WORKLOAD, "--policy-option", option)
    with pytest.raises(InvalidArgumentError, match=says.replace("(", r"\(").replace("$", r"\$")):
        R.policy_options(a, policies.split(","))


def test_policy_option_the_variant_fixes_to_the_same_value_is_accepted():
    a = _args(*WORKLOAD, "--policy-option", "prewarm=false")
    assert R.policy_options(a, ["autoscale"]) == {"autoscale": {"prewarm": "false"}}


def test_serve_child_gets_the_options_and_its_early_exit_says_why(tmp_path):
    """A real `warmserve serve` child: an option it refuses comes back as its exit code and its own error line,
    not as a wait of start_timeout_s."""
    with pytest.raises(WarmServeError) as e:
        R.LiveCluster("warmserve", [("m-a", "llama-20m")], cpu_workers=1, history_path="", window_s=45.0,
                      log_dir=str(tmp_path), start_timeout_s=120, policy_options={"load_window_s": "nan"})
    assert e.value.exit_code == 2 and "load_window_s" in str(e.value) and "finite" in str(e.value)


def test_serve_child_that_exits_early_raises_with_its_log(tmp_path):
    missing = str(tmp_path / "no-history.csv")
    with pytest.raises(WarmServeError) as e:
        R.LiveCluster("warmserve", [("m-a", "llama-20m")], cpu_workers=1, history_path=missing, window_s=45.0,
                      log_dir=str(tmp_path), start_timeout_s=120)
    assert e.value.exit_code != 0 and "does not exist" in str(e.value) and "within" not in str(e.value)


# --------------------------------------------------------------------------------------------- --reuse-live

def _earlier(tmp_path, a, policies=("autoscale",)):
    w, _ = R.build_workload(a)
    n = len(R.replay_requests(w, a.vocab_size, a.seed))
    pol = {"requests": n, "answered": n, "ttft_p50_s": 0.5, "ttft_p99_s": 2.0, "outcomes": {"ok": n}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"workload": {"requests": n}, "args": vars(a), "policies": {p: pol for p in policies},
                                "ttft_s": {p: [0.5] * n for p in policies}}))
    return str(path)


def test_reuse_live_refuses_another_workload_naming_what_differs(tmp_path):
    path = _earlier(tmp_path, _args(*WORKLOAD))
    b = _args(*WORKLOAD, "--max-output-tokens", "64", "--max-prompt-tokens", "1024", "--window-s", "600",
              "--policy", "autoscale", "--quiet", "--reuse-live", path)
    with pytest.raises(InvalidArgumentError) as e:
        R.main(b)
    for k in ("--max-output-tokens", "--max-prompt-tokens", "--window-s"):
        assert k in str(e.value)
    assert "--rate" not in str(e.value)


def test_reuse_live_refuses_other_policy_options_and_missing_policies(tmp_path):
    path = _earlier(tmp_path, _args(*WORKLOAD, "--policy-option", "autoscale:load_window_s=60"))
    b = _args(*WORKLOAD, "--policy", "autoscale", "--quiet", "--reuse-live", path)
    with pytest.raises(InvalidArgumentError, match="--policy-option for autoscale"):
        R.main(b)
    b = _args(*WORKLOAD, "--policy", "autoscale,warmserve", "--quiet", "--reuse-live", path,
              "--policy-option", "autoscale:load_window_s=60")
    with pytest.raises(InvalidArgumentError, match=r"no live results for \['warmserve'\]"):
        R.main(b)


def test_reuse_live_of_the_same_workload_runs(tmp_path):
    a = _args(*WORKLOAD)
    path = _earlier(tmp_path, a)
    with open(path) as f:
        older = json.load(f)
    del older["args"]["policy_option"], older["args"]["vocab_size"]  # a JSON from before those arguments
    with open(path, "w") as f:
        json.dump(older, f)
    out = tmp_path / "again.json"
    b = _args(*WORKLOAD, "--policy", "autoscale", "--quiet", "--reuse-live", path, "--json", str(out))
    assert R.main(b) == 0
    assert json.loads(out.read_text())["policies"]["autoscale"]["ttft_p99_s"] == 2.0


# --------------------------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("extra,says", [
    (["--checkpoints", ","], "names no checkpoint"),
    (["--checkpoints", "llama-20m,gpt-5"], "unknown demo checkpoints"),
    (["--window-s", "0", "--profile", PROFILE], "--window-s must be a finite number > 0"),
    (["--time-scale", "0.33", "--profile", PROFILE], "Fix: --time-scale 0.32"),
    (["--cpu-workers", "0"], "--cpu-workers must be >= 1"),
    (["--start-lead-s", "-5"], "--start-lead-s must be a finite number >= 0"),
])
def test_bad_values_are_refused_before_anything_starts(tmp_path, extra, says):
    a = _args("--policy", "autoscale", "--duration-s", "60", "--quiet", "--log-dir", str(tmp_path / "logs"), *extra)
    with pytest.raises(InvalidArgumentError, match=says.replace("(", r"\(")):
        R.main(a)
    assert not (tmp_path / "logs" / "serve-autoscale.log").exists()


# --------------------------------------------------------------------------------------------- partial results

def test_results_of_earlier_policies_are_written_before_a_later_one_fails(tmp_path, monkeypatch):
    """Two policies; a Ctrl-C during the second keeps the first one's results. (Two policies need the cluster
    path: an --endpoint run is one run under one label, so the live runs are stood in for.)"""
    a = _args("--policy", "warmserve,autoscale", "--duration-s", "200", "--time-scale", "0.02", "--rate", "3",
              "--max-output-tokens", "2", "--drain-s", "5", "--quiet", "--log-dir", str(tmp_path / "logs"),
              "--json", str(tmp_path / "r.json"))
    w, _ = R.build_workload(a)
    n = len(w.trace)
    ran = []

    def run_live(policy, w, reqs, *rest):
        ran.append(policy)
        if len(ran) == 2:
            raise KeyboardInterrupt
        s = {"requests": len(reqs), "answered": len(reqs), "ttft_p50_s": 0.1, "ttft_p99_s": 0.2,
             "outcomes": {"ok": len(reqs)}}
        return s, np.full(len(reqs), 0.1)

    monkeypatch.setattr(R, "run_live", run_live)
    with pytest.raises(KeyboardInterrupt):
        R.main(a)
    assert ran == ["warmserve", "autoscale"]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert list(doc["policies"]) == ["warmserve"] and doc["policies"]["warmserve"]["requests"] == n
    assert doc["policies"]["warmserve"]["outcomes"]["ok"] == n and len(doc["ttft_s"]["warmserve"]) == n
    assert np.isfinite(doc["policies"]["warmserve"]["ttft_p99_s"])


def test_an_instance_capacity_the_twin_cannot_model_is_refused_before_any_live_run(monkeypatch):
    """Found in review: past the live engine's 2048-token steps the engines run a batch the simulated twin refuses
    (it takes every running sequence into each step); the refusal came after the live runs."""

    def started(*a, **k):
        raise AssertionError("a live cluster started")

    monkeypatch.setattr(R, "LiveCluster", started)
    b = _args(*WORKLOAD, "--policy", "warmserve,autoscale", "--quiet",
              "--policy-option", "autoscale:instance_capacity=4096")
    with pytest.raises(InvalidArgumentError, match="instance_capacity=4096 for autoscale.*instance_capacity <= 2048"):
        R.main(b)
    R.check_twin_batches(["warmserve"], {"warmserve": {"instance_capacity": "2048"}})  # the budget itself: fine


def test_each_results_file_gets_its_own_log_folder(tmp_path, monkeypatch):
    """Two runs into two results files of one folder keep their logs apart (one shared logs/ was overwritten);
    --log-dir still wins."""
    a = R.log_folder(_args("--json", str(tmp_path / "run_a.json")))
    b = R.log_folder(_args("--json", str(tmp_path / "run_b.json")))
    assert a == str(tmp_path / "run_a-logs") and b == str(tmp_path / "run_b-logs")
    monkeypatch.chdir(tmp_path)
    assert R.log_folder(_args()) == str(tmp_path / "replay-logs")
    assert R.log_folder(_args("--json", "x.json", "--log-dir", "mine")) == "mine"
