"""`warmserve simulate` workload knobs (found in review): --burst-cv, --time-scale and --alpha were accepted for the
servegen workload and the scale preset and ignored (the JSON still recorded them), and under --time-scale the
recorded rate was the trace-time one while the replay offered rate / time scale per second."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.cli import add_arguments, build_preset

BASE = ["--gpus", "8", "--models", "4", "--duration-s", "1200", "--history-days", "1"]


def _args(*flags):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(flags))


def _build(*flags):
    return build_preset(_args(*flags)).build(1.0, 0)


@pytest.mark.parametrize("preset", [["--workload", "servegen"], ["--preset", "scale"]])
def test_burst_cv_and_time_scale_reach_the_servegen_workload(preset):
    plain = _build(*preset, *BASE)
    w = _build(*preset, *BASE, "--burst-cv", "4", "--time-scale", "0.5")
    assert (w.meta["burst_cv"], w.meta["time_scale"], w.duration_s) == (4.0, 0.5, 600.0)
    assert abs(len(w.trace) - len(plain.trace)) <= 0.01 * len(plain.trace)  # the same requests, in half the time
    t = w.trace.arrival_s[w.trace.model == 0]
    iat = np.diff(t)[np.diff(t // 300.0) == 0]  # within a (compressed) 10-minute window
    assert iat.std() / iat.mean() > 2.5
    assert w.models == plain.models


def test_alpha_reaches_the_scale_presets_paper_recipe_and_is_refused_for_servegen():
    w = _build("--preset", "scale", "--workload", "paper-conv", "--gpus", "8", "--models", "4", "--alpha", "2")
    assert w.meta["alpha"] == 2.0 and w.meta["shares"][0] / w.meta["shares"][1] == pytest.approx(4.0)
    with pytest.raises(InvalidArgumentError, match="--alpha 2: the servegen workload has no power-law split"):
        build_preset(_args("--workload", "servegen", *BASE, "--alpha", "2"))


@pytest.mark.parametrize("flag,value", [("--time-scale", "0"), ("--time-scale", "-1"), ("--burst-cv", "0")])
def test_a_non_positive_factor_is_refused(flag, value):
    with pytest.raises(InvalidArgumentError, match=f"{flag} "):
        build_preset(_args("--workload", "servegen", *BASE, flag, value))


@pytest.mark.parametrize("preset", [["--preset", "paper-conv", "--rate", "24"],
                                    ["--workload", "servegen", *BASE, "--rate", "8"]])
def test_the_recorded_rate_says_what_the_replay_offers_per_second(preset):
    one = _build(*preset)
    half = _build(*preset, "--time-scale", "0.5")
    assert len(half.trace) == pytest.approx(len(one.trace), rel=0.01)  # the count is kept, as before
    for w, s in ((one, 1.0), (half, 0.5)):
        rate = float(preset[-1])
        assert w.meta["offered_rate_rps"] == pytest.approx(rate / s)
        assert len(w.trace) / w.duration_s == pytest.approx(rate / s, rel=0.05)


def test_the_rate_help_says_its_time_base():
    p = argparse.ArgumentParser()
    add_arguments(p)
    helps = {a.dest: a.help for a in p._actions}
    assert "per second of trace time" in helps["rate"] and "/ --time-scale" in helps["rate"]
    assert "compresses" in helps["time_scale"]
