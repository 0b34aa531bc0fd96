"""A profile's KV block size: the simulator sizes blocks at geometry.KV_BLOCK_TOKENS everywhere, so another value
is refused rather than taken and ignored (found in review: block 16 loaded, admission kept reserving 256-token
blocks)."""

import pathlib

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.geometry import KV_BLOCK_TOKENS
from warmserve.sim.costmodel import SCHEMA, CostModel, EngineLimits

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_a_profile_with_another_block_size_is_refused_with_the_fix():
    with pytest.raises(InvalidArgumentError) as e:
        CostModel.from_profile({"schema": SCHEMA, "engine_limits": {"block_size_tokens": 16}})
    msg = str(e.value)
    assert "16" in msg and str(KV_BLOCK_TOKENS) in msg and "remove the key" in msg
    with pytest.raises(InvalidArgumentError):
        EngineLimits(block_size_tokens=512)


def test_profiles_with_the_fixed_block_size_or_none_still_load():
    cm = CostModel.from_profile({"schema": SCHEMA, "engine_limits": {"block_size_tokens": KV_BLOCK_TOKENS,
                                                                     "max_running_seqs": 64}})
    assert cm.limits.block_size_tokens == KV_BLOCK_TOKENS and cm.limits.max_running_seqs == 64
    assert CostModel.from_profile(CostModel().to_profile()).limits == EngineLimits()
    committed = sorted(ROOT.glob("bench/**/profile*.json")) + sorted(ROOT.glob("bench/**/profiles/*.json"))
    assert committed
    for path in committed:
        assert CostModel.from_profile(str(path)).limits.block_size_tokens == KV_BLOCK_TOKENS, path
