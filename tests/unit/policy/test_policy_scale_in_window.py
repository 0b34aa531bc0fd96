"""``scale_in_window_s``: a model scales in no lower than its in-flight load averaged over that window keeps
(ceil(load / 0.5 / B)), while scale-out reads load_window_s alone; unlike ``scale_in_hold_s`` it holds while other
models want GPUs. Measured (bench/simulate/issue11/scale_in_window_paired.txt): at burst CV 4 a 5 s scale-in
stopped the instances the next burst, seconds later, lacked."""

import math

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

from test_policy_scale_in_hold import finish_all, serving

GiB = 1 << 30
B = 32


def _models():
    kw = dict(kv_bytes_per_token=512 << 10, prefill_s=0.035, decode_s_per_token=0.015)
    return [ModelInfo("a", 13 * GiB, 1, **kw), ModelInfo("b", 13 * GiB, 1, **kw)]


def _burst(window_s: float):
    """a holds 3 x B requests from 0 s (three instances), all done at 20 s; 20-25 s: nothing in flight."""
    models = _models()
    st = ClusterState.uniform(1, models, gpus_per_server=4, gpu_bytes=72 * GiB)
    pol = make_policy("warmserve", models=models,
                      config=PolicyConfig(scale_in_window_s=window_s, prewarm=False, coserve_tpot_s=0.0,
                                          colocate_when_oversubscribed=False, instance_capacity=B))
    d = instant_driver(pol, st)
    for k in range(3 * B):
        d.submit("a", f"r{k}", 0.0)
    for t in range(0, 20):
        d.tick(float(t))
        d.route_all(float(t))
    finish_all(d, "a", 20.0)
    return d, st


def _tick(d, start: int, end: int) -> None:
    for t in range(start, end):
        d.tick(float(t))
        d.route_all(float(t))


@pytest.mark.parametrize("window_s", [0.0, 60.0])
def test_a_window_keeps_what_its_mean_load_needs_then_scales_in(window_s):
    d, st = _burst(window_s)
    peak = serving(st)
    assert peak == math.ceil(3 * B / 0.8 / B)  # scale-out (load_window_s) is the same either way
    _tick(d, 20, 30)
    # 10 s after the load ended: the 5 s mean is 0 (one instance left: GPUs are free, so the last stays); the 60 s
    # mean (about 2/3 of 3 B) keeps ceil(2 B / 0.5 / B) = 4 >= peak
    assert serving(st) == (peak if window_s else 1)
    _tick(d, 30, 90)
    assert serving(st) == 1  # the window has passed: scaled in as without it


@pytest.mark.parametrize("window_s", [0.0, 60.0])
def test_the_window_holds_while_another_model_wants_gpus(window_s):
    """a holds every GPU when b's requests arrive: b gets one (a's quietest instance stops for it) either way,
    and a then keeps the rest for the window where its 5 s mean scales it in to one (scale_in_hold_s yields
    to a model that wants GPUs; this window does not)."""
    d, st = _burst(window_s)
    assert serving(st) == 4
    for k in range(2):
        d.submit("b", f"q{k}", 20.0, prompt_tokens=100)
    _tick(d, 20, 35)
    assert serving(st, "b") == 1 and not st.queues["b"]
    assert serving(st) == (3 if window_s else 1)


@pytest.mark.parametrize("value", [-1.0, math.inf, math.nan])
def test_a_bad_window_is_refused_with_its_name(value):
    with pytest.raises(InvalidArgumentError, match="scale_in_window_s"):
        PolicyConfig(scale_in_window_s=value)
