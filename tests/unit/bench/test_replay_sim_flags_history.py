"""`bench replay`'s twin-only flags (--sim-compute-scale, --sim-host-cores, --sim-size) leave the live cluster as it
is: its `serve --history` rows come from the plain --profile and the real checkpoints, and the twin, which runs with
the flags, forecasts from that same history.

Found in review: the cost model and served models the flags make for the twin also made the live history
(`--sim-compute-scale 4` changed 44 of its 70 rows), so a twin what-if changed the live run it was compared to."""

from __future__ import annotations

import numpy as np
import pytest

import warmserve.policy
import warmserve.sim.simulator
from cli_run import never
from replay_harness import LAUNCH_UNIX, PROFILE, replay_args
from warmserve.bench import replay as R
from warmserve.errors import InvalidArgumentError

WORKLOAD = ["--time-scale", "0.15", "--rate", "0.8", "--duration-s", "1200", "--start-lead-s", "40", "--policy",
            "warmserve", "--quiet", "--profile", PROFILE]
SIM_FLAGS = ["--sim-compute-scale", "4", "--sim-host-cores", "0", "--sim-size", "llama-90m"]


class Stop(Exception):
    pass


def live_rows(monkeypatch, tmp_path, *extra) -> list[tuple]:
    """The rows `run_live` hands the first policy's `serve --history`, planned at a fixed launch instant; the
    cluster itself is not started."""
    got = []
    plan = R.plan_live_history

    def planned(w, served, cost, args, t_launch):
        got.append(plan(w, served, cost, args, LAUNCH_UNIX))
        return got[-1]

    def cluster(*a, **k):
        raise Stop

    with monkeypatch.context() as mp, pytest.raises(Stop):
        mp.setattr(R, "plan_live_history", planned)
        mp.setattr(R, "LiveCluster", cluster)
        R.main(replay_args(*WORKLOAD, "--log-dir", str(tmp_path / "logs"), *extra))
    return got[0][1]


def twin_run(monkeypatch, tmp_path, *extra) -> dict:
    """What the twin of `bench replay` ran with: the forecast history its policy got, its cost model and models
    (the live run stood in for)."""
    got: dict = {}
    make, simulate = warmserve.policy.make_policy, warmserve.sim.simulator.simulate

    def make_policy(*a, history=None, **k):
        got["history"] = history
        return make(*a, history=history, **k)

    def simulate_(w, served, policy, *, cost=None, **k):
        got.update(cost=cost, sizes={s.size for s in served})
        return simulate(w, served, policy, cost=cost, **k)

    def run_live(policy, w, reqs, *rest):
        return {"requests": len(reqs), "answered": len(reqs), "ttft_p50_s": 0.1, "ttft_p99_s": 0.2,
                "outcomes": {"ok": len(reqs)}}, np.full(len(reqs), 0.1)

    with monkeypatch.context() as mp:  # undone before the next run, whose stand-ins would wrap these
        mp.setattr(warmserve.policy, "make_policy", make_policy)
        mp.setattr(warmserve.sim.simulator, "simulate", simulate_)
        mp.setattr(R, "run_live", run_live)
        assert R.main(replay_args(*WORKLOAD, "--log-dir", str(tmp_path / "logs"), *extra)) == 0
    return got


def test_twin_only_flags_leave_the_live_history_as_the_plain_profile_makes_it(monkeypatch, tmp_path):
    plain = live_rows(monkeypatch, tmp_path)
    assert plain and any(a > 0 for _, _, a, _ in plain)
    assert live_rows(monkeypatch, tmp_path, *SIM_FLAGS) == plain


def test_the_twin_runs_with_the_flags_and_forecasts_from_the_live_history(monkeypatch, tmp_path):
    # without the flags the twin's history is the live one (the same windows: plan_live_history, history_windows)
    plain = twin_run(monkeypatch, tmp_path)
    flagged = twin_run(monkeypatch, tmp_path, *SIM_FLAGS)
    assert flagged["cost"].gpu.compute_scale == 4.0 and flagged["cost"].gpu.host_cores == 0
    assert plain["cost"].gpu.compute_scale != 4.0 and flagged["sizes"] == {"llama-90m"} != plain["sizes"]
    assert plain["history"] and flagged["history"].keys() == plain["history"].keys()
    for m, series in plain["history"].items():
        for a, b in zip(series, flagged["history"][m]):
            np.testing.assert_array_equal(a, b, err_msg=m)


def test_a_gpu_latency_model_cannot_make_the_live_history_and_is_refused_before_any_cluster(monkeypatch, tmp_path):
    """The paper's GPU model has no latencies for the demo checkpoints the live cluster serves (before, --sim-size
    made the live history from llama2-7b's); the refusal names --reuse-live, with which it twins alone."""
    monkeypatch.setattr(R, "run_live", never("the live replay"))
    a = replay_args(*WORKLOAD[:-2], "--profile", "H100-80GB", "--sim-size", "llama2-7b", "--log-dir",
                    str(tmp_path / "logs"))
    with pytest.raises(InvalidArgumentError, match=r"H100-80GB has no latencies for the checkpoints .*Fix: .*"
                                                   r"--reuse-live"):
        R.main(a)
