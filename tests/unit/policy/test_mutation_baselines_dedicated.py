"""`dedicated`'s own layout (``baselines.StaticPolicy``) through the real driver: a model left without GPUs is
refused with the counts that say why, and spare GPUs go to the models with the most demand per instance."""

import numpy as np
import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.colocation import UnplacedModelError
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
HOUR = 3600.0


def _model(name):
    """A tp-1 model of 13.48 GB: its shard is 6428 pages of 2 MiB, 13.4805 GB."""
    return ModelInfo(name, 13_480_000_000, 1, 524_288, 0.035, 0.015)


def test_dedicated_refuses_a_layout_that_leaves_a_model_without_gpus():
    """Three models, two GPUs: the third in placement order gets none, and the error names it with the GPU count,
    the two instances laid out, no GPU left free, its tp and its shard in GB to two decimals."""
    models = [_model(n) for n in ("a", "b", "c")]
    st = ClusterState.uniform(1, models, gpus_per_server=2, gpu_bytes=72 * GiB)
    d = instant_driver(make_policy("dedicated", models=models, config=PolicyConfig()), st)
    with pytest.raises(UnplacedModelError) as e:
        d.tick(0.0)
    msg = e.value.message
    assert "models ['c'] get no instance" in msg
    assert "the 2 GPUs (one per worker) hold 2 instances of the others, 0 left free" in msg
    assert "too few or too small for tp [1], shards of [13.48] GB" in msg
    assert e.value.fields == {"model": "c", "models": ["c"], "gpus": 2, "free_gpus": 0}


def test_dedicated_gives_spare_gpus_by_demand_per_instance():
    """Mean peaks 30 for a and 10 for b on 6 GPUs: one instance each, then by peak per instance a (30 > 10), a
    (15 > 10), a (10 ties 10: first by name), b (10 > 7.5): a 4, b 2."""
    models = [_model("a"), _model("b")]
    st = ClusterState.uniform(1, models, gpus_per_server=6, gpu_bytes=72 * GiB)
    t = np.arange(48) * HOUR
    history = {"a": (t, np.full(48, 15.0), np.full(48, 30.0)), "b": (t, np.full(48, 5.0), np.full(48, 10.0))}
    pol = make_policy("dedicated", models=models, config=PolicyConfig(window_s=HOUR), history=history)
    d = instant_driver(pol, st)
    d.tick(2 * 86400.0)
    got = sorted(i.model for i in st.instances.values())
    assert got == ["a", "a", "a", "a", "b", "b"]
