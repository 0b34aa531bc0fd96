"""What the replay planning tests share: the stored CPU profile, a launch instant, the replay's own argument
parser, and a workload built from arguments with its simulated models and cost model."""

import argparse
import os

from warmserve.bench import replay as R

PROFILE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "bench", "replay", "profile_cpu.json")
LAUNCH_UNIX = 1_700_000_000.0


def replay_args(*extra):
    p = argparse.ArgumentParser()
    R.add_arguments(p)
    return p.parse_args(list(extra))


def replay_setup(*extra):
    """(args, workload, served models as the simulator takes them, cost model of the stored profile)."""
    from warmserve.sim.config import ServedModel
    from warmserve.sim.costmodel import CostModel

    a = replay_args(*extra)
    w, served = R.build_workload(a)
    return a, w, [ServedModel(n, c) for n, c in served], CostModel.from_profile(PROFILE)
