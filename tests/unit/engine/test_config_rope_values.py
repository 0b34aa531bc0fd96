"""config.json values the rotary embedding or the norm cannot run with are refused when the config is read. Found in
review: a linear or yarn factor of 0, rope_theta 0 or rms_norm_eps -1 started, and every answer was NaN logits
served as token 0 with HTTP 200; llama3's low_freq_factor 0, a yarn beta that is no number and an odd head_dim
started and failed every request with a bare ZeroDivisionError, ValueError or tensor-size mismatch."""

from __future__ import annotations

import pytest

from warmserve.engine.arch import UnsupportedModelError
from warmserve.engine.config import ModelConfig
from warmserve.engine.demo import DemoSpec, config_dict


def _cfg(**fields) -> dict:
    return {**config_dict(DemoSpec("llama", 64, 128, 2, 4, 2, vocab_size=1024)), **fields}


@pytest.mark.parametrize("fields, match", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 0}), "factor is 0, it must be at least 1"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 0.0}), "factor is 0.0, it must be at least 1"),
    (dict(rope_theta=0), "rope_theta is 0.0, it must be a finite number above 1"),
    (dict(rope_theta=1, rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_theta is 1.0"),
    (dict(rms_norm_eps=-1.0), "rms_norm_eps is -1.0"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0, "high_freq_factor": 4.0}),
     "low_freq_factor 0 must be above 0 and below its high_freq_factor 4.0"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0, "beta_fast": "x"}), "non-numeric"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0, "mscale": "1"}), "non-numeric"),
    (dict(head_dim=63), "head_dim 63 is odd"),
])
def test_values_rope_or_the_norm_cannot_run_with_are_refused_naming_them(fields, match):
    with pytest.raises(UnsupportedModelError, match=match):
        ModelConfig.from_dict(_cfg(**fields))


def test_the_published_rope_settings_still_load():
    for fields in (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
                   dict(rope_scaling={"type": "yarn", "factor": 4.0, "beta_fast": 32, "beta_slow": 1,
                                      "mscale": None}),
                   dict(rope_scaling={"rope_type": "linear", "factor": 1.0}), dict(rms_norm_eps=0)):
        ModelConfig.from_dict(_cfg(**fields))
