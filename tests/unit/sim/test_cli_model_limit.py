"""`warmserve simulate --models` beyond what the run can hold (found in review): --models 100000 built a stretch of the
Azure trace per model and history day for minutes, then simulated for hours, refused only by a static policy's
layout if at all. Refused before the workload is built, naming the count, the limit and the fix: the cluster serves
four models in turn at each place its GPUs' memory pools have for one (as many as shards of the smallest model fit),
and the servegen workload has one model per client series of its data (each reused shifted by up to 6 days)."""

from __future__ import annotations

import argparse

import pytest

from warmserve import cli
from warmserve.errors import InvalidArgumentError
from warmserve.sim.cli import add_arguments, build_preset
from warmserve.sim.cli_checks import check_model_count
from warmserve.sim.costmodel import CostModel

RUN = ["--duration-s", "10", "--policy", "warmserve", "--no-search", "--quiet"]


def _never_built(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the workload was built")

    monkeypatch.setattr("warmserve.workload.recipes._circular_stretch", boom)
    monkeypatch.setattr("warmserve.sim.presets.servegen_workload", boom)


@pytest.mark.parametrize("flags, limit, fix", [
    (["--models", "100000"], 320, "--gpus 5000"),
    (["--preset", "paper-code", "--models", "400"], 320, "--workload paper-code --gpus 24"),
    (["--preset", "scale", "--models", "100000"], 320, "--gpus 5000"),
    (["--workload", "servegen", "--gpus", "4", "--models", "100"], 80, "--gpus 5"),
])
def test_more_models_than_the_gpus_hold_is_refused_before_the_workload(monkeypatch, capsys, flags, limit, fix):
    _never_built(monkeypatch)
    rc = cli.main(["simulate", *flags, *RUN])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    n = flags[flags.index("--models") + 1]
    assert f"--models {n}:" in err and f"at most {limit} models" in err, err
    assert f"give --models {limit} or fewer" in err and f"{fix} or more" in err, err


def test_more_models_than_servegen_has_series_is_refused_before_the_workload(monkeypatch, capsys):
    _never_built(monkeypatch)
    rc = cli.main(["simulate", "--preset", "scale", "--gpus", "1024", "--models", "1000", *RUN])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--models 1000:" in err and "392 models' series" in err and "give --models 392 or fewer" in err, err


def _args(*flags):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(flags))


@pytest.mark.parametrize("gpu", ["H100-80GB", "A100-80GB"])
def test_the_limit_is_the_shards_of_the_smallest_model_the_gpus_hold(gpu):
    cost = CostModel.for_gpu(gpu)
    for n, ok in ((320, True), (321, False)):
        args = _args("--models", str(n), "--gpu", gpu)
        preset = build_preset(args)
        if ok:
            check_model_count(args, preset, cost)
        else:
            with pytest.raises(InvalidArgumentError, match="at most 320 models, 80 at once") as e:
                check_model_count(args, preset, cost)
            assert e.value.fields["limit"] == 320 and e.value.fields["flag"] == "--models"
