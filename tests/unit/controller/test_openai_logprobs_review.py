"""Logprobs through the HTTP API, from the API review: a slow client's stream keeps each chunk's logprobs with its
text, chat ``bytes`` are each token's own (they join into the characters tokens split), completions'
``top_logprobs`` keep the likelier of two tokens with one text, and ``text_offset`` follows the text. Served by
aiohttp on real sockets with the demo model's real tokenizer; the controller behind it is a stand-in whose
requests are real ``Req`` objects fed as a worker's events feed them (generation through the real controller:
tests/integration/test_openai_params.py)."""

import asyncio
import json
import socket
import threading

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controller_harness import HttpController
from warmserve.controller.api import Api
from warmserve.protocol import TokenLogprobs

MODEL = "llama-20m"
FFFD = "\ufffd"


class Ctl(HttpController):
    """Serves the demo model. Each request gets ``tokens`` with ``logprobs`` (one per token) from a task that
    pushes them ``per_event`` at a time, yielding to the loop between events, then ends it ("length") and sets
    ``produced``; the prompt's logprobs are ``prompt_lp`` each."""

    def __init__(self, model, tokens, logprobs, per_event=1, prompt_lp=None):
        super().__init__(model)
        self.tokens, self.lps, self.per_event, self.prompt_lp = list(tokens), list(logprobs), per_event, prompt_lp
        self.produced = asyncio.Event()
        self.tasks = []

    async def submit(self, model, ids, sampling, siblings=()):
        r = await super().submit(model, ids, sampling)
        prompt_lps = [self.prompt_lp] * (len(ids) - 1) if sampling.prompt_logprobs is not None else None
        self.tasks.append(asyncio.ensure_future(self._produce(r, prompt_lps)))
        return r

    async def _produce(self, r, prompt_lps):
        k = self.per_event
        for at in range(0, len(self.tokens), k):
            r.push(self.tokens[at:at + k], self.lps[at:at + k], prompt_lps if at == 0 else None)
            for _ in range(3):
                await asyncio.sleep(0)
        r.finish("length")
        self.produced.set()


def _lp(logprob, top=()):
    return TokenLogprobs(logprob=logprob, top_ids=[t for t, _ in top], top_logprobs=[v for _, v in top])


def _serve(ctl, go):
    async def main():
        async with TestClient(TestServer(Api(ctl).app()), timeout=aiohttp.ClientTimeout(total=60)) as c:
            out = await go(c)
        await asyncio.gather(*ctl.tasks, return_exceptions=True)
        return out

    return asyncio.run(main())


def _events(raw: str) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]


def test_a_slow_clients_stream_keeps_each_chunks_logprobs_with_its_text(model):
    """Found in review: logprobs were taken when a chunk was written, so while a slow client's writes waited, the
    pump ran on and the next chunk written got the logprobs of every piece made meanwhile, later chunks none. The
    client here reads nothing until every token is made: the server's writes wait on a full socket."""
    tok = model.tokenizer
    ids = tok.encode(" the quick brown fox jumps over the lazy dog" * 40, add_special_tokens=False)[:300]
    assert all(FFFD not in tok.decode([t]) for t in ids)  # whole-character tokens: each text is its delta's
    alts = [(t, -3.0) for t in range(100, 120)]
    ctl = Ctl(model, ids, [_lp(-1.0 - i / 1000, alts) for i in range(len(ids))])
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                       "max_tokens": len(ids), "logprobs": True, "top_logprobs": 20}).encode()
    produced, got, errors = threading.Event(), [], []

    def client(port):
        try:
            s = socket.socket()
            s.settimeout(60)  # a server that stops writing fails the test instead of hanging it
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            # the loop sets it within 60 s, produced or not: then a refusal is read and shown, not a timeout
            assert produced.wait(120), "the test's loop never let the client read"
            while chunk := s.recv(1 << 16):
                got.append(chunk)
            s.close()
        except BaseException as e:  # reaches the test thread
            errors.append(e)

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # accepted sockets inherit it
        runner = web.AppRunner(Api(ctl).app())
        await runner.setup()
        await web.SockSite(runner, listener).start()
        th = threading.Thread(target=client, args=(listener.getsockname()[1],))
        th.start()
        try:  # bounded: a request the server refused is never produced, and the test must say so, not hang
            await asyncio.wait_for(ctl.produced.wait(), 60)
            for _ in range(50):  # the pump takes what is queued: a few loop turns
                await asyncio.sleep(0)
        except asyncio.TimeoutError:
            errors.append(AssertionError("the stand-in controller never produced the tokens in 60 s"))
        finally:
            produced.set()  # lets the client read (and end) either way
            await asyncio.to_thread(th.join, 60)
            await runner.cleanup()
        assert not th.is_alive(), "the client thread still reads after 60 s"

    asyncio.run(main())
    raw = b"".join(got).decode()
    assert raw.startswith("HTTP/1.1 200"), raw[:300]
    assert not errors, errors
    chunks = [c["choices"][0] for c in _events(raw) if c["choices"] and c["choices"][0]["logprobs"] is not None]
    assert len(chunks) > 1
    wrong = [(c["delta"].get("content", ""), "".join(e["token"] for e in c["logprobs"]["content"])) for c in chunks]
    wrong = [w for w in wrong if w[0] != w[1]]
    assert not wrong, f"{len(wrong)} of {len(chunks)} chunks carry other tokens' logprobs, e.g. {wrong[:2]}"
    lps = [e["logprob"] for c in chunks for e in c["logprobs"]["content"]]
    assert lps == [lp.logprob for lp in ctl.lps]


def test_chat_bytes_are_each_tokens_own_and_join_into_the_characters_it_splits(model):
    """Found in review: ``bytes`` were the UTF-8 of each token's decode, U+FFFD (EF BF BD) for a token that holds
    part of a character, so they did not join into the text as OpenAI documents."""
    tok = model.tokenizer
    text = "café 😀 東京"
    ids = tok.encode(text, add_special_tokens=False)
    assert any(FFFD in tok.decode([t]) for t in ids)  # the demo tokenizer splits these characters
    lps = [_lp(-1.0, [(t, -1.0), (ids[(i + 1) % len(ids)], -2.0)]) for i, t in enumerate(ids)]

    async def go(c):
        out = []
        for stream in (False, True):
            r = await c.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": len(ids),
                "logprobs": True, "top_logprobs": 2, "stream": stream})
            assert r.status == 200
            if stream:
                out.append([e for c in _events(await r.text()) if c["choices"] and c["choices"][0]["logprobs"]
                            for e in c["choices"][0]["logprobs"]["content"]])
            else:
                out.append((await r.json())["choices"][0]["logprobs"]["content"])
        return out

    for content in _serve(Ctl(model, ids, lps), go):
        assert [e["token"] for e in content] == [tok.decode([t]) for t in ids]
        assert b"".join(bytes(e["bytes"]) for e in content).decode() == text
        for i, e in enumerate(content):
            assert [bytes(a["bytes"]) for a in e["top_logprobs"]] == [
                tok.token_bytes(ids[i]), tok.token_bytes(ids[(i + 1) % len(ids)])]


def test_token_bytes_of_a_sentencepiece_byte_fallback_tokenizer(tmp_path):
    """SentencePiece's ``<0xNN>`` pieces are the byte they name; a whole piece's bytes are those of its text (the
    token's text, as decoded alone). A Llama-2-style tokenizer.json built with the ``tokenizers`` library, read by
    the engine's Tokenizer."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, normalizers

    from warmserve.engine.tokenizer import Tokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ("\u2581", "h", "i", "\u2581h", "\u2581hi", "é"):
        vocab[piece] = len(vocab)
    hf = HF(models.BPE(vocab=vocab, merges=[("\u2581", "h"), ("\u2581h", "i")], byte_fallback=True,
                       unk_token="<unk>", fuse_unk=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    hf.add_special_tokens(["<unk>", "<s>", "</s>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer(str(tmp_path))
    text = "hi é 😀"
    ids = tok.encode(text)
    split = [t for t in ids if FFFD in tok.decode([t])]
    assert len(split) == 4  # the emoji: four byte-fallback tokens
    assert b"".join(tok.token_bytes(t) for t in split) == "😀".encode()
    assert all(tok.token_bytes(t) == tok.decode([t]).encode() for t in ids if t not in split)
    assert [tok.token_bytes(vocab[f"<0x{b:02X}>"]) for b in (0x80, 0xF0)] == [b"\x80", b"\xf0"]
    assert tok.token_bytes(vocab["é"]) == "é".encode()


def test_completion_top_logprobs_keep_the_likelier_of_two_tokens_with_one_text(model):
    """Keys are decoded texts, as vLLM's: two tokens that are each part of a character both decode to U+FFFD.
    Found in review: the later, less likely one overwrote the likelier, so a top-1 token's own entry showed a
    lower logprob than its token_logprobs."""
    tok = model.tokenizer
    split = [t for t in tok.encode("😀東", add_special_tokens=False) if tok.decode([t]) == FFFD][:2]
    word = tok.encode(" hello", add_special_tokens=False)[0]
    assert len(split) == 2
    lps = [_lp(-0.5, [(split[0], -0.5), (split[1], -2.5), (word, -3.0)])]

    async def go(c):
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1, "logprobs": 3})
        return (await r.json())["choices"][0]["logprobs"]

    lp = _serve(Ctl(model, split[:1], lps), go)
    assert lp["tokens"] == [FFFD] and lp["token_logprobs"] == [-0.5]
    assert lp["top_logprobs"] == [{FFFD: -0.5, tok.decode([word]): -3.0}]


def test_text_offsets_follow_the_text_through_split_characters_streamed_or_not(model):
    """Found in review: offsets were summed from each token's own decode (one U+FFFD per byte of a split
    character), so they ran past the end of the text. Each token's offset is where its text begins: the number of
    whole characters before it, echoed prompt and generated tokens alike."""
    tok = model.tokenizer
    prompt = "naïve café 😀 — 東京 ok"
    gen = tok.encode(" é😀 東 x", add_special_tokens=False)
    lp = _lp(-1.0)
    prompt_ids = tok.encode(prompt, add_special_tokens=True)

    def starts(ids):
        return [len(tok.decode(ids[:k]).rstrip(FFFD)) for k in range(len(ids))]

    want = starts(prompt_ids) + [len(prompt) + o for o in starts(gen)]
    body = {"model": MODEL, "prompt": prompt, "max_tokens": len(gen), "echo": True, "logprobs": 0}

    async def go(c):
        out = []
        for per_event in (1, 3):
            ctl.per_event = per_event
            r = await c.post("/v1/completions", json=body)
            choice = (await r.json())["choices"][0]
            out.append((choice["text"], choice["logprobs"]["text_offset"]))
            r = await c.post("/v1/completions", json={**body, "stream": True})
            chunks = [e["choices"][0] for e in _events(await r.text())]
            out.append(("".join(c["text"] for c in chunks),
                        [o for c in chunks if c["logprobs"] for o in c["logprobs"]["text_offset"]]))
        return out

    ctl = Ctl(model, gen, [lp] * len(gen), prompt_lp=lp)
    for text, offsets in _serve(ctl, go):
        assert text == prompt + tok.decode(gen)
        assert offsets == want and max(offsets) < len(text)
