"""SimConfig (the Python API of `warmserve simulate`) refuses what the command line refuses, by the same rules
(found in review: it took max_num_seqs -1, and nothing completed; drain_s -100; slo_scale -1 or NaN; a negative
ttft_slo_s or unanswered_ttft_s; later, a NaN or negative warmup_s, shared_search 'no', policy_config None;
each run on with wrong figures or failed deep inside)."""

from __future__ import annotations

import argparse
import math

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.cli import add_arguments, check_args
from warmserve.sim.config import SimConfig


@pytest.mark.parametrize("field, value", [
    ("max_num_seqs", -1), ("max_num_seqs", 2.5), ("drain_s", -100.0), ("drain_s", math.inf),
    ("slo_scale", -1.0), ("slo_scale", 0.0), ("slo_scale", math.nan), ("ttft_slo_s", -1.0), ("ttft_slo_s", math.nan),
    ("unanswered_ttft_s", -5.0), ("unanswered_ttft_s", math.nan), ("tick_s", math.inf), ("tick_s", 0.0),
    ("n_servers", 0), ("gpus_per_server", 1.5), ("chunked_prefill_tokens", -1), ("max_num_seqs", True),
    ("warmup_s", math.nan), ("warmup_s", -30.0), ("warmup_s", math.inf), ("shared_search", "no"),
    ("policy_config", None),
    # past float's range: a bare OverflowError before (found in review)
    pytest.param("drain_s", 10**400, id="drain_s-10**400"),
])
def test_an_out_of_range_field_is_refused_naming_it(field, value):
    with pytest.raises(InvalidArgumentError, match=f"SimConfig\\.{field} ") as e:
        SimConfig(**{field: value})
    assert e.value.field == field


def test_the_defaults_and_the_bounds_are_taken_and_just_past_them_refused():
    SimConfig()
    SimConfig(max_num_seqs=0, drain_s=0.0, ttft_slo_s=0.0, unanswered_ttft_s=None, chunked_prefill_tokens=0)
    SimConfig(max_num_seqs=1, ttft_slo_s=2.0, slo_scale=1e-3, unanswered_ttft_s=999.0, tick_s=0.25)
    SimConfig(warmup_s=0.0, shared_search=False)
    for past in (dict(drain_s=-1e-9), dict(ttft_slo_s=-1e-9), dict(unanswered_ttft_s=0.0)):
        with pytest.raises(InvalidArgumentError, match="SimConfig"):
            SimConfig(**past)


def _args(*flags):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--workload", "paper-conv", "--models", "1", "--gpus", "8", *flags])


@pytest.mark.parametrize("flag, field, value", [("--ttft-slo-s", "ttft_slo_s", "-1"),
                                                ("--slo-scale", "slo_scale", "nan"),
                                                ("--slo-scale", "slo_scale", "-1"),
                                                ("--tick-s", "tick_s", "inf"),
                                                ("--chunked-prefill-tokens", "chunked_prefill_tokens", "-4")])
def test_the_cli_and_the_python_api_refuse_the_same_values(flag, field, value):
    a = _args(flag, value)
    with pytest.raises(InvalidArgumentError, match=f"{flag} ") as cli_err:
        check_args(a)
    with pytest.raises(InvalidArgumentError, match=f"SimConfig\\.{field} ") as api_err:
        SimConfig(**{field: getattr(a, field)})
    # one rule, one wording: the same "give ..." after the name
    assert str(cli_err.value).split(": ", 1)[1] == str(api_err.value).split(": ", 1)[1]
