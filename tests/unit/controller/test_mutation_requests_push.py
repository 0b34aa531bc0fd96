"""Req.push's guards (controller/requests.py), found by mutation testing: an empty token list and tokens that
come after the request ended change nothing, and each token pushed is kept for a resumption elsewhere."""

from __future__ import annotations

from warmserve.controller.requests import Req
from warmserve.protocol import SamplingParams


def _req() -> Req:
    return Req(1, "m", [1, 2, 3], SamplingParams(max_tokens=8), timeout_s=60.0)


def test_an_empty_push_does_not_end_the_prefill_or_count_a_token():
    """A Tokens message with no ids is not the first token: the prefill goes on, no first-token time is taken and
    nothing is queued for the consumer."""
    r = _req()
    r.prefilling = True
    assert r.push([]) is False
    assert r.prefilling is True
    assert r.first_token_s is None and r.last_token_s is None
    assert r.generated == 0 and r.token_ids == [] and not r._q


def test_tokens_after_the_end_are_dropped():
    """Tokens that arrive after the request finished (a late message of its worker) are neither counted nor kept,
    and its stream still ends where it ended."""
    r = _req()
    assert r.push([7, 8]) is False
    r.finish("stop")
    assert r.push([9]) is False
    assert r.generated == 2 and r.token_ids == [7, 8]


def test_pushed_tokens_are_kept_in_order_for_a_resumption():
    """token_ids holds every token streamed, across pushes, in order: a re-routed request resumes after them
    (``protocol.Generate.output_ids``); the first push of a prefill says so, the later ones do not."""
    r = _req()
    r.prefilling = True
    assert r.push([5]) is True
    assert r.push([6, 7]) is False
    assert r.token_ids == [5, 6, 7] and r.generated == 3
    assert r.resume_prompt_tokens == 3 + 3


def test_the_choices_of_one_http_request_share_one_family_list():
    """A request made with the earlier choices of its HTTP request joins their family (one list, shared): with
    one sibling as with two, every choice sees all of them, in order; a request with none is alone in its own."""
    a = _req()
    b = Req(2, "m", [1, 2, 3], SamplingParams(max_tokens=8), timeout_s=60.0, siblings=[a])
    c = Req(3, "m", [1, 2, 3], SamplingParams(max_tokens=8), timeout_s=60.0, siblings=[a, b])
    assert a.family is b.family is c.family
    assert a.family == [a, b, c]
    lone = _req()
    assert lone.family == [lone]
