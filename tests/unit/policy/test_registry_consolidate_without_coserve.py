"""Found in review: `warmserve simulate --policy-option consolidate=true` (its default --policy list includes
autoscale) ran warmserve, then aborted (exit 2) building autoscale: its name fixes coserve_tpot_s=0 (no co-serving),
consolidate needs co-serving hosts, and the error advised setting coserve_tpot_s, which autoscale overrides. A name
that turns co-serving off now fixes consolidate=False too (``registry.fixed_options``): the policy is built, and
the option is named once as one the policy does not take. `serve` still refuses the combination
(tests/unit/controller/test_config_review_inputs.py)."""

from __future__ import annotations

import json

from warmserve import cli
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import registry
from warmserve.policy.state import ModelInfo

LINE = ("warmserve simulate: --policy-option consolidate=True does not reach autoscale, which fixes "
        "consolidate=False")


def test_a_policy_without_coserving_is_built_with_consolidate_off():
    m = ModelInfo("a", 13_500_000_000)
    pol = make_policy("autoscale", models=[m], config=PolicyConfig(consolidate=True))
    assert pol.cfg.consolidate is False and pol.cfg.coserve_tpot_s == 0.0
    assert make_policy("warmserve", models=[m], config=PolicyConfig(consolidate=True)).cfg.consolidate is True
    assert registry.fixed_options(registry.POLICIES["autoscale"])["consolidate"] is False
    assert "consolidate" not in registry.fixed_options(registry.POLICIES["warmserve"])
    keys = {"consolidate": "--policy-option"}
    assert registry.shadowed_options(PolicyConfig(consolidate=True), keys, ["warmserve", "autoscale"]) == [
        LINE.removeprefix("warmserve simulate: ")]
    assert registry.shadowed_options(PolicyConfig(consolidate=False), keys, ["autoscale"]) == []


def test_simulate_with_consolidate_runs_every_policy_and_says_it_once(capsys, tmp_path):
    out = tmp_path / "r.json"
    rc = cli.main(["simulate", "--workload", "paper-conv", "--models", "3", "--duration-s", "60", "--rate", "3",
                   "--policy", "warmserve,autoscale", "--no-search", "--quiet", "--policy-option", "consolidate=true",
                   "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err  # before: 2, after warmserve's run, advising a coserve_tpot_s autoscale never takes
    assert [ln for ln in err.splitlines() if "consolidate" in ln] == [LINE], err
    assert sorted(json.loads(out.read_text())["policies"]) == ["autoscale", "warmserve"]
