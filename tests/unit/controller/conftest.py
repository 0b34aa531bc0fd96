"""The controller tests' shared fixture: the demo model's description, as the controller reads it."""

import pytest

from warmserve.config import ModelSpec
from warmserve.controller.models import controller_model, load_tokenizer

from controller_harness import demo_path


@pytest.fixture(scope="module")
def model():
    return controller_model(ModelSpec(path=demo_path()))


@pytest.fixture(scope="module", params=["llama-20m", "qwen2-30m"])
def tok(request):
    """Each demo model's tokenizer in turn (their byte-level vocabularies differ)."""
    return load_tokenizer(demo_path(request.param))
