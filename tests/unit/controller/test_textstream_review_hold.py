"""Found in review: after HOLD_TOKENS tokens of a text ending in U+FFFD the stream writes the run out; when the last
of those tokens was the first byte of a character, its U+FFFD went into the text and the bytes that completed the
character added nothing, so the character was lost for good (15 stray bytes, then the 3 bytes of "日": a full
decode ends "��日", the stream ended "���"). The stream's text must be that of one full decode, with real
tokenizers (SentencePiece byte fallback and byte-level BPE), whatever the run's length and however the tokens are
grouped into pushes."""

import random

import pytest

from warmserve.controller.textstream import HOLD_TOKENS, TextStream

from controller_harness import byte_ids

CHARS = "日é😀𝄞中ü—"


def _stream(tok, ids, per_push=1) -> str:
    t = TextStream(tok.decode)
    out = "".join(t.push(ids[i:i + per_push]) for i in range(0, len(ids), per_push)) + t.finish()
    assert out == t.text
    return out


def _char_ids(byte_id, ch) -> list[int]:
    return [byte_id[b] for b in ch.encode()]


@pytest.mark.parametrize("n_stray", [3, HOLD_TOKENS - 1, HOLD_TOKENS, 20])
def test_a_character_begun_at_the_hold_limit_is_kept(tok, n_stray):
    byte_id = byte_ids(tok)
    ids = [byte_id[0x80]] * n_stray + _char_ids(byte_id, "日")
    full = tok.decode(ids)
    assert full.endswith("\ufffd\ufffd日")
    assert _stream(tok, ids) == full


@pytest.mark.parametrize("seed", range(4))
def test_stray_byte_runs_before_characters_decode_as_a_whole(tok, seed):
    rng = random.Random(seed)
    byte_id = byte_ids(tok)
    strays = [byte_id[b] for b in (0x80, 0x9F, 0xBF, 0xE6, 0xF0) if b in byte_id]
    for _ in range(25):
        ids: list[int] = []
        for _ in range(rng.randint(1, 3)):
            ids += [rng.choice(strays) for _ in range(rng.randint(1, 40))]
            ids += _char_ids(byte_id, rng.choice(CHARS))
            if rng.random() < 0.3:
                ids += tok.encode(" ok", add_special_tokens=False)
        full = tok.decode(ids)
        for per_push in (1, rng.randint(2, 7)):
            assert _stream(tok, ids, per_push) == full, (ids, per_push)
