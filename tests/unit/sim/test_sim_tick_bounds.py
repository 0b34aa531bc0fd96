"""The simulated policy's tick period has a floor and a ceiling (found in review): `warmserve simulate --tick-s
1e-9` was taken and ran a policy round every nanosecond of simulated time (a 30 s replay had not finished after a
minute; at 1 ms it takes 66 s against 1 s at the default 1 s tick). A tick below ``MIN_TICK_S`` (1 ms, under the
shortest engine step of any cost-model profile here) is refused naming the floor, by the command line and by
SimConfig alike. Above: SimConfig took a tick longer than the policy window (whole windows then pass between two
ticks, never observed), which the command line already refused (``check_sim_window``); both refuse it now."""

from __future__ import annotations

import argparse

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig
from warmserve.sim.cli import add_arguments, build_preset, check_args
from warmserve.sim.config import MIN_TICK_S, SimConfig


def _args(*flags):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--workload", "paper-conv", "--models", "1", "--gpus", "8", *flags])


@pytest.mark.parametrize("tick_s", [1e-9, MIN_TICK_S / 2])
def test_a_tick_below_the_floor_is_refused_naming_it(tick_s):
    with pytest.raises(InvalidArgumentError, match=r"SimConfig\.tick_s ") as api:
        SimConfig(tick_s=tick_s)
    with pytest.raises(InvalidArgumentError, match="--tick-s ") as cli:
        check_args(_args("--tick-s", repr(tick_s)))
    for e in (api, cli):
        assert f">= {MIN_TICK_S:g}" in str(e.value) and e.value.value == tick_s


def test_the_floor_is_below_every_profiles_shortest_step_and_is_taken():
    """The floor refuses no tick that could tell engine steps apart: the shortest step of the cost model's own
    figures and of the repository's measured profiles (8.8 ms: a 20M-parameter model decoding on a CPU) is longer."""
    import glob
    import json
    import os

    from warmserve.sim.costmodel import MODEL_COSTS

    steps = [c.decode_base_s for c in MODEL_COSTS.values()]
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "bench")
    for path in glob.glob(os.path.join(root, "**", "profile*.json"), recursive=True):
        for m in json.load(open(path)).get("models", {}).values():
            steps += [y for key in ("decode_table", "prefill_table") for _, y in m.get(key) or ()]
    assert len(steps) > len(MODEL_COSTS) and MIN_TICK_S < min(steps)
    SimConfig(tick_s=MIN_TICK_S)
    check_args(_args("--tick-s", repr(MIN_TICK_S)))


def test_a_tick_longer_than_the_policy_window_is_refused_by_simconfig_too():
    window_s = PolicyConfig().window_s
    SimConfig(tick_s=window_s)
    with pytest.raises(InvalidArgumentError, match=r"SimConfig\.tick_s ") as e:
        SimConfig(tick_s=window_s * 2)
    assert "window_s" in str(e.value) and f"{window_s:g}" in str(e.value)
    SimConfig(tick_s=window_s * 2, policy_config=PolicyConfig(window_s=window_s * 2))


def test_the_command_line_still_names_the_window_floor_for_a_tick_past_the_window():
    """The window check of `simulate` (``check_sim_window``) comes before SimConfig's, with its own fix."""
    with pytest.raises(InvalidArgumentError, match="at least 5 s") as e:
        build_preset(_args("--policy-option", "window_s=3", "--tick-s", "5"))
    assert e.value.key == "window_s"
