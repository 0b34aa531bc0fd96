"""An id outside the vocabulary is refused naming the list it is in: a resumption's output_token_ids are the
server's own (sent back after a lost worker), so an error there is not the client's prompt. Found in review: the
error named neither list."""

from __future__ import annotations

import pytest

from warmserve.engine import Engine, SamplingParams
from warmserve.errors import InvalidArgumentError

from tiny_checkpoints import TINY_VOCAB


@pytest.mark.parametrize("prompt, done, which", [
    ([1, TINY_VOCAB, 2], [], "prompt_token_ids"),
    ([1, 2], [3, -1], "output_token_ids"),
])
def test_an_id_outside_the_vocabulary_names_its_list(lm, prompt, done, which):
    with Engine(lm) as eng:
        with pytest.raises(InvalidArgumentError, match=f"^{which}: token ids") as e:
            eng.add_request("r", prompt, SamplingParams(max_tokens=4), output_token_ids=done)
        assert e.value.param == which and e.value.request_id == "r"
        assert eng.generate([[1, 2]], SamplingParams(max_tokens=2, ignore_eos=True))[0]  # nothing left behind
