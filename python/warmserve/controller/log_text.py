"""A client's text as it goes into one access-log line: nothing in it can end the line, fake another, or write
fields of its own into this one."""

from __future__ import annotations

#: Characters a log line shows escaped (\x0a): C0 and C1 controls, DEL, and Unicode's line and paragraph separators.
_UNPRINTABLE = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
                for c in (*range(0x20), *range(0x7f, 0xa0), 0x2028, 0x2029)}
#: What a field's value escapes besides: the ``=`` of a field of its own, and the escapes' ``\\``.
_FIELD = {**_UNPRINTABLE, ord("="): "\\x3d", ord("\\"): "\\x5c"}
#: Most characters of a client's value a log line shows: a 16 MiB body's model name was a 16 MiB line.
MAX_LOGGED_CHARS = 256


def printable(text: str, table: dict = _UNPRINTABLE) -> str:
    """``text`` for one log line: what could end the line or fake another is escaped."""
    return text.translate(table)


def field_value(text: str) -> str:
    """``text`` as the value of a ``key=value`` field: ``printable``, with ``=`` and ``\\`` escaped too (\\x3d,
    \\x5c), cut to MAX_LOGGED_CHARS with its length said. Found in review: a request for the model
    ``x status=200 ... id=forged`` logged a line whose first ``status=`` was 200, a field a client wrote; with ``=``
    escaped no word of the client's text reads as a field, and with ``\\`` escaped a name's own text ``\\x0a``
    is not taken for an escaped newline."""
    cut = len(text) > MAX_LOGGED_CHARS
    shown = printable(text[:MAX_LOGGED_CHARS] if cut else text, _FIELD)
    return f"{shown}...({len(text)} chars)" if cut else shown
