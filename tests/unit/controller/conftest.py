"""The controller tests' shared fixture: the demo model's description, as the controller reads it."""

import pytest

from warmserve.config import ModelSpec
from warmserve.controller.models import controller_model

from controller_harness import demo_path


@pytest.fixture(scope="module")
def model():
    return controller_model(ModelSpec(path=demo_path()))
