"""`--seeds`: per_model is the median over the seeds like every other figure, and each seed keeps its own (found in
review: the help said every number was the median, but per_model was seed 0's alone and per_seed kept none)."""

from __future__ import annotations

import argparse
import json
import math
import statistics

from warmserve import cli
from warmserve.sim import cli as sim_cli

RUN = ["simulate", "--workload", "paper-conv", "--models", "3", "--duration-s", "120", "--rate", "3",
       "--policy", "warmserve", "--no-search", "--quiet"]


def _per_model(path, seeds: str) -> dict:
    assert cli.main([*RUN, "--seeds", seeds, "--json", str(path)]) == 0
    return json.loads(path.read_text())["policies"]["warmserve"]


def test_per_model_is_the_median_over_seeds_and_each_seed_keeps_its_own(tmp_path):
    one = {sd: _per_model(tmp_path / f"s{sd}.json", sd)["per_model"] for sd in ("0", "1", "2")}
    both = _per_model(tmp_path / "all.json", "0,1,2")
    assert {sd: x["per_model"] for sd, x in both["per_seed"].items()} == one
    for m, row in both["per_model"].items():
        for k, v in row.items():
            vals = [one[sd][m][k] for sd in one if m in one[sd] and not math.isnan(one[sd][m][k])]
            assert v == statistics.median(vals), (m, k)


def test_one_seed_keeps_its_per_model_as_it_is():
    pm = {"a": {"requests": 3, "ttft_p99_s": 0.5, "tpot_mean_s": math.nan}, "b": {"requests": 1, "ttft_p99_s": 2.0}}
    out = sim_cli._median_per_model([pm])
    assert out.keys() == pm.keys() and out["b"] == pm["b"] and out["a"]["requests"] == 3
    assert isinstance(out["a"]["requests"], int) and math.isnan(out["a"]["tpot_mean_s"])


def test_a_model_without_requests_in_a_seed_and_missing_figures_are_left_out():
    runs = [{"a": {"requests": 4, "tpot_mean_s": math.nan}},
            {"a": {"requests": 2, "tpot_mean_s": 0.02}, "b": {"requests": 1, "tpot_mean_s": math.nan}},
            {"a": {"requests": 9, "tpot_mean_s": 0.04}}]
    out = sim_cli._median_per_model(runs)
    assert out["a"] == {"requests": 4, "tpot_mean_s": 0.03}
    assert out["b"]["requests"] == 1 and math.isnan(out["b"]["tpot_mean_s"])


def test_the_help_says_whose_figures_the_plot_and_per_model_are():
    p = argparse.ArgumentParser()
    sim_cli.add_arguments(p)
    text = " ".join(p.format_help().split())
    assert "per_model: per model and field" in text and "of the first seed's requests" in text
