"""Round trips of every wire message, and how malformed bytes are reported."""

from __future__ import annotations

import types
import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmserve import errors
from warmserve import protocol as P

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def strategy(tp):
    """A strategy for any type used in protocol.py (msgspec structs, containers, Any as JSON-like values)."""
    if tp is typing.Any:
        return _json
    if tp is P.SamplingParams:  # its construction checks ranges: draw inside them
        return st.builds(
            P.SamplingParams, max_tokens=st.integers(1, 2**31), temperature=st.floats(0.0, 2.0),
            top_p=st.floats(0.0, 1.0, exclude_min=True), top_k=st.integers(0, 2**31),
            seed=st.none() | st.integers(P.SEED_MIN, P.SEED_MAX),
            stop=st.lists(st.text(min_size=1, max_size=6), max_size=4).map(tuple),
            stop_token_ids=st.lists(st.integers(0, 2**31), max_size=4).map(tuple), ignore_eos=st.booleans())
    if tp is P.EngineConfig:
        return st.builds(P.EngineConfig, max_num_seqs=st.integers(0, 2**31), max_batch_tokens=st.integers(1, 2**31),
                         max_kv_blocks=st.integers(0, 2**31), kv_map_blocks_per_step=st.integers(1, 2**31))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return st.builds(tp, **{f.name: strategy(f.type) for f in msgspec.structs.fields(tp)})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy(a) for a in args])
    if origin is list:
        return st.lists(strategy(args[0]), max_size=4)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy(args[0]), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), strategy(args[1]), max_size=3)
    return {
        int: st.integers(-(2**63), 2**63 - 1), float: st.floats(allow_nan=False), str: st.text(max_size=12),
        bool: st.booleans(), type(None): st.none(),
    }[tp]


REQUESTS = typing.get_args(P.Request)
REPLIES = typing.get_args(P.Reply)


@pytest.mark.parametrize("cls", REQUESTS, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_request_round_trip(cls, data):
    msg = data.draw(strategy(cls))
    assert P.decode_request(P.encode(msg)) == msg


@pytest.mark.parametrize("cls", REPLIES, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_reply_round_trip(cls, data):
    msg = data.draw(strategy(cls))
    assert P.decode_reply(P.encode(msg)) == msg


@given(st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_garbage_is_a_protocol_error_never_a_crash(data):
    try:
        msg = P.decode_request(data)
    except errors.ProtocolError as e:
        assert e.size_bytes == len(data)
        assert isinstance(e.request_id, int)
    else:  # the rare bytes that are a valid request
        assert isinstance(msg, REQUESTS)


def test_malformed_request_keeps_its_id_for_the_error_reply():
    bad = msgspec.msgpack.encode({"msg": "Generate", "id": 42, "model": 7})
    with pytest.raises(errors.ProtocolError) as ei:
        P.decode_request(bad)
    assert ei.value.request_id == 42
    assert "model" in str(ei.value)
    assert P.request_id_of(b"\xc1 not msgpack") == -1


def test_a_reply_is_not_a_request():
    with pytest.raises(errors.ProtocolError):
        P.decode_request(P.encode(P.Prewarmed(id=1, name="m", weight_bytes=1, pages=1, max_context=8, load_s=0.1)))


def test_error_carries_class_and_numbers_across_the_wire():
    oom = errors.OutOfMemoryError("needs 3.0 GiB, 1.0 GiB free", asked_bytes=3 << 30, free_bytes=1 << 30,
                                  total_bytes=4 << 30, model="m")
    back = P.decode_reply(P.encode(P.Error.of(7, oom)))
    exc = back.exception()
    assert type(exc) is errors.OutOfMemoryError and isinstance(exc, MemoryError)
    assert (exc.asked_bytes, exc.free_bytes, exc.total_bytes, exc.model) == (3 << 30, 1 << 30, 4 << 30, "m")
    assert str(exc) == "needs 3.0 GiB, 1.0 GiB free"


def test_untyped_exception_becomes_a_warmserve_error_with_its_text():
    back = P.decode_reply(P.encode(P.Error.of(1, RuntimeError("boom")))).exception()
    assert type(back) is errors.WarmServeError and "RuntimeError: boom" in str(back)


def test_error_fields_that_msgpack_cannot_carry_travel_as_text():
    err = P.Error.of(1, errors.InvalidArgumentError("bad", where=object(), shape=(2, 3)))
    back = P.decode_reply(P.encode(err))
    assert back.fields["shape"] == [2, 3] and isinstance(back.fields["where"], str)


def test_final_messages():
    assert P.is_final(P.Ok(id=1))
    assert P.is_final(P.Tokens(id=1, token_ids=[], finished=True, finish_reason="stop"))
    assert not P.is_final(P.Tokens(id=1, token_ids=[5]))
    assert not P.is_final(P.PrewarmProgress(id=1, name="m", loaded_bytes=1, total_bytes=2))
    assert not P.is_final(P.Heartbeat())


def test_defaults_are_omitted_on_the_wire():
    # Small messages matter: a token event is sent per step per request.
    assert len(P.encode(P.Tokens(id=3, token_ids=[17]))) < 32


def test_sampling_out_of_range_is_refused_on_decode_too():
    """A peer cannot make a worker build SamplingParams outside its ranges: decoding checks them as construction
    does, and the error names the request."""
    raw = msgspec.msgpack.encode({"msg": "Generate", "id": 7, "model": "m", "prompt_ids": [1],
                                  "sampling": {"max_tokens": 0}})
    with pytest.raises(errors.ProtocolError) as e:
        P.decode_request(raw)
    assert e.value.request_id == 7 and "max_tokens" in str(e.value)
    with pytest.raises(errors.InvalidArgumentError) as e:
        P.SamplingParams(seed=2**64)
    assert e.value.param == "seed"


def test_every_registered_error_crosses_the_wire_as_itself():
    """Found in review: a TimeoutError_ (an OSError by its TimeoutError base) failed to decode: Exception.__new__
    refuses an OSError subclass."""
    import warmserve.controller.ray_plan  # noqa: F401  (registers its errors)
    import warmserve.memory.cache_entry  # noqa: F401
    import warmserve.security  # noqa: F401

    for name, cls in errors._BY_NAME.items():
        exc = P.decode_reply(P.encode(P.Error(id=1, type=name, message="m", fields={"n": 1}))).exception()
        assert type(exc) is cls and str(exc) == "m" and exc.n == 1, name
    busy = P.decode_reply(P.encode(P.Error.of(2, errors.TimeoutError_("late", timeout_s=3.0)))).exception()
    assert isinstance(busy, TimeoutError) and busy.timeout_s == 3.0
