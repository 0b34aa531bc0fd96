"""`warmserve simulate --sweep-rate`: P99 TTFT and SLO attainment per policy against offered rate."""

import json

import pytest

from warmserve import cli
from warmserve.sim.runner import band_policies, highest_rate_meeting


def test_sweep_writes_json_per_policy_with_rising_rates_and_a_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    # a low rate (0.5 rps at scale 1, not 2): every run of the sweep replays the 600 s warm-up before its span
    rc = cli.main(["simulate", "--preset", "artifact-code", "--duration-s", "60", "--rate", "0.5",
                   "--policy", "warmserve,autoscale", "--seeds", "0,1", "--sweep-rate", "2,0.5,1",
                   "--cold-start-band", "14,35", "--quiet", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["preset"] == "artifact-code" and doc["alpha"] == 0.5 and len(doc["models"]) == 4
    sw = doc["sweep"]
    assert sw["rate_scales"] == [0.5, 1.0, 2.0] and sw["seeds"] == [0, 1]
    assert set(sw["policies"]) == {"warmserve", "autoscale"}
    for name, pol in sw["policies"].items():
        pts = pol["points"]
        assert [p["rate_scale"] for p in pts] == [0.5, 1.0, 2.0]
        rates = [p["offered_rate_rps"] for p in pts]
        assert all(a < b for a, b in zip(rates, rates[1:])), rates
        for p in pts:
            assert len(p["ttft_p99_s_per_seed"]) == 2 and len(p["slo_attainment_per_seed"]) == 2
            assert p["ttft_p99_s"] > 0 and 0 <= p["slo_attainment"] <= 1
            assert p["slo_attainment"] == pytest.approx(sum(p["slo_attainment_per_seed"]) / 2)
        assert 0 <= pol["max_swept_rate_under_slo_rps"] <= rates[-1]
    band = sw["policies"]["autoscale"]["cold_start_band"]
    assert band["cold_start_s"] == [14.0, 35.0]
    assert band["low"] == sw["policies"]["autoscale"]["points"]  # 14 s is the default engine init: same runs
    assert [p["rate_scale"] for p in band["high"]] == [0.5, 1.0, 2.0]
    assert "cold_start_band" not in sw["policies"]["warmserve"]
    assert png.stat().st_size > 10_000
    assert "autoscale" in capsys.readouterr().out


def test_a_longer_cold_start_lengthens_autoscale_p99_in_the_band(tmp_path):
    """Where autoscale scales idle models to zero (the paper's §5 rule), bursts wait for cold starts: the band's
    high end shows in its P99."""
    out = tmp_path / "sweep.json"
    assert cli.main(["simulate", "--preset", "artifact-code", "--duration-s", "120", "--rate", "6",
                     "--policy", "autoscale", "--seeds", "0", "--sweep-rate", "1", "--burst-cv", "4",
                     "--policy-option", "idle_to_zero=true", "--quiet", "--json", str(out)]) == 0
    band = json.loads(out.read_text())["sweep"]["policies"]["autoscale"]["cold_start_band"]
    assert band["high"][0]["ttft_p99_s"] > band["low"][0]["ttft_p99_s"]


def test_band_goes_to_cold_engine_policies_only():
    assert band_policies(["warmserve", "autoscale", "shared", "engine-prewarm-only"]) == ["autoscale"]


def test_highest_rate_meeting_stops_at_the_first_failing_rate():
    pts = [{"offered_rate_rps": r, "slo_attainment": a} for r, a in ((4, 0.995), (1, 1.0), (8, 0.9), (16, 0.995))]
    assert highest_rate_meeting(pts, 0.99) == 4
    assert highest_rate_meeting(pts[2:3], 0.99) == 0.0


def test_sweep_rejects_bad_scales_and_band(capsys):
    assert cli.main(["simulate", "--preset", "artifact-code", "--duration-s", "60", "--rate", "2", "--policy",
                     "warmserve", "--sweep-rate", "0,1", "--quiet"]) == 2
    assert "rate scales must be > 0" in capsys.readouterr().err
    assert cli.main(["simulate", "--preset", "artifact-code", "--duration-s", "60", "--rate", "2", "--policy",
                     "autoscale", "--sweep-rate", "1", "--cold-start-band", "35", "--quiet"]) == 2
    assert "--cold-start-band '35'" in capsys.readouterr().err
