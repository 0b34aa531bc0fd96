"""bench/simulate/issue11/static_bound.py: the capacity a static layout needs against a policy that moves GPUs
every R seconds, on hand-made demand and on a real preset's trace."""

import importlib.util
from pathlib import Path

import numpy as np

_PATH = Path(__file__).resolve().parents[3] / "bench" / "simulate" / "issue11" / "static_bound.py"
_spec = importlib.util.spec_from_file_location("static_bound", _PATH)
SB = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(SB)


def test_two_models_bursting_apart_need_half_the_capacity_when_gpus_move_faster_than_the_bursts():
    d = np.array([[4.0, 0, 0, 0], [0, 0, 0, 4.0]])  # static: 4 + 4; moving every 1 or 2 bins: 4 at a time
    assert SB.gain(d, 1, 1) == 2.0 and SB.gain(d, 2, 1) == 2.0
    assert SB.gain(d, 4, 1) == 1.0  # one window spans both bursts: nothing to gain
    together = np.array([[4.0, 0, 0, 0], [4.0, 0, 0, 0]])
    assert SB.gain(together, 1, 1) == 1.0


def test_a_preset_trace_gains_at_least_nothing_and_less_when_moves_are_slower():
    d = SB.demand("artifact-conv", 0, 5.0, None)
    assert d.shape[0] == 4 and d.shape[1] >= 240 and (d >= 0).all() and d.sum() > 0
    g = [SB.gain(d, r, 5.0) for r in (5, 30, 60)]
    assert g[0] >= g[1] >= g[2] >= 1.0
