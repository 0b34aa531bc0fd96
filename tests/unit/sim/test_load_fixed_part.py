"""A calibrated profile's loads into a prewarmed engine pay their measured fixed part (found in review: the
load-fit intercept went into the uncharged ``engine_start_s``, so the replay twin's warm loads were 0.53-0.88x the
measured ones, while the baseline's fresh engine paid its loads' fixed part inside ``engine_init_s``)."""

import json
from pathlib import Path

import pytest

from warmserve.sim.costmodel import CostModel

PROFILE = Path(__file__).resolve().parents[3] / "bench" / "replay" / "profile_cpu.json"


def test_a_calibrated_profile_charges_the_fixed_part_of_its_measured_loads():
    d = json.loads(PROFILE.read_text())
    cm = CostModel.from_profile(str(PROFILE))
    fixed_s = d["machine"]["load_fit"]["fixed_s"]
    assert cm.load_fixed_s == fixed_s > 0
    for name, m in d["measured"].items():
        c = cm.cost(name)
        assert cm.load_s(c) == pytest.approx(fixed_s + c.weight_bytes / cm.gpu.h2d_bytes_per_s, rel=1e-12)
        # the line through the measured loads, near each of them (before: bytes / bandwidth alone, 0.53-0.88x)
        assert cm.load_s(c) + cm.activation_s == pytest.approx(m["load_s"] + m["activation_s"], rel=0.2)


def test_the_gpu_presets_charge_no_fixed_part_and_the_key_round_trips():
    cm = CostModel()
    c = cm.cost("llama2-7b")
    assert cm.load_fixed_s == 0.0 and cm.load_s(c) == c.weight_bytes / cm.gpu.h2d_bytes_per_s
    prof = cm.to_profile()
    prof["load_fixed_s"] = 0.25
    assert CostModel.from_profile(prof).load_s(c) == pytest.approx(0.25 + cm.load_s(c))
