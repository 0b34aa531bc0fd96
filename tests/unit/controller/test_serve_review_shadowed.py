"""Found in review: `warmserve serve` dropped the policy options a policy's name fixes without a word (`serve
--policy autoscale --policy-option prewarm=true` ran with prewarm off; a config file's [policy] table under
`[controller] policy = "autoscale"` the same; route_cap_per_instance under `shared`/`dedicated`, which never read
it), where `warmserve simulate` names them. Both now say it on stderr through one function
(policy/registry.py shadowed_options)."""

from __future__ import annotations

import argparse

from warmserve.controller import serve


def parse(*argv):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(list(argv))


def test_options_the_policy_name_fixes_are_named_on_stderr(capsys):
    cfg = serve.build_config(parse("--policy", "autoscale", "--policy-option", "prewarm=true", "--policy-option",
                                   "coserve_tpot_s=0.2", "--policy-option", "route_prefill_overflow=false",
                                   "--policy-option", "instance_capacity=8"))
    assert cfg.controller.policy_config.prewarm is True  # as asked: the policy's name decides, and that is said
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warmserve serve: --policy-option prewarm=True does not reach autoscale, which fixes prewarm=False",
        "warmserve serve: --policy-option coserve_tpot_s=0.2 does not reach autoscale, which fixes "
        "coserve_tpot_s=0.0"], err  # route_prefill_overflow=false is what autoscale fixes; capacity it takes
    serve.build_config(parse("--policy-option", "prewarm=false", "--policy-option", "route_cap_per_instance=2"))
    assert capsys.readouterr().err == ""  # warmserve fixes nothing


def test_a_config_files_policy_table_under_a_policy_that_fixes_it_is_named(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text('[controller]\npolicy = "autoscale"\n[policy]\nmigrate_max_in_flight = 4\nwindow_s = 60\n')
    serve.build_config(parse("--config", str(f)))
    assert capsys.readouterr().err.splitlines() == [
        "warmserve serve: config [policy] migrate_max_in_flight=4 does not reach autoscale, which fixes "
        "migrate_max_in_flight=0"]
    # the file's name with the flag's policy, and [controller] policy_config (YAML) as well
    f = tmp_path / "c.yaml"
    f.write_text("controller:\n  policy_config: {prewarm: true, route_cap_per_instance: 2}\n")
    serve.build_config(parse("--config", str(f), "--policy", "shared"))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(
        "warmserve serve: config [controller] policy_config route_cap_per_instance does not reach shared: its "
        "route sends every request"), err
    assert err[1] == ("warmserve serve: config [controller] policy_config prewarm=True does not reach shared, "
                      "which fixes prewarm=False"), err
    # a flag that sets the fixed value over the file's: nothing to say of it
    serve.build_config(parse("--config", str(f), "--policy", "dedicated", "--policy-option", "prewarm=false"))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warmserve serve: config [controller] policy_config "
                                               "route_cap_per_instance does not reach dedicated:"), err


def test_simulate_says_it_with_the_same_function(capsys):
    from warmserve.policy import registry
    from warmserve.sim import cli

    assert cli.note_shadowed_options is registry.note_shadowed_options
    registry.note_shadowed_options(["prewarm=true"], ["autoscale"])
    assert capsys.readouterr().err == ("warmserve simulate: --policy-option prewarm=True does not reach autoscale, "
                                       "which fixes prewarm=False\n")


def test_colocate_tp_given_beside_a_tensor_parallel_model_is_said_not_taken(tmp_path, capsys):
    """Found in review (tensor parallelism): `colocate_tp = true` with a tp = 2 model was turned off with a line at
    INFO only. Said on stderr when given (the default is on: nothing to say then), and not for tp = 1 models."""
    from controller_harness import demo_path

    f = tmp_path / "c.toml"
    f.write_text(f'[[models]]\npath = "{demo_path()}"\nname = "wide"\ntp = 2\n[policy]\ncolocate_tp = true\n')
    serve.build_config(parse("--config", str(f)))
    assert capsys.readouterr().err.splitlines() == [
        "warmserve serve: colocate_tp = true (config [policy]) is not taken: a worker runs a tensor-parallel shard "
        "alone, so ['wide'] each run alone on their workers"]
    f.write_text(f'[[models]]\npath = "{demo_path()}"\nname = "wide"\ntp = 2\n')
    serve.build_config(parse("--config", str(f)))
    serve.build_config(parse("--model", demo_path(), "--policy-option", "colocate_tp=true"))
    assert capsys.readouterr().err == ""
