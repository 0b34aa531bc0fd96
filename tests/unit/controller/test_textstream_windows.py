"""How much a text stream decodes, found in review: tokens that add no text (an EOS generated with ignore_eos, a
special token decode skips) or stray bytes (each U+FFFD) kept the decode window from moving, so every push decoded
the whole run again (quadratic: 4000 EOS tokens took 2.3 s). Measured by the ids each decode call gets from the
demo model's real tokenizer, not by time; the text must stay that of one full decode."""

import pytest

from warmserve.controller.textstream import TextStream

RUN = 1500
#: Most ids one decode call may get: a window of a few tokens, whatever the length of the run.
MAX_WINDOW = 40


class Counting:
    """The tokenizer's decode, recording how many ids each call got."""

    def __init__(self, decode):
        self.decode_ids = decode
        self.sizes: list[int] = []

    def __call__(self, ids):
        self.sizes.append(len(ids))
        return self.decode_ids(ids)


def _stray(tok) -> int:
    """A token that is one byte of a character and none alone: a run of it decodes to one U+FFFD each."""
    return next(t for t in range(tok.vocab_size) if tok.decode([t] * 3) == "\ufffd" * 3)


@pytest.mark.parametrize("case", ["eos_after_text", "eos_first", "stray_bytes", "text_between_eos"])
@pytest.mark.parametrize("per_push", [1, 50])
def test_a_run_that_adds_no_text_is_decoded_in_a_short_window(model, case, per_push):
    tok = model.tokenizer
    eos = tok.eos_token_ids[0]
    assert tok.decode([eos]) == ""
    word = tok.encode(" hello", add_special_tokens=False)
    ids = {"eos_after_text": word + [eos] * RUN + word,
           "eos_first": [eos] * RUN + word,
           "stray_bytes": word + [_stray(tok)] * RUN + word,
           "text_between_eos": (word + [eos] * 7) * (RUN // 8)}[case]
    dec = Counting(tok.decode)
    t = TextStream(dec)
    out = "".join(t.push(ids[i:i + per_push]) for i in range(0, len(ids), per_push)) + t.finish()
    assert out == tok.decode(ids) == t.text
    assert max(dec.sizes) <= MAX_WINDOW, f"a decode of {max(dec.sizes)} ids"
    assert sum(dec.sizes) <= MAX_WINDOW * len(ids)
    # every token has its place in the text, none past its end
    assert len(t.starts) == len(ids) and t.starts == sorted(t.starts) and t.starts[-1] <= len(out)


def test_split_characters_and_grouping_give_the_same_text_and_token_starts(model):
    """Characters split over tokens come out whole; how the tokens were grouped into pushes changes nothing, and
    each token begins after the whole characters before it."""
    tok = model.tokenizer
    ids = tok.encode("naïve café 😀 — 東京 ok, 𝄞 and é", add_special_tokens=False)
    assert sum("\ufffd" in tok.decode([i]) for i in ids) >= 8
    want = [len(tok.decode(ids[:k]).rstrip("\ufffd")) for k in range(len(ids))]
    for per_push in (1, 2, 3, 5, len(ids)):
        t = TextStream(tok.decode)
        out = "".join(t.push(ids[i:i + per_push]) for i in range(0, len(ids), per_push)) + t.finish()
        assert out == tok.decode(ids)
        assert t.starts == want, per_push
