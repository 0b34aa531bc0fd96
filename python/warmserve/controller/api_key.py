"""The HTTP API key as a client sends it and its comparison with what a request carries (``api.py``'s guard, and the
``Expect: 100-continue`` check of ``body.expect_handler``)."""

from __future__ import annotations

import hmac


def key_bytes(key: str) -> bytes:
    """The bytes a client sends for ``key``: encoded as the header is (``key_matches``), so that a key of
    non-UTF-8 bytes from the shell (decoded with surrogateescape) is the bytes it came from. Found in review: a
    plain encode() raised on one, and every protected request was a 400 whose text named a character of the key."""
    return key.encode("utf-8", "surrogateescape")


def key_matches(header: str, key: bytes) -> bool:
    """Whether an Authorization header carries ``key`` (``key_bytes``) as a Bearer token, compared in constant
    time. The scheme is case-insensitive (RFC 9110 §11.1). The header is compared as the bytes that came (aiohttp
    decodes them as UTF-8 with surrogateescape): found in review, a non-UTF-8 byte in it was a 400 and a logged
    traceback instead of a 401."""
    scheme, _, given = header.strip().partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    try:
        raw = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(raw, key)
