"""Found in review (request parsing): bytes after a whole gzip member that do not begin another member were
blamed on the compressed data: a trailing newline (a file sent with one appended) was refused as data that "ends
early, send the whole compressed body", other trailing bytes as "no gzip data". Both are trailing bytes; a second
member that is cut short still ends early."""

import gzip

import pytest

from warmserve.controller import body as body_read
from warmserve.errors import InvalidArgumentError

MEMBER = gzip.compress(b'{"model": "m"}')


@pytest.mark.parametrize("tail", [b"\n", b"\r\n", b"this is not gzip data at all"], ids=["lf", "crlf", "text"])
def test_trailing_bytes_after_a_gzip_body_are_named_as_such(tail):
    with pytest.raises(InvalidArgumentError, match="followed by other bytes: send one compressed body") as e:
        body_read.decoded(MEMBER + tail, "gzip", 1 << 20)
    assert "ends early" not in e.value.message and "no gzip data" not in e.value.message


def test_a_cut_second_gzip_member_still_ends_early():
    with pytest.raises(InvalidArgumentError, match="compressed data ends early"):
        body_read.decoded(MEMBER + MEMBER[:12], "gzip", 1 << 20)
    assert body_read.decoded(MEMBER + MEMBER, "gzip", 1 << 20) == b'{"model": "m"}' * 2
