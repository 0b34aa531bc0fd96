"""The 404 of a model this server does not serve, on a server of many models: the near name first (a typo's fix),
a bounded list and the count of the rest. Found in review: with 64 models each 404 carried all 64 names."""

from warmserve.config import ClusterConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.controller.models import controller_model
from warmserve.errors import KNOWN_MODELS_LISTED, UnknownModelError

import pytest

from controller_harness import demo_path


def _controller(names) -> Controller:
    models = [controller_model(ModelSpec(path=demo_path("llama-20m"), name=n)) for n in names]
    return Controller(ClusterConfig(models=tuple(m.spec for m in models)), models)


def test_many_models_are_listed_in_part_and_a_typo_is_told_its_fix():
    names = sorted([f"tenant-{i:02d}" for i in range(39)] + ["qwen2-7b-instruct"])
    c = _controller(names)
    with pytest.raises(UnknownModelError) as e:
        c.model("qwen2-7b-instrct")
    msg = str(e.value)
    assert "did you mean 'qwen2-7b-instruct'?" in msg
    assert f"it serves 40 models: {names[:KNOWN_MODELS_LISTED]} and {40 - KNOWN_MODELS_LISTED} more" in msg
    assert "GET /v1/models" in msg and names[-1] not in msg
    assert e.value.http_status == 404 and e.value.fields["model"] == "qwen2-7b-instrct"


def test_a_few_models_are_all_listed_and_no_near_name_is_invented():
    c = _controller(["alpha", "beta"])
    with pytest.raises(UnknownModelError) as e:
        c.model("zzz")
    assert str(e.value) == "the model 'zzz' does not exist on this server; it serves ['alpha', 'beta']"
