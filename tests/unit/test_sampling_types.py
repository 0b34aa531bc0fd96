"""SamplingParams made in Python (``warmserve.Cluster``, the engine) checks its types as well as its ranges, naming the
parameter: msgspec checks them only when it decodes one. Found in review: a stop list of ints and a string seed
gave bare TypeErrors, a fractional top_k or a bool logprobs reached a worker as a malformed message, a lone stop
string of 5 characters or more counted as that many stop sequences, and ``stop=5`` on ``Cluster.generate`` was
"'int' object is not iterable"."""

import msgspec
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sampling import SamplingParams, stop_strings


@pytest.mark.parametrize("kw, param", [
    (dict(stop=[5]), "stop"), (dict(stop=["a", None]), "stop"), (dict(stop=5), "stop"),
    (dict(seed="1"), "seed"), (dict(top_k=2.5), "top_k"), (dict(logprobs=True), "logprobs"),
    (dict(prompt_logprobs=1.0), "prompt_logprobs"), (dict(max_tokens=2.0), "max_tokens"),
    (dict(temperature="hot"), "temperature"), (dict(top_p=None), "top_p"), (dict(repetition_penalty=True),
                                                                             "repetition_penalty"),
    (dict(ignore_eos=1), "ignore_eos"), (dict(stop_token_ids=[1, "2"]), "stop_token_ids"),
    (dict(stop_token_ids=7), "stop_token_ids"),
])
def test_a_wrong_type_is_refused_naming_the_parameter(kw, param):
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(**kw)
    assert e.value.param == param and param in str(e.value)


def test_a_lone_stop_string_is_one_stop_sequence_and_lists_become_tuples():
    p = SamplingParams(stop="hello world", stop_token_ids=[3, 4])
    assert p.stop == ("hello world",) and p.stop_token_ids == (3, 4)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert hash(p) == hash(SamplingParams(stop=("hello world",), stop_token_ids=(3, 4)))
    # what crosses the wire comes back the same
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(p), type=SamplingParams) == p


def test_stop_strings_leaves_other_types_to_the_check():
    assert stop_strings(None) == () and stop_strings("x") == ("x",) and stop_strings(["x"]) == ("x",)
    with pytest.raises(InvalidArgumentError, match="stop must be a string or a list of strings"):
        SamplingParams(stop=stop_strings(5))


@pytest.mark.parametrize("kw, param", [
    (dict(top_k=2 ** 70), "top_k"), (dict(top_k=2 ** 63), "top_k"),
    (dict(stop_token_ids=(3, 2 ** 70)), "stop_token_ids"),
])
def test_a_value_the_wire_cannot_carry_is_refused_when_made_naming_the_parameter(kw, param):
    """Found in review: from the Python API (``Cluster.generate``) such a value was queued and routed, then failed
    on the way to a worker as the prompt's fault (param "prompt"); HTTP alone refused it."""
    with pytest.raises(InvalidArgumentError) as e:
        SamplingParams(**kw)
    assert e.value.param == param and str(2 ** 63 - 1) in str(e.value)
    edge = SamplingParams(top_k=2 ** 63 - 1, stop_token_ids=(2 ** 63 - 1,))
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(edge), type=SamplingParams) == edge
