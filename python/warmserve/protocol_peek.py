"""Reading a request's ``id`` from the first bytes of a MessagePack message, without decoding it.

The worker's link thread answers a message it refuses unread (its queue of requests is past its byte budget:
``link.Link``) under the message's own id, so that the sender can match the refusal to its request. ``protocol.
request_id_of`` would find the id wherever it is, but it skips every value before and after it: a 60 MiB prompt of
small token ids took it 0.26 s (measured in review), in the thread that keeps the heartbeats. Every message
``protocol.encode`` writes gives its tag and then its id first, so a few header bytes suffice. A message that does
not decode (cut short, nested too deep) gets its ``ProtocolError`` under the id read this way too
(``protocol._protocol_error``).
"""

from __future__ import annotations

#: MessagePack scalars by first byte: bytes that follow the type byte (ints, floats, nil, bools). Fixints are 0.
_SCALAR_BYTES = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1,
                 0xd1: 2, 0xd2: 4, 0xd3: 8}
#: Strings and binaries by first byte: how many bytes give their length.
_LENGTH_BYTES = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4}


def leading_request_id(data: bytes, max_entries: int = 8) -> int:
    """The ``id`` of a message whose top-level map gives it among its first ``max_entries`` entries, before any
    array, map or ext value; -1 otherwise (the id of any message ``protocol.encode`` wrote). Reads header bytes
    only, never a container's values."""
    try:
        b = data[0]
        if 0x80 <= b <= 0x8f:
            n, pos = b & 0x0f, 1
        elif b in (0xde, 0xdf):
            width = 2 if b == 0xde else 4
            n, pos = int.from_bytes(data[1:1 + width], "big"), 1 + width
        else:
            return -1
        for _ in range(min(n, max_entries)):
            key, pos = _str_at(data, pos)
            if key is None:
                return -1
            if key == b"id":
                return _int_at(data, pos)
            pos = _skip_scalar(data, pos)
            if pos < 0:
                return -1
    except IndexError:
        pass
    return -1


def _str_at(data: bytes, pos: int) -> tuple[bytes | None, int]:
    b = data[pos]
    if 0xa0 <= b <= 0xbf:
        n, pos = b & 0x1f, pos + 1
    elif b in (0xd9, 0xda, 0xdb):
        width = _LENGTH_BYTES[b]
        n, pos = int.from_bytes(data[pos + 1:pos + 1 + width], "big"), pos + 1 + width
    else:
        return None, pos
    if pos + n > len(data):
        return None, pos
    return data[pos:pos + n], pos + n


def _int_at(data: bytes, pos: int) -> int:
    """The integer at ``pos`` (-1 for any other value, a bool included: msgspec refuses one as an id)."""
    b = data[pos]
    if b <= 0x7f:
        return b
    if b >= 0xe0:
        return b - 0x100
    if 0xcc <= b <= 0xd3:
        width = _SCALAR_BYTES[b]
        if pos + 1 + width > len(data):
            return -1
        return int.from_bytes(data[pos + 1:pos + 1 + width], "big", signed=b >= 0xd0)
    return -1


def _skip_scalar(data: bytes, pos: int) -> int:
    """The position after the scalar, string or binary at ``pos``; -1 for an array, map or ext."""
    b = data[pos]
    if b <= 0x7f or b >= 0xe0:
        return pos + 1
    if b in _SCALAR_BYTES:
        return pos + 1 + _SCALAR_BYTES[b]
    if 0xa0 <= b <= 0xbf:
        return pos + 1 + (b & 0x1f)
    if b in _LENGTH_BYTES:
        width = _LENGTH_BYTES[b]
        return pos + 1 + width + int.from_bytes(data[pos + 1:pos + 1 + width], "big")
    return -1


