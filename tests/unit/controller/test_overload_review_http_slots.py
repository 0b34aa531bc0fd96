"""HttpSlots (controller/admission.py): server.max_concurrent_requests stays a hard bound on the total, and each
model is admitted up to its reserve whatever the others hold."""

from __future__ import annotations

import pytest

from warmserve.controller.admission import HttpSlots
from warmserve.controller.errors import TooManyRequestsError

MODELS = ["a", "b", "c"]


def _fill(slots: HttpSlots, model: str) -> int:
    taken = 0
    while True:
        try:
            slots.check(model, 1, MODELS)
        except TooManyRequestsError:
            return taken
        slots.take(model, 1)
        taken += 1


def test_floods_of_two_models_leave_the_third_its_reserve_and_the_total_stays_bounded():
    slots = HttpSlots(1024)
    assert slots.reserve_each(3) == 170 and slots.reserve_each(1) == 0
    assert _fill(slots, "a") == 1024 - 2 * 170
    assert _fill(slots, "b") == 170  # a holds the rest
    assert _fill(slots, "c") == 170
    assert slots.total == 1024
    with pytest.raises(TooManyRequestsError, match="684 of them for 'a'; the limit is 1024:"):
        slots.check("a", 1, MODELS)
    slots.give("c", 170)
    assert "c" not in slots.by_model and _fill(slots, "b") == 0  # c's room is kept for c
    assert _fill(slots, "c") == 170


def test_one_model_has_the_whole_limit():
    slots = HttpSlots(8)
    for _ in range(8):
        slots.check("a", 1, ["a"])
        slots.take("a", 1)
    with pytest.raises(TooManyRequestsError) as e:
        slots.check("a", 1, ["a"])
    assert "kept for the other models" not in e.value.message


def test_an_n_that_never_fits_beside_the_reserves_is_known():
    slots = HttpSlots(8)
    assert slots.most_for_one(2) == 6 and slots.most_for_one(1) == 8


def test_a_model_refused_with_nothing_in_flight_is_said_to_hold_none():
    # found by mutation testing: the refused model's own count (a field of the 429) was not pinned when it had none
    slots = HttpSlots(8)
    assert _fill(slots, "a") == 8 - 2 * 1  # MODELS: b and c keep 8 // 6 = 1 each
    with pytest.raises(TooManyRequestsError, match="6 requests are in flight .*, 0 of them for 'b'") as e:
        slots.check("b", 2, MODELS)  # b's own 1 fits, but not 2 beside the 1 kept for c
    assert (e.value.model_active, e.value.active, e.value.kept_for_others) == (0, 6, 1)
