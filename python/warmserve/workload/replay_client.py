"""An open-loop OpenAI client: sends a trace's requests at their arrival times and times each one.

Open loop means a request is sent at its arrival time whether or not earlier ones have finished (a closed-loop
client would slow down with the server and hide its queueing). Each request streams (`/v1/completions`,
``stream: true``), so the time to first token is when the first non-empty piece of text arrives; TPOT is
(end - first token) / (completion tokens - 1), with the count from the server's usage chunk. Prompts are token
ids (vLLM and warmserve take them), so a request carries exactly the trace's prompt length.

Every request ends in exactly one outcome: ``ok``, ``http_error`` (a status >= 400 before streaming),
``stream_error`` (an error event in the stream), ``error`` (connection refused or reset, an answer this client
cannot read, a 200 with no SSE event among them, or a stream that ended early, with neither a ``finish_reason``
nor ``data: [DONE]``: the reason is kept, and a first token's time too) or ``unanswered``
(still running when the replay's deadline passed; cancelled then). Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np

OUTCOMES = ("ok", "http_error", "stream_error", "error", "unanswered")


@dataclass(frozen=True)
class ReplayRequest:
    #: seconds after the replay's start when the request is sent
    arrival_s: float
    #: model name as the server knows it
    model: str
    #: prompt token ids
    prompt: list
    #: max_tokens asked for
    max_tokens: int


@dataclass
class Outcome:
    index: int
    model: str
    arrival_s: float
    prompt_tokens: int
    max_tokens: int
    #: "ok" or one of the failure kinds above
    status: str = "unanswered"
    #: when it was sent, relative to the replay's start, seconds
    sent_s: float = float("nan")
    #: first non-empty text, relative to the replay's start, seconds (NaN: none)
    first_s: float = float("nan")
    #: last byte, relative to the replay's start, seconds (NaN: did not finish)
    end_s: float = float("nan")
    completion_tokens: int = 0
    error: str = ""
    finish_reason: str = ""

    @property
    def ttft_s(self) -> float:
        return self.first_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        if self.status != "ok" or self.completion_tokens < 2:
            return float("nan")
        return (self.end_s - self.first_s) / (self.completion_tokens - 1)


@dataclass(frozen=True)
class ClientConfig:
    #: base URL of the server, e.g. http://127.0.0.1:8000 (``/v1/completions`` is appended)
    endpoint: str
    #: Bearer token, if the server wants one
    api_key: str = ""
    #: after the last arrival, how long requests may still run before they count as unanswered, seconds
    drain_s: float = 60.0
    #: sampling temperature sent with every request
    temperature: float = 1.0
    #: connect timeout per request, seconds
    connect_timeout_s: float = 10.0
    extra_body: dict = field(default_factory=dict)


def synthetic_prompts(lengths, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Prompt token ids of the given lengths, uniform over the vocabulary minus the first 3 (special) ids."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab_size, int(n)).tolist() for n in lengths]


class _EventError(Exception):
    """An error event in the stream: the server's message."""


def _on_data(data: bytes, o: Outcome, now: float) -> bool:
    """One SSE ``data:`` payload: the first text's time, the finish reason, the usage count. True for the stream's
    end marker, ``[DONE]``."""
    if data == b"[DONE]":
        return True
    msg = json.loads(data)
    err = msg.get("error")  # OpenAI's {"message": ...}, or plain text (TGI and others)
    if err is not None:
        raise _EventError(str(err.get("message", err) if isinstance(err, dict) else err)[:300])
    for ch in msg.get("choices") or ():
        text = ch.get("text")
        if text is None:
            text = (ch.get("delta") or {}).get("content")
        if text and o.first_s != o.first_s:
            o.first_s = now
        if ch.get("finish_reason"):
            o.finish_reason = ch["finish_reason"]
    if msg.get("usage"):
        o.completion_tokens = int(msg["usage"].get("completion_tokens") or 0)
    return False


def _data_lines(event: bytes):
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            yield line[5:].strip()


class _SSEEvents:
    """Splits a byte stream into SSE events. Lines end in LF, CRLF or CR (the SSE spec allows all three;
    sse-starlette frames with CRLF): they are turned into LF, holding back a CR that ends a chunk until the next
    byte shows whether an LF follows it."""

    def __init__(self):
        self.buf = b""
        self.cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.cr:
            chunk = b"\r" + chunk
        self.cr = chunk.endswith(b"\r")
        if self.cr:
            chunk = chunk[:-1]
        self.buf += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, self.buf = self.buf.split(b"\n\n")
        return events

    def close(self) -> bytes:
        """What is left at the end of the stream: a last event without its blank line."""
        rest = self.buf + (b"\n" if self.cr else b"")
        self.buf, self.cr = b"", False
        return rest


async def _one(session, cfg: ClientConfig, url: str, i: int, r: ReplayRequest, o: Outcome, t0: float) -> None:
    body = {"model": r.model, "prompt": r.prompt, "max_tokens": int(r.max_tokens), "stream": True,
            "temperature": cfg.temperature, "stream_options": {"include_usage": True}, **cfg.extra_body}
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    o.sent_s = time.perf_counter() - t0
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            if resp.status >= 400:
                o.status = "http_error"
                o.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                o.end_s = time.perf_counter() - t0
                return
            sse = _SSEEvents()
            n_data = 0
            done = False  # `data: [DONE]` seen
            head = b""  # the answer's start, for the error when it holds no event
            async for chunk in resp.content.iter_any():
                now = time.perf_counter() - t0
                head = (head + chunk)[:300] if len(head) < 300 else head
                for event in sse.feed(chunk):
                    for data in _data_lines(event):
                        n_data += 1
                        done |= _on_data(data, o, now)
            o.end_s = time.perf_counter() - t0
            for data in _data_lines(sse.close()):  # a server that ends without the last blank line
                n_data += 1
                done |= _on_data(data, o, o.end_s)
            if not n_data:  # a 200 that streamed no event: the client read none of it, so it is no answer
                o.status = "error"
                o.error = f"no SSE data event in the HTTP {resp.status} answer: {head[:200]!r}"
                return
            if not done and not o.finish_reason:
                # found in review: a stream that closed after some text, with neither a finish_reason nor [DONE]
                # (the engine died mid-answer), counted as ok. It is an error; its first text's time stays, so
                # bench replay counts it answered (its TTFT) but not completed, as a stream cut by a reset
                o.status = "error"
                o.error = (f"stream ended early: no finish_reason and no [DONE] after {n_data} data events "
                           f"({o.completion_tokens} completion tokens reported)")
                return
            if o.first_s != o.first_s:  # an answer with no text at all: the end is its first token
                o.first_s = o.end_s
            o.status = "ok"
    except _EventError as e:
        o.status = "stream_error"
        o.error = str(e)
        o.end_s = time.perf_counter() - t0
    except asyncio.CancelledError:
        o.status = "unanswered"
        raise
    except Exception as e:  # a connection refused or reset, or an answer of a shape this client cannot read
        o.status = "error"
        o.error = f"{type(e).__name__}: {e}"[:300]
        o.end_s = time.perf_counter() - t0


async def replay(cfg: ClientConfig, requests: list[ReplayRequest], progress=None) -> list[Outcome]:
    """Send every request at its arrival time (seconds after this call), wait for the answers until the last
    arrival plus ``drain_s``, cancel what is left (``unanswered``). ``progress(outcome)`` is called per finished
    request."""
    import aiohttp

    url = cfg.endpoint.rstrip("/") + "/v1/completions"
    outcomes = [Outcome(i, r.model, r.arrival_s, len(r.prompt), r.max_tokens) for i, r in enumerate(requests)]
    timeout = aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout_s, sock_connect=cfg.connect_timeout_s)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    tasks: list[asyncio.Task] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        t0 = time.perf_counter()
        for i, r in enumerate(requests):
            delay = r.arrival_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(_one(session, cfg, url, i, r, outcomes[i], t0))
            if progress is not None:
                t.add_done_callback(lambda _t, o=outcomes[i]: progress(o))
            tasks.append(t)
        last = requests[-1].arrival_s if requests else 0.0
        left = last + cfg.drain_s - (time.perf_counter() - t0)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(left, 0.0))
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    return outcomes
