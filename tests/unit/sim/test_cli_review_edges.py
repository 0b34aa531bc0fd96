"""`warmserve simulate` at the edges of its options (found in review): a huge rate ran out of memory; a replay of no
request exited 0 with NaN everywhere and bare NaN tokens in --json; --workload beside a preset, --history-days and
--start-hour on the Azure workloads, and --cold-start-band without --sweep-rate were silently ignored; an empty or
repeated --policy, repeated --seeds and one path for --json and --plot were taken; several seeds took the warm-up
counters and the request count from the first seed given; `shared`'s bar sat at 0% through its layout search."""

from __future__ import annotations

import argparse
import io
import json
import math

import numpy as np
import pytest

from warmserve import cli
from warmserve.errors import InvalidArgumentError
from warmserve.sim.cli import add_arguments, build_preset, check_args, parse_seeds

SMALL = ["simulate", "--workload", "paper-conv", "--models", "3", "--duration-s", "120", "--rate", "3",
         "--policy", "warmserve", "--no-search", "--quiet"]


def _args(*flags):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(flags))


def _never_built(monkeypatch):
    """Make building a paper workload fail loudly: a refusal must come before it (a huge one ran out of memory)."""
    def boom(*a, **k):
        raise AssertionError("the workload was built")

    monkeypatch.setattr("warmserve.sim.presets.paper_workload", boom)
    monkeypatch.setattr("warmserve.workload.recipes.paper_workload", boom)


@pytest.mark.parametrize("flags,named", [(["--rate-scale", "1e9"], "--rate-scale 1e+09"),
                                         (["--rate", "1e9"], "--rate 1e+09"),
                                         (["--sweep-rate", "1,1e6", "--cold-start-band", "off"], "--sweep-rate 1e+06")])
def test_a_rate_too_large_for_memory_is_refused_before_the_workload_is_built(monkeypatch, capsys, flags, named):
    _never_built(monkeypatch)
    assert cli.main(["simulate", "--preset", "paper-conv", "--policy", "warmserve", "--no-search", "--quiet",
                     *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "requests" in err and "1e+07" in err


def test_the_request_estimate_follows_what_the_recipes_generate():
    for flags in (["--preset", "paper-conv"], ["--workload", "paper-code", "--models", "3", "--duration-s", "120",
                                               "--rate", "6", "--history-days", "1"],
                  ["--preset", "scale", "--workload", "paper-conv", "--gpus", "8", "--models", "4"]):
        p = build_preset(_args(*flags))
        w = p.build(1.0, 0)
        assert p.expected_requests(1.0) == pytest.approx(len(w.trace) + len(w.history), rel=0.05), flags


def test_a_replay_of_no_request_is_refused_naming_the_rate_options(tmp_path, capsys):
    out = tmp_path / "zero.json"
    assert cli.main([*SMALL, "--rate", "0.001", "--duration-s", "60", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--rate 0.001" in err and "--duration-s 60" in err and "no request" in err
    assert not out.exists()
    assert cli.main([*SMALL, "--rate", "0.001", "--duration-s", "60", "--sweep-rate", "1,2", "--cold-start-band",
                     "off"]) == 2
    assert "--sweep-rate 1" in capsys.readouterr().err


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_the_json_is_strict_a_missing_figure_null(tmp_path):
    from warmserve.sim.cli import write_results
    from warmserve.sim.cli_output import finite_or_null

    doc = {"a": math.nan, "b": [math.inf, 1.5, (2, -math.inf)], "c": np.float32("nan"), "d": np.float64(0.25),
           "e": {"f": 3, "g": "x"}}
    want = {"a": None, "b": [None, 1.5, [2, None]], "c": None, "d": 0.25, "e": {"f": 3, "g": "x"}}
    assert finite_or_null(doc) == want
    write_results(str(tmp_path / "x.json"), doc)
    assert _strict((tmp_path / "x.json").read_text()) == want


def test_a_run_writes_strict_json(tmp_path):
    out = tmp_path / "r.json"
    assert cli.main([*SMALL, "--json", str(out)]) == 0
    _strict(out.read_text())


@pytest.mark.parametrize("preset,workload", [("paper-conv", "servegen"), ("paper-conv", "paper-code"),
                                             ("artifact-code", "paper-code"), ("paper-conv", "paper-conv")])
def test_workload_beside_a_preset_other_than_scale_is_refused(preset, workload):
    with pytest.raises(InvalidArgumentError, match=f"--preset {preset} --workload {workload}"):
        build_preset(_args("--preset", preset, "--workload", workload))


def test_an_unknown_workload_exits_2(capsys):
    assert cli.main([*SMALL[:1], "--workload", "bogus", "--policy", "warmserve", "--quiet"]) == 2
    assert "--workload bogus" in capsys.readouterr().err


def test_history_days_reaches_the_azure_workloads_and_their_default_stays():
    day_s, start_s = 86400.0, 18 * 3600 + 15 * 60
    assert build_preset(_args("--preset", "paper-conv")).build(1.0, 0).clock0_s == 4 * day_s + start_s
    assert build_preset(_args("--preset", "scale", "--workload", "paper-conv", "--gpus", "8", "--models", "4")
                        ).build(1.0, 0).clock0_s == 3 * day_s + start_s
    for flags in (["--preset", "paper-conv"], ["--preset", "artifact-code", "--duration-s", "600"],
                  ["--preset", "scale", "--workload", "paper-conv", "--gpus", "8", "--models", "4"]):
        w = build_preset(_args(*flags, "--history-days", "1")).build(1.0, 0)
        assert w.clock0_s == 2 * day_s + start_s, flags
    # without history days the trace holds a longer replay
    w = build_preset(_args("--preset", "paper-conv", "--duration-s", "1500", "--history-days", "0")).build(1.0, 0)
    assert w.duration_s == 1500.0 and w.clock0_s == day_s + start_s


@pytest.mark.parametrize("flags,named", [
    (["--preset", "paper-conv", "--duration-s", "1500"], "--history-days 0"),
    (["--preset", "paper-conv", "--duration-s", "1500", "--history-days", "2"], "--history-days 2"),
    (["--preset", "scale", "--workload", "paper-conv", "--gpus", "8", "--duration-s", "3000", "--history-days", "0"],
     "--duration-s 2901 or less")])
def test_a_replay_the_azure_trace_cannot_hold_is_refused_in_the_clis_terms(flags, named):
    with pytest.raises(InvalidArgumentError, match="--duration-s") as e:
        build_preset(_args(*flags))
    assert named in str(e.value) and "history_days=" not in str(e.value)


@pytest.mark.parametrize("flags", [["--preset", "paper-conv"], ["--workload", "paper-code"],
                                   ["--preset", "scale", "--workload", "paper-conv", "--gpus", "8"]])
def test_start_hour_is_refused_where_the_workload_has_no_clock(flags):
    with pytest.raises(InvalidArgumentError, match="--start-hour 3"):
        build_preset(_args(*flags, "--start-hour", "3"))


@pytest.mark.parametrize("policy,why", [(",", "names no policy"), ("", "names no policy"),
                                        ("warmserve,warmserve", "more than once")])
def test_an_empty_or_repeated_policy_list_exits_2(tmp_path, capsys, policy, why):
    out = tmp_path / "p.json"
    argv = [*SMALL, "--json", str(out)]
    argv[argv.index("--policy") + 1] = policy
    assert cli.main(argv) == 2
    assert why in capsys.readouterr().err and not out.exists()


def test_a_repeated_seed_is_refused():
    with pytest.raises(InvalidArgumentError, match="seed 1 given more than once"):
        parse_seeds(_args("--seeds", "0,1,1"))
    assert parse_seeds(_args("--seeds", "2,0,1")) == [2, 0, 1]


@pytest.mark.parametrize("scales,named", [("1,1", "rate scale 1 given"),
                                          ("0.5,1,0.50,2,1e0", "rate scale 0.5, 1 given")])
def test_a_repeated_sweep_rate_scale_is_refused(scales, named):
    # found in review: --sweep-rate 1,1 ran scale 1 twice and kept both points (JSON, table, plot)
    with pytest.raises(InvalidArgumentError, match=f"--sweep-rate '{scales}': {named} more than once: give each "
                                                   f"scale once"):
        check_args(_args("--sweep-rate", scales))
    check_args(_args("--sweep-rate", "2,0.5,1"))


def test_several_seeds_give_the_same_figures_in_either_order(tmp_path):
    docs = []
    for seeds in ("0,1", "1,0"):
        out = tmp_path / f"s{seeds}.json"
        assert cli.main([*SMALL, "--seeds", seeds, "--json", str(out)]) == 0
        docs.append(json.loads(out.read_text()))
    a, b = docs
    wa, wb = a["policies"]["warmserve"], b["policies"]["warmserve"]
    assert wa["warmup"] == wb["warmup"]
    assert a["workload"]["requests"] == b["workload"]["requests"] == wa["requests"]
    assert a["workload"]["requests_per_seed"] == {sd: wa["per_seed"][sd]["requests"] for sd in ("0", "1")}
    per = [wa["per_seed"][sd]["warmup"] for sd in ("0", "1")]
    assert wa["warmup"] == {k: (per[0][k] + per[1][k]) / 2 for k in per[0]}


def test_a_layout_of_several_seeds_says_whose_it_is():
    from warmserve.sim.cli_output import median_summary

    runs = [{"ttft_p99_s": 1.0, "warmup": {"requests": 4}, "shared_layout": {"groups": [[0]], "note": "a"}},
            {"ttft_p99_s": 3.0, "warmup": {"requests": 6}, "shared_layout": {"groups": [[1]], "note": "b"}}]
    s = median_summary(runs, [5, 2])
    assert s["ttft_p99_s"] == 2.0 and s["warmup"] == {"requests": 5}
    assert s["shared_layout"] == runs[0]["shared_layout"] and s["shared_layout_of_seed"] == 5
    assert median_summary(runs[:1], [5]) == runs[0]  # one seed: as it is


def test_json_and_plot_naming_one_file_are_refused(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "clash.png"
    assert cli.main([*SMALL, "--json", str(path), "--plot", str(tmp_path / "." / "clash.png")]) == 2
    assert "both name one file" in capsys.readouterr().err and not path.exists()


@pytest.mark.parametrize("flags,named", [(["--search-iters", "-1"], "--search-iters -1"),
                                         (["--cold-start-band", "14,35"], "--cold-start-band 14,35"),
                                         (["--cold-start-band", "off"], "--cold-start-band off"),
                                         (["--history-days", "-1"], "--history-days -1")])
def test_a_negative_count_and_a_band_without_a_sweep_are_refused(flags, named):
    with pytest.raises(InvalidArgumentError, match=named):
        check_args(_args(*flags))


def test_the_bar_of_a_run_with_a_layout_search_starts_after_it():
    from warmserve.sim import runner

    bar = runner._bar(100.0, "shared x1", True, searching=True)
    bar.bar.fp = io.StringIO()
    assert "searching its layout" in bar.bar.desc
    bar.bar.start_t -= 40.0  # the search took 40 s
    bar.update(10.0)
    assert bar.bar.desc == "shared x1" and bar.bar.n == 10
    assert bar.bar.format_dict["elapsed"] < 5.0  # its clock starts at the run, so the ETA is the run's
    bar.close()
