"""Models whose tokenizer.json files hold the same bytes share one parse of it (a cluster of fine-tunes of one base
model held one 47 MB parse per model and parsed each for 0.3-1 s at start); a file of other bytes gets its own, and
a parse goes when the last tokenizer holding it does."""

import gc
import json
import os
import shutil

import warmserve.engine.tokenizer as T
from warmserve.engine.tokenizer import Tokenizer


def _copy(src: str, dst: str, extra: str = "") -> str:
    os.makedirs(dst)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), dst)
    if extra:  # other bytes, same tokens: a parse of its own
        with open(os.path.join(dst, "tokenizer.json"), "a") as f:
            f.write(extra)
    return dst


def test_copies_of_one_tokenizer_share_a_parse_and_other_bytes_do_not(tmp_path, demo_dir):
    src = demo_dir["llama-20m"]
    # bytes of this test's own, so that no parse held elsewhere in the process is shared with it
    a = Tokenizer(_copy(src, str(tmp_path / "ft-a"), extra=" \n"))
    b = Tokenizer(_copy(str(tmp_path / "ft-a"), str(tmp_path / "ft-b")))
    c = Tokenizer(_copy(src, str(tmp_path / "other"), extra="\n\n"))
    assert a.max_token_chars == b.max_token_chars == c.max_token_chars > 0
    assert a._tok is b._tok and a._tok is not c._tok
    text = "Fine-tunes share a tokenizer."
    assert a.encode(text) == b.encode(text) == c.encode(text) and b.decode(a.encode(text)) == text

    keys = {k for k, v in T._PARSES.items() if v.tok is a._tok}
    assert len(keys) == 1
    del a, b
    gc.collect()
    assert not keys & set(T._PARSES.keys())  # gone with its last tokenizer; c's stays
    assert c.decode(c.encode(text)) == text


def test_an_unreadable_tokenizer_file_is_still_named_in_a_typed_error(tmp_path, demo_dir):
    d = _copy(demo_dir["llama-20m"], str(tmp_path / "m"))
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump({"model": {"type": "nothing"}}, f)
    tok = Tokenizer(d)
    try:
        tok.encode("x")
    except T.InvalidArgumentError as e:
        assert "tokenizer.json is not a tokenizer file" in e.message and e.fields["path"].endswith("tokenizer.json")
    else:
        raise AssertionError("a file `tokenizers` cannot read was taken")
