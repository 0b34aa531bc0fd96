"""The controller tests' shared fixture: the demo model's description, as the controller reads it."""

import os

import pytest

from warmserve.config import ModelSpec
from warmserve.controller.models import controller_model

from controller_harness import MODEL


@pytest.fixture(scope="module")
def model():
    home = os.environ.get("WARMSERVE_HOME")
    path = os.path.join(home, "demo") if home else os.path.expanduser("~/.cache/warmserve/demo")
    path = os.path.join(path, MODEL)
    if not os.path.isfile(os.path.join(path, "config.json")):  # written once; importing the writer costs torch
        from warmserve.engine.demo import write_demo_models

        path = write_demo_models(None, [MODEL])[MODEL]
    return controller_model(ModelSpec(path=path))
