"""`warmserve simulate` flags out of range (found in review): --time-scale inf passed the `> 0` check and ended in
an OverflowError deep in the driver; --seed -1 and --seeds 0,-1 were taken and ended in numpy's ValueError naming
no flag; a huge --burst-cv passed `> 0` and ran 0 requests (every arrival NaN, dropped) with exit status 0."""

from __future__ import annotations

import argparse

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.cli import add_arguments, build_preset, check_args, parse_seeds
from warmserve.workload.recipes import MAX_BURST_CV

BASE = ["--workload", "paper-conv", "--models", "1", "--gpus", "8", "--duration-s", "300"]


def _args(*flags):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args([*BASE, *flags])


@pytest.mark.parametrize("flag,value", [("--time-scale", "inf"), ("--time-scale", "nan"), ("--burst-cv", "inf"),
                                        ("--burst-cv", "1e4"), ("--burst-cv", "nan"),
                                        ("--burst-cv", str(MAX_BURST_CV * 1.01))])
def test_a_factor_out_of_range_is_refused_naming_its_flag(flag, value):
    with pytest.raises(InvalidArgumentError, match=f"{flag} ") as e:
        build_preset(_args(flag, value))
    assert e.value.flag == flag


def test_a_time_scale_that_squeezes_the_replay_under_a_tick_is_refused():
    """Found in review: --time-scale 1e-9 ran "1425 requests over 0 s (23750000000.00 rps)", nothing said."""
    with pytest.raises(InvalidArgumentError, match="less than one policy tick") as e:
        build_preset(_args("--time-scale", "1e-9", "--duration-s", "60"))
    assert e.value.flag == "--time-scale" and "Fix: a --time-scale of at least 0.0167" in str(e.value)
    assert build_preset(_args("--time-scale", "0.02", "--duration-s", "60")) is not None


def test_the_bound_itself_is_taken():
    assert build_preset(_args("--burst-cv", str(MAX_BURST_CV))) is not None


@pytest.mark.parametrize("flags,flag", [(["--seed", "-1"], "--seed"), (["--seeds", "0,-1"], "--seeds"),
                                        (["--seeds", "-3"], "--seeds")])
def test_a_negative_seed_is_refused_naming_its_flag(flags, flag):
    a = _args(*flags)
    for check in (parse_seeds, check_args):
        with pytest.raises(InvalidArgumentError, match=f"{flag} .*>= 0") as e:
            check(a)
        assert e.value.flag == flag


def test_seeds_zero_and_up_are_taken():
    assert parse_seeds(_args("--seeds", "0,1,2")) == [0, 1, 2]
    assert parse_seeds(_args("--seed", "0")) == [0]
    # --seeds overrides --seed: a negative --seed under --seeds is not used, so not refused
    assert parse_seeds(_args("--seed", "-1", "--seeds", "4")) == [4]


def test_the_cli_exits_2_with_one_line(capsys):
    from warmserve import cli

    rc = cli.main(["simulate", *BASE, "--time-scale", "inf", "--policy", "shared", "--no-search", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--time-scale inf" in err and len(err.strip().splitlines()) == 1, err
