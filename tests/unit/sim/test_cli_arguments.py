"""`warmserve simulate` options it used to ignore or reinterpret silently: --models 0 ran the preset's 7 models, and
--preset scale replayed ServeGen whatever --workload said."""

from __future__ import annotations

import json

import pytest

from warmserve import cli

SMALL = ["--duration-s", "60", "--rate", "2", "--policy", "warmserve", "--no-search", "--quiet"]


@pytest.mark.parametrize("models", ["0", "-3"])
@pytest.mark.parametrize("workload", ["paper-code", "servegen"])
def test_a_model_count_below_one_is_refused(models, workload, capsys):
    rc = cli.main(["simulate", "--workload", workload, "--gpus", "8", "--models", models] + SMALL)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert f"--models {models}" in err and "at least 1" in err, err


def _workload(tmp_path, *flags) -> dict:
    out = tmp_path / "r.json"
    assert cli.main(["simulate", "--preset", "scale", "--gpus", "8", "--models", "2", *flags] + SMALL
                    + ["--json", str(out)]) == 0
    return json.loads(out.read_text())["workload"]["meta"]


def test_the_scale_preset_replays_the_workload_asked_for(tmp_path):
    assert _workload(tmp_path)["recipe"] == "servegen"  # its default, as before
    assert _workload(tmp_path, "--workload", "servegen")["recipe"] == "servegen"
    meta = _workload(tmp_path, "--workload", "paper-conv")
    assert (meta["recipe"], meta["kind"]) == ("paper", "conv")


@pytest.mark.parametrize("workload", ["paper-code", "artifact-conv"])
def test_the_scale_preset_refuses_a_workload_it_cannot_replay(workload, capsys):
    rc = cli.main(["simulate", "--preset", "scale", "--workload", workload, "--gpus", "8", "--models", "2"] + SMALL)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert f"--workload {workload}" in err and "--preset scale" in err, err


def test_the_scale_preset_gives_the_paper_recipe_the_papers_span_by_default(tmp_path):
    """The conv trace covers under an hour: the scale preset's 3600 s default would not fit it."""
    out = tmp_path / "r.json"
    assert cli.main(["simulate", "--preset", "scale", "--workload", "paper-conv", "--gpus", "8", "--models", "2",
                     "--rate", "2", "--policy", "warmserve", "--no-search", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["workload"]["duration_s"] == 1200.0


def test_gpus_with_a_paper_preset_is_refused_not_dropped(capsys):
    """Found in review: --preset artifact-code --gpus 32 ran on the preset's 2 x 8 without a word."""
    rc = cli.main(["simulate", "--preset", "artifact-code", "--gpus", "32"] + SMALL)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert "--gpus 32" in err and "--workload artifact-code --gpus 32" in err, err


def test_an_option_a_policy_fixes_is_named_on_stderr(capsys):
    """Found in review: `autoscale` fixes migrate_max_in_flight=0 (and more), and ran as registered under
    --policy-option migrate_max_in_flight=8 without a word, the run's JSON recording the option."""
    from warmserve.sim.cli import note_shadowed_options

    note_shadowed_options(["migrate_max_in_flight=8", "load_window_s=60"], ["warmserve", "autoscale"])
    err = capsys.readouterr().err
    assert "migrate_max_in_flight=8 does not reach autoscale, which fixes migrate_max_in_flight=0" in err
    assert len(err.splitlines()) == 1  # load_window_s is taken by both, and warmserve fixes nothing
    note_shadowed_options(["route_prefill_overflow=false"], ["autoscale"])  # the value it fixes: nothing to say
    assert capsys.readouterr().err == ""


def test_an_option_a_static_layout_does_not_read_is_named_on_stderr(capsys):
    """Found in review: with route_cap_per_instance=2 warmserve held 2 requests per instance while `shared` and
    `dedicated` took 276, and nothing said that their route has no cap."""
    from warmserve.sim.cli import note_shadowed_options

    note_shadowed_options(["route_cap_per_instance=2"], ["warmserve", "shared", "dedicated"])
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in err] == [
        "--policy-option route_cap_per_instance does not reach shared",
        "--policy-option route_cap_per_instance does not reach dedicated"], err
    note_shadowed_options(["load_window_s=60"], ["shared"])
    assert capsys.readouterr().err == ""
