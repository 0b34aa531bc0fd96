"""Found in review (text beyond ASCII): a lone UTF-16 surrogate in a prompt or a chat message given from Python
(``Cluster.generate("x\\ud800")``; HTTP bodies refuse one as malformed JSON) failed as the tokenizers library's own
TypeError "TextInputSequence must be str", of a str, naming neither the character nor where it was. It is an
InvalidArgumentError naming both; valid text, emoji and joiners included, encodes as before."""

from __future__ import annotations

import pytest

from warmserve.controller.frontend import prepare
from warmserve.errors import InvalidArgumentError


@pytest.mark.parametrize("text, at, char", [("x\ud800y", 1, "U+D800"), ("ab\udcff", 2, "U+DCFF")],
                         ids=["high", "escaped-byte"])
def test_a_lone_surrogate_is_a_typed_error_naming_it(tok, text, at, char):
    with pytest.raises(InvalidArgumentError, match=f"lone UTF-16 surrogate, {char.replace('+', '[+]')} at "
                                                   f"character {at}") as e:
        tok.encode(text)
    assert (e.value.index, e.value.character) == (at, char)


def test_a_prompt_or_a_message_with_one_is_refused_by_prepare(model):
    with pytest.raises(InvalidArgumentError, match="lone UTF-16 surrogate"):
        prepare(model, "héllo \ud83d", max_tokens=4)
    with pytest.raises(InvalidArgumentError, match="lone UTF-16 surrogate"):
        prepare(model, messages=[{"role": "user", "content": "\udc00 é"}], max_tokens=4)


def test_valid_text_beyond_ascii_still_encodes(tok):
    text = "日本語 😀 مرحبا 👩\u200d👩\u200d👧 a\x00b \r\n \U0010ffff"
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(TypeError):  # not text at all: the library's own error, as before
        tok.encode(5)
