"""A large completion body does not stall the event loop (``prechecks.check_prompt_shape``), as a large chat's
does not (test_openai_review_chat_stall.py): found in review, a 16 MiB completion whose prompt was a batch of
one-token lists took seconds of the event loop (7.6 s for 5.6M of them), decoded whole there before the batch was
refused. Now a prompt that is a batch, or holds more token ids than the model's context, is refused from byte
counts, and one that may fit is decoded on a worker thread. Served by aiohttp on a real socket with the demo model's
tokenizer and context; the controller is the chat test's stand-in (real ``Req`` objects)."""

import json

import pytest

from warmserve.controller import openai_api as oa
from warmserve.controller.api import INLINE_BODY_BYTES, MAX_BODY_BYTES
from warmserve.controller.prechecks import check_prompt_shape
from warmserve.errors import InvalidArgumentError, PromptTooLongError

from test_openai_review_chat_stall import MAX_CONTEXT, MODEL, Ctl, _serve

#: The loop may lag this much on a 16 MiB completion: what remains is msgspec's skim of the body for its prompt
#: (``prechecks.completion_head``: 0.2-0.35 s on a loaded 2-core machine for 4M small arrays, the GIL held
#: throughout), far below the 4.6-9.5 s of its full decoding on the loop before.
MAX_LAG_S = 1.5


def _body(prompt_json: bytes, **fields) -> bytes:
    head = json.dumps({"model": MODEL, "max_tokens": 2, **fields})[:-1].encode()
    return head + b', "prompt": ' + prompt_json + b"}"


async def _post(c, body: bytes):
    r = await c.post("/v1/completions", data=body, headers={"Content-Type": "application/json"})
    return r.status, await r.json()


def _fill(item: bytes) -> bytes:
    """A prompt array of ``item`` repeated to fill a body of just under MAX_BODY_BYTES."""
    n = (MAX_BODY_BYTES - 200) // (len(item) + 1)
    return b"[" + b",".join([item] * n) + b"]"


def test_a_16_mib_batch_of_one_token_lists_is_refused_without_stalling_the_loop(model):
    body = _body(_fill(b"[1]"))
    assert len(body) <= MAX_BODY_BYTES
    (status, answer), lag_s = _serve(Ctl(model), lambda c: _post(c, body))
    err = answer["error"]
    assert status == 400 and err["param"] == "prompt" and "batch" in err["message"], err
    assert lag_s < MAX_LAG_S, f"the event loop stalled {lag_s:.2f} s on a completion of {len(body)} bytes"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_16_mib_unsupported_field_is_refused_without_stalling_the_loop(model, path):
    """Found in the session's review: the fields the server does not implement are typed Any, so a 16 MiB list in
    `tools` was decoded whole (on a thread, the GIL held: 4 s of the loop) before its 400. Neutral values in a
    large body (an empty array padded with blanks, a pretty-printed {"type": "text"}) still pass."""
    big = _fill(b"[1]")
    pad = "x" * (INLINE_BODY_BYTES + 1)
    chat = path.endswith("chat/completions")
    head = {"model": MODEL, "max_tokens": 2, **({"messages": [{"role": "user", "content": "hi"}]} if chat
                                                 else {"prompt": "hi"})}

    async def go(c):
        async def post(body):
            r = await c.post(path, data=body, headers={"Content-Type": "application/json"})
            return r.status, await r.json()
        refused = await post(json.dumps(head)[:-1].encode() + b', "tools": ' + big + b"}")
        # pretty-printed, with neutral values written long (found in the review of the fix: refused by size)
        neutral = await post(json.dumps({**head, "tool_choice": "none", "response_format": {"type": "text"},
                                         "logit_bias": {}, "unknown_padding": pad}, indent=2)[:-1].encode()
                             + b', "tools": [' + b" " * 1000 + b"]}")
        return refused, neutral

    ((status, answer), neutral), lag_s = _serve(Ctl(model), go)
    assert status == 400 and answer["error"]["param"] == "tools", answer
    assert "'tools' is not supported" in answer["error"]["message"]
    assert lag_s < MAX_LAG_S, f"the event loop stalled {lag_s:.2f} s on an unsupported field of 16 MiB"
    assert neutral[0] == 200, neutral


def test_a_large_completion_that_fits_is_answered_as_a_small_one(model):
    """Over INLINE_BODY_BYTES (padded by a field the server ignores): the same 200 and prompt for a text, for token
    ids and for a one-element list of them; the same 404 for a model that does not exist; a batch of two texts and
    as many ids as the context has tokens are refused as from a small body (the batch, then the usual 400 naming
    the prompt's length with max_tokens)."""
    pad = "x" * (INLINE_BODY_BYTES + 1)
    ids = model.tokenizer.encode("hello there", add_special_tokens=False)
    prompts = [b'"hello there"', json.dumps(ids).encode(), json.dumps([ids]).encode(), b'[ "hello there" ]']

    async def go(c):
        out = []
        for p in prompts:
            out.append((await _post(c, _body(p)), await _post(c, _body(p, unknown_padding=pad))))
        missing = await _post(c, _body(prompts[0], model="nope", unknown_padding=pad))
        batch = await _post(c, _body(b'["a", "b"]', unknown_padding=pad))
        full = await _post(c, _body(json.dumps([1] * MAX_CONTEXT).encode(), unknown_padding=pad))
        return out, missing, batch, full

    ctl = Ctl(model)
    out, missing, batch, full = _serve(ctl, go)[0]
    for (small, large) in out:
        assert small[0] == large[0] == 200, (small, large)
        assert small[1]["choices"] == large[1]["choices"] and small[1]["usage"] == large[1]["usage"]
    assert all(r.prompt_ids == ids for r in ctl.submitted), [r.prompt_ids for r in ctl.submitted]
    assert missing[0] == 404 and missing[1]["error"]["param"] == "model"
    assert batch[0] == 400 and "batch" in batch[1]["error"]["message"], batch
    err = full[1]["error"]
    assert full[0] == 400 and err["code"] == oa.CONTEXT_LENGTH_EXCEEDED and "max_tokens asks for" in err["message"]


@pytest.mark.parametrize("prompt, error", [
    (b'"text"', None), (b"[1, 2, 3, 4]", None), (b" [[1,2]] ", None), (b'["a [, b"]', None), (b"[]", None),
    (b'[ "a" , "b"]', InvalidArgumentError), (b"[[1],[2]]", InvalidArgumentError), (b'[1, "x"]', InvalidArgumentError),
    (b"[1, 2, 3, 4, 5]", PromptTooLongError), (b"[[1, 2, 3, 4, 5]]", PromptTooLongError),
    (b'["unterminated', None), (b"[1,,2]", None),  # malformed: left to the full decoding, which says where
])
def test_check_prompt_shape_refuses_batches_and_more_ids_than_the_context(prompt, error):
    if error is None:
        check_prompt_shape(prompt, 4)
    else:
        with pytest.raises(error) as e:
            check_prompt_shape(prompt, 4)
        assert e.value.param == "prompt"
