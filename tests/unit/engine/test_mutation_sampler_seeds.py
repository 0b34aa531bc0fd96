"""draw_seed (engine/sampler.py), found by mutation testing: the seed of a seeded request's draw k is splitmix64's
output, checked against the published reference values, and stays a 64-bit number a torch generator takes for
every seed SamplingParams allows (a resumed request's draws depend on it being exactly this function)."""

from __future__ import annotations

import torch

from warmserve.engine.sampler import draw_seed
from warmserve.sampling import SEED_MAX, SEED_MIN


def test_draw_seeds_are_splitmix64s_outputs():
    """splitmix64 from state 0 gives 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f (its reference
    sequence); from state 1, 0x910a2dec89025cc1: draw k of seed s is output k of state s."""
    assert [draw_seed(0, k) for k in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert draw_seed(1, 0) == 0x910A2DEC89025CC1


def test_every_allowed_seed_gives_a_64_bit_generator_seed():
    """The ends of SamplingParams' seed range give seeds in [0, 2**64) that torch.Generator takes; -1 and 2**64 - 1
    are one seed modulo 2**64 (the state wraps), so they draw alike."""
    for seed in (SEED_MIN, -1, 0, SEED_MAX):
        for k in (0, 1, 10**6):
            s = draw_seed(seed, k)
            assert 0 <= s < 1 << 64
            torch.Generator().manual_seed(s)
    assert draw_seed(-1, 5) == draw_seed(SEED_MAX, 5)
    assert draw_seed(-1, 5) != draw_seed(SEED_MAX, 6)
