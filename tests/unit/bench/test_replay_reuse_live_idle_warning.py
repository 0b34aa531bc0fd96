"""`bench replay`'s warning that the idle lead covers all of --pre-s, with and without --reuse-live.

Found running the README's commands (bench/replay/README.md): a live run with `--start-lead-s 40` at x0.15 idles
2 windows (600 trace seconds), all of `--pre-s 600`, and says so with the fix "raise --pre-s above 600 or lower
--start-lead-s". The twin-only reruns the README shows (`--reuse-live FILE --sim-compute-scale 2`, `--profile
H100-80GB --sim-size llama2-7b`) printed the same warning, about a cluster they do not start, whose two fixes the
same command refuses ("--reuse-live ... is another workload or cluster: --pre-s 600.0 there, 900.0 here")."""

from __future__ import annotations

import numpy as np

from replay_harness import PROFILE, replay_args
from warmserve.bench import replay as R

WORKLOAD = ["--time-scale", "0.15", "--rate", "0.8", "--duration-s", "300", "--start-lead-s", "40", "--policy",
            "warmserve", "--quiet", "--profile", PROFILE]
WARNING = "the cluster idles through the 2 windows before the replay"


def run(monkeypatch, tmp_path, capsys, *extra) -> str:
    """stderr of one `bench replay` whose live run is a stand-in (no cluster starts)."""

    def run_live(policy, w, reqs, *rest):
        return {"requests": len(reqs), "answered": len(reqs), "ttft_p50_s": 0.1, "ttft_p99_s": 0.2,
                "outcomes": {"ok": len(reqs)}}, np.full(len(reqs), 0.1)

    capsys.readouterr()
    with monkeypatch.context() as mp:
        mp.setattr(R, "run_live", run_live)
        assert R.main(replay_args(*WORKLOAD, "--log-dir", str(tmp_path / "logs"), *extra)) == 0
    return capsys.readouterr().err


def test_a_live_run_warns_and_a_reuse_live_twin_of_it_does_not(monkeypatch, tmp_path, capsys):
    live = tmp_path / "live.json"
    err = run(monkeypatch, tmp_path, capsys, "--json", str(live))
    assert WARNING in err and "raise --pre-s above 600 or lower --start-lead-s" in err
    twin = run(monkeypatch, tmp_path, capsys, "--reuse-live", str(live), "--sim-compute-scale", "2",
               "--json", str(tmp_path / "twin.json"))
    assert WARNING not in twin, twin
    assert (tmp_path / "twin.json").exists()
