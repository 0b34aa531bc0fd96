"""Found in review: after a stray UTF-8 lead byte (one that never completes a character) the next token of whole
text was given the start of the U+FFFD before it: each token's start was the text's length before its decode, and
while a run ending in U+FFFD was held back the token that resolved it got the same start as the held bytes (ids of
"\\xe6" then "_abc": "_" at offset 0, where the text holds "\\ufffd"). Echoed prompts (token_starts) and generated
text (TextStream.starts, streamed or whole) gave that wrong ``text_offset``. Every token must start where its own
text begins in the final text, with real tokenizers, whatever the grouping of tokens into pushes; a start handed
out while streaming must not change afterwards."""

import bisect
import os
import random


from warmserve.controller.textstream import TextStream, token_starts

from controller_harness import byte_ids


def _enc(tok, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def _reference(tok, ids: list[int]) -> list[int]:
    """Where each token's text begins in the full decode: the part of the full text that the tokens before it
    already decode to (a prefix decode ending inside a character differs from the full text at that character)."""
    full = tok.decode(ids)
    return [len(os.path.commonprefix([tok.decode(ids[:j]), full])) for j in range(len(ids))]


def _streamed(tok, ids: list[int], bursts: list[int]) -> tuple[str, list[int]]:
    """Push ``ids`` in ``bursts``; after each push record the starts of the tokens a streaming reader would be
    handed (those beginning in the text handed out, as TextGeneration.take_logprobs does). Returns the text and
    the starts as handed out (the rest at the end)."""
    t = TextStream(tok.decode)
    handed: list[int] = []
    out, at = "", 0
    for n in bursts:
        out += t.push(ids[at:at + n])
        at += n
        end = bisect.bisect_left(t.starts, t.emitted)
        handed += t.starts[len(handed):end]
    out += t.finish()
    handed += t.starts[len(handed):]
    assert out == t.text == tok.decode(ids)
    assert t.starts[:len(handed)] == handed  # nothing handed out moved afterwards
    return out, handed


def _bursts(n: int, rng: random.Random) -> list[int]:
    out = []
    while n > 0:
        out.append(min(n, rng.choice((1, 1, 2, 3, 5))))
        n -= out[-1]
    return out


def test_the_token_after_a_stray_lead_byte_starts_at_its_own_text(tok):
    lead = byte_ids(tok)[0xE6]
    ids = [lead] + _enc(tok, "_abc")
    text = tok.decode(ids)
    assert text.startswith("\ufffd") and text[1:] == tok.decode(ids[1:])
    want = _reference(tok, ids)
    assert want[:2] == [0, 1]
    assert token_starts(ids, tok.decode) == want  # an echoed prompt
    assert _streamed(tok, ids, [1] * len(ids))[1] == want  # token by token
    assert _streamed(tok, ids, [len(ids)])[1] == want  # whole
    rng = random.Random(3)
    for _ in range(10):
        assert _streamed(tok, ids, _bursts(len(ids), rng))[1] == want


def test_stray_bytes_around_whole_and_split_characters(tok):
    b = byte_ids(tok)
    jp = list("日".encode())
    cases = [
        [b[0xE6], b[0xE6]] + _enc(tok, "x y"),                       # two stray bytes
        [b[0xE6]] + [b[c] for c in jp] + _enc(tok, "z"),            # a stray byte, then a character split over tokens
        _enc(tok, "a") + [b[0xE6]] + _enc(tok, " b c"),             # a stray byte inside the text
        _enc(tok, "q") + [b[c] for c in jp] + [b[0xC3]] + _enc(tok, "w"),  # a split character, then a stray
        [b[0xF0], b[0x9F]] + _enc(tok, "ok"),                       # a 4-byte character cut after two bytes
    ]
    rng = random.Random(5)
    for ids in cases:
        want = _reference(tok, ids)
        assert token_starts(ids, tok.decode) == want, ids
        for bursts in ([1] * len(ids), [len(ids)], *(_bursts(len(ids), rng) for _ in range(6))):
            assert _streamed(tok, ids, bursts)[1] == want, (ids, bursts)


def test_starts_with_random_stray_bytes_match_the_full_decode(tok):
    """Stray high bytes (what a sampled model emits) between runs of whole characters, split over pushes at
    random: the starts are the full decode's, however the tokens are grouped."""
    b = byte_ids(tok)
    high = [b[x] for x in range(0x80, 0x100) if x in b]
    rng = random.Random(11)
    alphabet = list("ab c.") + list("é日😀")
    for _ in range(150):
        ids: list[int] = []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.35:
                ids.append(rng.choice(high))
            else:
                ids += _enc(tok, "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))))
        want = _reference(tok, ids)
        assert token_starts(ids, tok.decode) == want, ids
        assert _streamed(tok, ids, _bursts(len(ids), rng))[1] == want, ids
