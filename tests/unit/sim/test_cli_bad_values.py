"""`warmserve simulate` refuses values it used to replace or run on silently (found in review: --duration-s 0 ran
the preset's 1200 s, a negative span ran no request and printed NaN, a negative --ttft-slo-s was the SLO, --seeds ","
ended in a traceback), and the options --sweep-rate ignored (--rate-scale, every --slo-target after the first)."""

from __future__ import annotations

import pytest

from warmserve import cli

RUN = ["simulate", "--preset", "artifact-conv", "--policy", "warmserve", "--no-search", "--quiet"]


@pytest.mark.parametrize("extra,says", [
    (["--duration-s", "0"], "--duration-s 0"),
    (["--duration-s", "-5"], "--duration-s -5"),
    (["--duration-s", "nan"], "--duration-s nan"),
    (["--ttft-slo-s", "-1"], "--ttft-slo-s -1"),
    (["--seeds", ","], "--seeds ','"),
    (["--seeds", "0,x"], "--seeds '0,x'"),
    (["--rate-scale", "0"], "--rate-scale 0"),
    (["--duration-s", "30", "--sweep-rate", "1", "--rate-scale", "2", "--cold-start-band", "off"], "--rate-scale 2"),
    (["--duration-s", "30", "--sweep-rate", "1", "--slo-target", "0.99,0.9", "--cold-start-band", "off"],
     "--slo-target 0.99,0.9"),
])
def test_bad_values_are_refused_naming_the_option(extra, says, capsys):
    rc = cli.main(RUN + extra)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (rc, out, err)
    assert err.startswith("warmserve simulate: ") and says in err, err


def test_a_sweep_with_one_target_and_no_rate_scale_still_runs(capsys):
    assert cli.main(RUN + ["--duration-s", "30", "--sweep-rate", "1", "--slo-target", "0.9",
                           "--cold-start-band", "off"]) == 0
    assert "rate sweep over scales [1.0]" in capsys.readouterr().out
