"""Reading an HTTP request's body for the API (``api.py``): within deadlines, decoded from its Content-Encoding.

aiohttp's own decoding is off (``Api.app``): it refused an encoding it lacks (br, zstd) with a text 400 before any
middleware ran, and a body that failed to decode was a 500 (found in review). Here an encoding not in
BODY_ENCODINGS, or more than one, is a 415 before the body is read; a body that cannot be read or decoded is a 400;
a body that stalls is a 408 (``BodyTimeoutError``: the API answers it and closes the connection).
"""

from __future__ import annotations

import asyncio
import sys
import zlib

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from warmserve.errors import InvalidArgumentError, WarmServeError

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # aiohttp's own dependency there
    from async_timeout import timeout as _timeout

#: Longest a request body may go with no byte arriving once its handler reads it: past it the client gets a 408 and
#: its connection is closed. Found in review: body reads had no deadline, so a client that sent headers and part
#: of a body, or a malformed chunk late, held its connection for ever. An idle limit, not a total one, so that a
#: slow but live upload is not cut (a second review: 30 s in all refused any 16 MiB body slower than 4.5 Mbit/s).
BODY_IDLE_TIMEOUT_S = 30.0
#: Longest a whole body may take to arrive, however steadily it trickles (bounds a connection held by a client
#: sending a byte a second): 16 MiB (``api.MAX_BODY_BYTES``) in 300 s is 0.45 Mbit/s.
BODY_READ_TIMEOUT_S = 300.0
#: The Content-Encodings of a request body that this server decodes; a body in any other is a 415 before it is read.
BODY_ENCODINGS = ("identity", "gzip", "x-gzip", "deflate")
#: Most gzip members one body may hold (concatenated .gz files; RFC 1952 2.2): each costs a fresh decompressor and
#: a copy of the input left (a review: 1,000 members of 52 KB in all took 5.9 s of CPU), and clients send one.
MAX_GZIP_MEMBERS = 16


class BodyTimeoutError(WarmServeError):
    """The request body stopped coming (BODY_IDLE_TIMEOUT_S) or took longer than BODY_READ_TIMEOUT_S."""

    http_status = 408


class UnsupportedEncodingError(InvalidArgumentError):
    """The request body is in a Content-Encoding this server does not decode (BODY_ENCODINGS), or in several."""

    http_status = 415


def codings_of(request: web.Request) -> list[str]:
    """The body's content codings other than identity; at most one, of BODY_ENCODINGS, else a 415. Every
    Content-Encoding line counts (RFC 9110 5.3: repeated lines are one list). One coding only: each would be a full
    decompression of up to the body limit (a second review: 300 stacked gzip layers of one upload took 2.8 s of
    CPU, and a header could name 1,366), and no client stacks them."""
    listed = ",".join(request.headers.getall("Content-Encoding", []))
    codings = [c.strip().lower() for c in listed.split(",") if c.strip().lower() not in ("", "identity")]
    bad = [c for c in codings if c not in BODY_ENCODINGS]
    if bad or len(codings) > 1:
        what = f"Content-Encoding {bad[0]!r:.60} is not supported" if bad else \
            f"Content-Encoding lists {len(codings)} codings ({', '.join(codings)[:80]}); one at most is decoded"
        raise UnsupportedEncodingError(
            f"{what}: send the body uncompressed or in one of {', '.join(BODY_ENCODINGS)}", codings=codings[:8])
    return codings


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request's body, decoded (``codings_of``): at most ``max_bytes`` before and after decoding (a 413 past
    it), each part within BODY_IDLE_TIMEOUT_S of the last and the whole within BODY_READ_TIMEOUT_S (a 408)."""
    codings = codings_of(request)
    # A body announced over the limit is refused before any of it is read (found in review: all 16 MiB were read
    # and only then refused, so a client learnt of the limit after sending it). A chunked body has no length.
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    loop = asyncio.get_running_loop()
    end_s = loop.time() + BODY_READ_TIMEOUT_S
    parts, size, left_s = [], 0, BODY_READ_TIMEOUT_S
    content = request.content
    try:
        while True:
            left_s = end_s - loop.time()
            if left_s <= 0:
                raise asyncio.TimeoutError
            # What has come already is taken without waiting, so with no timeout scope: a small body comes with its
            # headers, and the two scopes it took (a timer armed and cancelled each, most of the body read's CPU:
            # the review of the controller's CPU per request, 2026-12-07) bounded no wait. readany would return the
            # same bytes, or raise the same error, without yielding either.
            part = content.read_nowait()
            if not part and not content.is_eof():
                # a timeout scope, not wait_for: on Python 3.11 wait_for turned the handler's cancellation (its
                # client gone) into the payload's ConnectionResetError, which aiohttp logged as an ERROR with a
                # traceback
                async with _timeout(min(BODY_IDLE_TIMEOUT_S, left_s)):
                    part = await content.readany()
            if not part:
                break
            size += len(part)
            if size > max_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
            parts.append(part)
    except asyncio.TimeoutError:
        why = f"not all of it came within {BODY_READ_TIMEOUT_S:g} s" if left_s <= BODY_IDLE_TIMEOUT_S else \
            f"none came for {BODY_IDLE_TIMEOUT_S:g} s"
        raise BodyTimeoutError(f"the request body stopped coming ({size} bytes came, then {why}): send it as its "
                               f"headers announce it", received_bytes=size) from None
    except (RequestPayloadError, HttpProcessingError) as e:
        # RequestPayloadError from aiohttp's C parser, HttpProcessingError (a bad chunk) from its Python one
        raise InvalidArgumentError(f"the request body could not be read: {str(e)!r:.200}") from None
    raw = b"".join(parts)
    if codings:
        raw = await asyncio.to_thread(decoded, raw, codings[0], max_bytes)  # zlib off the event loop
    return raw


def decoded(data: bytes, coding: str, max_bytes: int) -> bytes:
    """``data`` decoded from ``coding`` (gzip, x-gzip or deflate): at most ``max_bytes`` of it, or a 413. A gzip
    body may hold up to MAX_GZIP_MEMBERS members, one after another, NUL padding between them skipped (RFC 1952
    2.2; aiohttp decoded them, so does the ``gzip`` module)."""
    gz = coding != "deflate"
    # deflate is zlib's format (RFC 9110), but many clients send raw deflate: told by its first byte, as aiohttp did
    wbits = 16 + zlib.MAX_WBITS if gz else zlib.MAX_WBITS if data[:1] and data[0] & 0xF == 8 else -zlib.MAX_WBITS
    out: list[bytes] = []
    size = 0
    for member in range(MAX_GZIP_MEMBERS if gz else 1):
        if member and not data.startswith(b"\x1f\x8b"):
            # Bytes after a whole member that do not begin another (gzip's magic number) are trailing bytes: found
            # in review, a trailing newline was refused as data that "ends early", garbage as "no gzip data".
            break
        d = zlib.decompressobj(wbits)
        try:
            out.append(d.decompress(data, max_bytes + 1 - size))
        except zlib.error as e:
            raise InvalidArgumentError(
                f"the request body could not be decoded: Content-Encoding {coding}, but it is no {coding} data "
                f"({e}): send it compressed as the header says, or uncompressed without the header") from None
        size += len(out[-1])
        if size > max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
        if not d.eof:
            raise InvalidArgumentError(f"the request body could not be decoded: Content-Encoding {coding}, but its "
                                       f"compressed data ends early: send the whole compressed body")
        data = d.unused_data.lstrip(b"\0") if gz else d.unused_data  # the next gzip member, if any
        if not data:
            return b"".join(out)
    more = f" (more than {MAX_GZIP_MEMBERS} gzip members)" if gz and data.startswith(b"\x1f\x8b") else ""
    raise InvalidArgumentError(
        f"the request body could not be decoded: Content-Encoding {coding}, but its compressed data is followed by "
        f"other bytes{more}: send one compressed body")


def expect_handler(max_bytes: int, authorized):
    """aiohttp's ``expect_handler`` for routes that read a body: ``100 Continue`` only for a request whose body will
    be read. One refused unread (announced over ``max_bytes``, an encoding not decoded, no API key: ``authorized``
    is the guard's own check) gets no 100, so its final answer (413, 415, 401) is the first the client hears and it
    sends no body. Found in review: the 100 went first, and curl sent 512 KiB of a 95 MiB body before its 413."""
    async def expect(request: web.Request) -> None:
        if request.version < (1, 1):  # as aiohttp's own handler: HTTP/1.0 has no interim answers
            return
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers.get('Expect', '')[:80]}")
        if request.content_length is not None and request.content_length > max_bytes or not authorized(request):
            return
        try:
            codings_of(request)
        except UnsupportedEncodingError:
            return
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler: the 100 is no part of the answer

    return expect
