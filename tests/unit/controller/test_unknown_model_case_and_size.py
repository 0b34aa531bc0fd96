"""The 404 of a model name that differs from a served one only in case or Unicode normalization, and of a huge
name (found in review): "ORG/LLÄMÄ" got no hint where "org/llämä" did, an NFD name (as macOS writes a folder's) no
hint although it looks the same, and an 8 MiB name came back whole in an 8 MiB 404 after 1.5 s of difflib."""

import time
import unicodedata

import pytest

from warmserve.config import ClusterConfig, ModelSpec
from warmserve.controller.controller import Controller
from warmserve.controller.models import controller_model
from warmserve.errors import UnknownModelError

from controller_harness import demo_path

SERVED = "org/Llämä-café"


@pytest.fixture(scope="module")
def controller() -> Controller:
    models = [controller_model(ModelSpec(path=demo_path("llama-20m"), name=n)) for n in (SERVED, "other")]
    return Controller(ClusterConfig(models=tuple(m.spec for m in models)), models)


@pytest.mark.parametrize("asked", [SERVED.upper(), unicodedata.normalize("NFD", SERVED),
                                   unicodedata.normalize("NFD", SERVED.casefold())])
def test_a_name_differing_only_in_case_or_normalization_is_told_the_served_one(controller, asked):
    assert asked != SERVED
    with pytest.raises(UnknownModelError) as e:
        controller.model(asked)
    assert f"did you mean {SERVED!r} (the names differ only in case or Unicode normalization)?" in str(e.value)


def test_a_huge_name_is_cut_in_the_message_and_answered_at_once(controller):
    asked = "m" * (8 << 20)
    t0 = time.perf_counter()
    with pytest.raises(UnknownModelError) as e:
        controller.model(asked)
    took_s = time.perf_counter() - t0
    msg = str(e.value)
    assert len(msg) < 1000 and f"...({8 << 20} chars)" in msg and "did you mean" not in msg
    assert took_s < 0.5, took_s  # difflib over it took 1.5 s


def test_a_typo_is_still_told_its_fix(controller):
    with pytest.raises(UnknownModelError) as e:
        controller.model("org/Llämä-cafe")
    assert f"did you mean {SERVED!r}? " in str(e.value)
