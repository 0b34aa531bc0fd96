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
