"""The API review's fixes seen from outside a real `warmserve serve` (one CPU worker, the demo llama-20m), with
the official `openai` client and raw sockets: streamed logprobs match the whole answer's when a stop string cuts
the text, the request id reaches the client and the access log, and a client that hangs up is logged (499)."""

from __future__ import annotations

import json
import socket
import time

import pytest

import serving

openai = pytest.importorskip("openai")

MODEL = serving.MODELS[0]  # llama-20m

server = serving.server_fixture("review", models=(MODEL,), cpu_workers=1, stop_timeout_s=30, log_level="INFO",
                                start_timeout_s=120, restart_backoff_s=None)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=60)


def _access_line(tmp, rid: str, timeout_s: float = 10.0) -> str:
    """The access-log line of request ``rid`` in the server's log (it is written when the handler ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [ln for ln in (tmp / "serve.log").read_text().splitlines()
                 if "warmserve.access" in ln and ln.endswith(f" id={rid}")]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.1)


def _stops(texts: list[str]) -> list[str]:
    """Stop strings that end inside a token: token k+1's text and the first character of token k+2's."""
    return [texts[k + 1] + texts[k + 2][:1] for k in range(2, 8) if texts[k + 1].strip() and texts[k + 2].strip()]


def test_streamed_logprobs_with_a_stop_string_equal_the_whole_answers(client):
    """Found in review: the stream listed the tokens of the stop string that was then cut from the text."""
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0, logprobs=1,
              extra_body={"ignore_eos": True})
    texts = client.completions.create(**kw).choices[0].logprobs.tokens
    stops = _stops(texts)
    assert len(stops) >= 3, texts
    for stop in stops[:4]:
        whole = client.completions.create(stop=[stop], **kw).choices[0]
        chunks = list(client.completions.create(stop=[stop], stream=True, **kw))
        lps = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
        assert [t for lp in lps for t in lp.tokens] == whole.logprobs.tokens, stop
        assert [o for lp in lps for o in lp.text_offset] == whole.logprobs.text_offset, stop

    chat = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=24,
                temperature=0, logprobs=True, extra_body={"ignore_eos": True})
    texts = [c.token for c in client.chat.completions.create(**chat).choices[0].logprobs.content]
    for stop in _stops(texts)[:2]:
        whole = client.chat.completions.create(stop=[stop], **chat).choices[0]
        chunks = list(client.chat.completions.create(stop=[stop], stream=True, **chat))
        streamed = [x.token for c in chunks if c.choices and c.choices[0].logprobs
                    for x in c.choices[0].logprobs.content]
        assert streamed == [x.token for x in whole.logprobs.content], stop


def test_the_request_id_is_the_header_the_body_and_the_access_log_line(server, client):
    tmp = server[2]
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="hi", max_tokens=2)
    body = raw.parse()
    assert raw.headers["x-request-id"] == body.id and body.id.startswith("cmpl-")
    assert " status=200 " in _access_line(tmp, body.id)
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True) as r:
        rid = r.headers["x-request-id"]
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert rid.startswith("chatcmpl-") and events and {e["id"] for e in events} == {rid}
    assert " status=200 " in _access_line(tmp, rid)
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    rid = e.value.response.headers["x-request-id"]
    assert e.value.code == "model_not_found" and " status=404 " in _access_line(tmp, rid)


def test_a_client_that_hangs_up_on_a_whole_answer_is_logged_as_499(server):
    """Found in review: the handler's cancellation skipped its access-log line."""
    url, _, tmp = server
    host, port = url.split("//")[1].split(":")
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1500, "ignore_eos": True}).encode()
    before = (tmp / "serve.log").read_text().count(" status=499 ")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(0.5)  # it is generating: 1500 tokens take seconds on one CPU thread
    s.close()
    deadline = time.monotonic() + 10
    while True:
        lines = [ln for ln in (tmp / "serve.log").read_text().splitlines() if " status=499 " in ln]
        if len(lines) > before or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == before + 1, (tmp / "serve.log").read_text()[-2000:]
    assert f"POST /v1/completions model={MODEL} status=499 " in lines[-1] and " id=cmpl-" in lines[-1]
    assert serving.wait_idle(url) == []  # and the generation was stopped
