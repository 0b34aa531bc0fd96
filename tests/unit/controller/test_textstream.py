from warmserve.controller.textstream import TextStream


def decode(ids):
    return "".join(chr(i) for i in ids)


def ids(s):
    return [ord(c) for c in s]


def test_plain_stream_emits_everything():
    t = TextStream(decode)
    out = "".join(t.push(ids(c)) for c in "hello world") + t.finish()
    assert out == "hello world" and not t.stopped


def test_stop_string_cut_across_tokens():
    t = TextStream(decode, ("END",))
    out = ""
    for c in ["ab", "cE", "N", "Dxyz"]:
        out += t.push(ids(c))
    out += t.finish()
    assert out == "abc" and t.stopped and t.text == "abc"


def test_held_back_prefix_is_released_when_not_a_stop():
    t = TextStream(decode, ("END",))
    out = t.push(ids("aE"))
    assert "E" not in out
    out += t.push(ids("Nx")) + t.finish()
    assert out == "aENx" and not t.stopped


def test_split_utf8_waits_for_whole_character():
    # A decoder that shows a replacement character while a multi-byte character is incomplete.
    def dec(ids):
        b = bytes(ids)
        return b.decode("utf-8", errors="replace")

    t = TextStream(dec)
    e = "é".encode()
    assert t.push([ord("a")]) == "a"
    assert t.push([e[0]]) == ""
    assert t.push([e[1]]) == "é"


def test_window_decode_matches_a_full_decode_with_a_real_tokenizer():
    """Incremental decoding over a short window gives exactly the text of one full decode (byte-level BPE,
    leading spaces, multi-byte characters split across tokens)."""
    from warmserve.controller.models import load_tokenizer

    from controller_harness import demo_path

    tok = load_tokenizer(demo_path("llama-20m"))
    text = "Hello, world! Ünïcödé text — with  double spaces, émojis 🙂🙂 and 中文字符 mixed in.\nNew line."
    ids = tok.encode(text)
    for step in (1, 2, 3):
        t = TextStream(tok.decode)
        out = "".join(t.push(ids[i:i + step]) for i in range(0, len(ids), step)) + t.finish()
        assert out == tok.decode(ids)
