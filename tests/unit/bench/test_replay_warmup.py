"""`bench replay --warmup-s`: the trace's last seconds before t = 0 are replayed live after the idle lead,
unmeasured, so a policy meets t = 0 from the state that load left it in (found: autoscale began the measured span
with no instance at all, its first requests waiting ~5 s for fresh engines). The planning (which requests, where
the history ends, where the warm-up goes on the policy's grid, what the twin replays) is checked without
processes; one tiny real run checks that the warm-up is answered, left out of the measured figures and reported
apart."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from replay_harness import LAUNCH_UNIX, PROFILE, replay_args, replay_setup
from warmserve.bench import replay as R
from warmserve.errors import InvalidArgumentError

WORKLOAD = ["--time-scale", "0.15", "--rate", "0.8", "--duration-s", "1200", "--start-lead-s", "40"]


@pytest.fixture(scope="module")
def setup():
    return replay_setup(*WORKLOAD, "--warmup-s", "150")


def test_warmup_is_the_trace_just_before_t0_and_the_twin_replays_the_same_requests(setup):
    from warmserve.sim.simulator import Simulator

    a, w, served_sim, cost = setup
    warm_s = a.warmup_s * a.time_scale
    window_s = a.window_s * a.time_scale
    warm = R.warmup_requests(w, a.vocab_size, a.seed, warm_s)
    h = w.history
    in_span = (h.arrival_s >= -warm_s) & (h.arrival_s < 0)
    assert len(warm) == int(in_span.sum()) > 3
    assert all(-warm_s <= r.arrival_s < 0 for r in warm)
    assert [len(r.prompt) for r in warm] == h.prompt_tokens[in_span].tolist()
    assert [r.max_tokens for r in warm] == h.output_tokens[in_span].tolist()
    # the measured requests are the same with and without a warm-up
    plain_w, _ = R.build_workload(replay_args(*WORKLOAD))
    assert R.replay_requests(w, a.vocab_size, a.seed) == R.replay_requests(plain_w, a.vocab_size, a.seed)

    wl, twin_warm_s = R.with_idle_lead(w, window_s, R.idle_windows(a), warm_s)
    sim = Simulator(wl, served_sim, "warmserve", cost=cost,
                    config=R.twin_config(a.cpu_workers, window_s, a.drain_s, warmup_s=twin_warm_s))
    # the twin's warm-up is exactly the live one: nothing in the idle lead, then the same requests
    k = sim.n_warm
    assert k == len(warm)
    np.testing.assert_allclose(np.asarray(sim.arrival[:k]) - w.clock0_s, [r.arrival_s for r in warm], atol=1e-6)
    assert [sim.names[m] for m in sim.req_model[:k]] == [r.model for r in warm]
    assert sim.prompt[:k] == [len(r.prompt) for r in warm] and sim.output[:k] == [r.max_tokens for r in warm]
    # it starts at the idle lead, which lies before the warm-up's window
    lead_from = math.floor((w.clock0_s - warm_s) / window_s + 1e-9) - R.idle_windows(a)
    assert w.clock0_s - twin_warm_s == pytest.approx(lead_from * window_s, abs=1e-5)
    result = sim.run()
    assert result.summary["requests"] == len(w.trace)  # the warm-up is left out of the twin's statistics
    s, _ = R.run_sim("warmserve", w, served_sim, a, cost)
    assert s["warmup"]["requests"] == len(warm) and s["requests"] == len(w.trace)


def _live_policy(a, w, served_sim, cost, t_launch, startup_s):
    """The controller's policy as `serve --history` builds it, started startup_s after the launch."""
    from warmserve.controller.controller import history_on_clock, policy_clock_origin
    from warmserve.policy import make_policy
    from warmserve.policy.config import PolicyConfig
    from warmserve.sim.inputs import model_infos

    t0_unix, rows = R.plan_live_history(w, served_sim, cost, a, t_launch)
    hist = {}
    for m, s, av, pk in rows:
        hist.setdefault(m, []).append((s, av, pk))
    hist = {m: tuple(np.array(c) for c in zip(*sorted(v))) for m, v in hist.items()}
    origin = policy_clock_origin(t_launch + startup_s, hist, "UTC")  # as the replay tells its cluster
    pol = make_policy("warmserve", models=model_infos(served_sim, cost),
                      config=PolicyConfig(window_s=a.window_s * a.time_scale),
                      history=history_on_clock(hist, origin, {s.name for s in served_sim}))
    return pol, t0_unix, rows, origin


@pytest.mark.parametrize("phase_s,startup_s", [(13.0, 5.0), (0.0, 20.0), (44.0, 40.0)])
def test_idle_lead_comes_before_the_warmup_and_the_history_ends_where_it_begins(setup, phase_s, startup_s):
    from warmserve.policy.state import ClusterState
    from warmserve.sim.inputs import model_infos
    from warmserve.sim.simulator import Simulator

    a, w, served_sim, cost = setup
    window_s = a.window_s * a.time_scale
    warm_s = a.warmup_s * a.time_scale
    n_idle = R.idle_windows(a)
    t_launch = LAUNCH_UNIX + phase_s
    pol, t0_unix, rows, origin = _live_policy(a, w, served_sim, cost, t_launch, startup_s)
    start = t0_unix - warm_s  # the live replay begins with the warm-up
    jw = math.floor((start - origin) / window_s + 1e-9)
    # the warm-up starts at least the lead after the launch, n_idle windows after the launch's window, at the
    # offset in its window that it has on the twin's clock
    assert start - t_launch >= a.start_lead_s
    assert jw - math.floor((t_launch - origin) / window_s) == n_idle
    assert (start - origin) % window_s == pytest.approx((w.clock0_s - warm_s) % window_s, abs=1e-6)
    # the history: loaded windows end where the idle ones begin, the idle ones are zero, and nothing is said of
    # the warm-up's windows (they are live load)
    idx = {r: math.floor((r[1] - origin) / window_s) for r in rows}
    assert max(idx.values()) == jw - 1
    assert all(r[2] == r[3] == 0.0 for r, j in idx.items() if j >= jw - n_idle)
    assert sum(r[2] for r, j in idx.items() if j < jw - n_idle) > 0
    # the live policy idles until the warm-up starts; its history before the warm-up is the twin's, window for window
    state = ClusterState.uniform(1, model_infos(served_sim, cost), gpus_per_server=a.cpu_workers,
                                 gpu_bytes=cost.gpu.pool_bytes)
    t = t_launch + startup_s
    while t < start:
        pol.tick(state, t - origin)
        t += 0.5
    wl, twin_warm_s = R.with_idle_lead(w, window_s, n_idle, warm_s)
    sim = Simulator(wl, served_sim, "warmserve", cost=cost,
                    config=R.twin_config(a.cpu_workers, window_s, a.drain_s, warmup_s=twin_warm_s))
    sim.run()
    js = math.floor((w.clock0_s - warm_s) / window_s + 1e-9)
    n = min(jw, js)
    sh, lh = sim.policy._hist, pol._hist
    rows_s = [sh.index[m] for m in sorted(sh.index)]
    rows_l = [lh.index[m] for m in sorted(lh.index)]
    assert sorted(sh.index) == sorted(lh.index)
    np.testing.assert_allclose(sh.avg[rows_s, js - n:js], lh.avg[rows_l, jw - n:jw], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sh.peak[rows_s, js - n:js], lh.peak[rows_l, jw - n:jw], rtol=1e-12, atol=1e-12)
    assert (lh.avg[:, jw - n_idle:jw] == 0).all()


def test_schedule_sends_the_warmup_first_and_the_split_gives_times_from_t0():
    from warmserve.workload.replay_client import Outcome, ReplayRequest

    warm = [ReplayRequest(-3.0, "a", [5], 2), ReplayRequest(-0.5, "b", [5, 6], 2)]
    reqs = [ReplayRequest(0.0, "a", [7], 2), ReplayRequest(2.0, "b", [8], 2)]
    sched = R.live_schedule(warm, reqs, 4.0)
    assert [r.arrival_s for r in sched] == [1.0, 3.5, 4.0, 6.0]
    assert R.live_schedule([], reqs, 0.0) is reqs
    outs = [Outcome(i, r.model, r.arrival_s, len(r.prompt), r.max_tokens, status="ok", sent_s=r.arrival_s,
                    first_s=r.arrival_s + 0.25, end_s=r.arrival_s + 1.0) for i, r in enumerate(sched)]
    w_outs, m_outs = R.split_outcomes(outs, len(warm), 4.0)
    assert [o.arrival_s for o in w_outs] == [-3.0, -0.5] and [o.arrival_s for o in m_outs] == [0.0, 2.0]
    assert [o.index for o in m_outs] == [0, 1] and [o.ttft_s for o in m_outs] == [0.25, 0.25]
    assert [o.end_s for o in m_outs] == [1.0, 3.0]


def test_warmup_longer_than_the_pre_history_and_negative_ones_are_refused():
    with pytest.raises(InvalidArgumentError, match="raise --pre-s to at least 700"):
        R.check_args(replay_args(*WORKLOAD, "--warmup-s", "700"))
    with pytest.raises(InvalidArgumentError, match="--warmup-s must be a finite number >= 0"):
        R.check_args(replay_args(*WORKLOAD, "--warmup-s", "-1"))


def test_reuse_live_takes_warmup_as_part_of_the_workload(tmp_path):
    a = replay_args(*WORKLOAD, "--warmup-s", "150")
    w, _ = R.build_workload(a)
    n = len(w.trace)
    pol = {"ttft_p50_s": 1.0, "ttft_p99_s": 2.0, "answered": n, "requests": n, "outcomes": {"ok": n}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"workload": {"requests": n}, "args": vars(a), "policies": {"autoscale": pol}}))
    with pytest.raises(InvalidArgumentError, match="--warmup-s 150.0 there, 0.0 here"):
        R.main(replay_args(*WORKLOAD, "--policy", "autoscale", "--quiet", "--reuse-live", str(path)))
    out = tmp_path / "again.json"
    assert R.main(replay_args(*WORKLOAD, "--warmup-s", "150", "--policy", "autoscale", "--quiet", "--reuse-live",
                        str(path), "--json", str(out))) == 0
    assert json.loads(out.read_text())["workload"]["warmup_requests"] > 0


def test_tiny_live_replay_answers_the_warmup_and_keeps_it_out_of_the_measured_figures(tmp_path):
    """A real `warmserve serve` with 2 CPU workers: the warm-up's requests are all answered and reported in their
    own block, the measured figures hold exactly the trace's requests, and the twin replays the same warm-up."""
    pytest.importorskip("aiohttp")
    out = tmp_path / "replay.json"
    args = ["bench", "replay", "--policy", "warmserve", "--models", "2", "--checkpoints", "llama-20m",
            "--cpu-workers", "2", "--duration-s", "300", "--time-scale", "0.02", "--rate", "2",
            "--max-prompt-tokens", "16", "--max-output-tokens", "2", "--start-lead-s", "0", "--drain-s", "15",
            "--warmup-s", "200", "--seed", "1", "--profile", PROFILE, "--json", str(out),
            "--log-dir", str(tmp_path / "logs"), "--quiet"]
    p = subprocess.run([sys.executable, "-m", "warmserve", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    doc = json.loads(out.read_text())
    n, n_warm = doc["workload"]["requests"], doc["workload"]["warmup_requests"]
    assert n >= 3 and n_warm >= 2
    s = doc["policies"]["warmserve"]
    assert s["requests"] == n and len(doc["ttft_s"]["warmserve"]) == n
    assert sum(s["outcomes"].values()) == n and s["answered"] == n, s.get("error_samples")
    wu = s["warmup"]
    assert wu["requests"] == n_warm and sum(wu["outcomes"].values()) == n_warm and wu["accounted"]
    assert wu["answered"] == n_warm and wu["outcomes"]["ok"] == n_warm
    # Seed 1: the history prewarms llama-20m-a, whose start is the warm-up's (counted before t = 0); the measured
    # span adds one cold start, llama-20m-b's for its one request. A measured count that also held the warm-up's
    # start would read 2, as a cold start or a prewarmed one (the measured span has none of its own). The cluster
    # comes up after the warm-up's planned start (--start-lead-s 0), so on a loaded machine the warm-up's first
    # request (1.6 s in) can come before the policy's first tick and start llama-20m-a cold (seen: start lag
    # 12.7 s, prewarmed starts 0): the warm-up's one start is either, live. The twin, whose first tick comes before
    # any request, sees the same split with the warm-up's start a prewarmed one, as live on an unloaded machine.
    sim = doc["simulated"]["policies"]["warmserve"]
    assert wu["instance_starts"] == 1 and wu["starts_from_prewarm"] in (0, 1), wu
    assert (s["instance_starts"], s["starts_cold"], s["starts_from_prewarm"]) == (1, 1, 0)
    assert (sim["warmup"]["instance_starts"], sim["warmup"]["starts_from_prewarm"], sim["instance_starts"]) == (1, 1, 1)
    assert sim["requests"] == n and sim["warmup"]["requests"] == n_warm
