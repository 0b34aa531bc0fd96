"""CORS, opt-in (`warmserve serve --allowed-origins`): a real server with an API key, asked as a browser page on
another origin asks it (a preflight OPTIONS without credentials, then the request with its Origin). Before: no
setting; a preflight was a 405 (or a 401 with a key) and no answer carried Access-Control-Allow-Origin, so a web
chat UI on http://localhost:3000 could not use the API."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

import serving

KEY = "cors-test-key"
ALLOWED = "http://localhost:3000"
OTHER_ALLOWED = "https://chat.example.com"
DISALLOWED = "http://evil.example"
MODEL = serving.MODELS[0]

server = serving.server_fixture("cors", models=(MODEL,), cpu_workers=1, log_level="WARNING", start_timeout_s=120,
                                restart_backoff_s=None,
                                args=("--api-key", KEY, "--allowed-origins", f"{ALLOWED},{OTHER_ALLOWED}"))
#: A server as configured by default (no allowed origins): no CORS at all, as before the setting existed.
plain = serving.server_fixture("cors-off", models=(MODEL,), cpu_workers=1, log_level="WARNING",
                               start_timeout_s=120, restart_backoff_s=None)


def ask(url: str, method: str, path: str, headers=None, body: dict | None = None):
    """(status, headers, body bytes) of one HTTP request, error statuses included."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={**({"Content-Type": "application/json"} if data else {}),
                                                       **(headers or {})})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def preflight(url: str, path: str, origin: str, method: str = "POST", asked: str | None = "authorization,content-type"):
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if asked is not None:
        headers["Access-Control-Request-Headers"] = asked
    return ask(url, "OPTIONS", path, headers)


def _auth(origin=ALLOWED):
    return {"Origin": origin, "Authorization": f"Bearer {KEY}"}


def test_preflight_of_an_allowed_origin_is_a_204_without_the_api_key(server):
    status, h, body = preflight(server[0], "/v1/chat/completions", ALLOWED)
    assert status == 204, (status, body)
    assert h["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in [v.strip() for v in h["Vary"].split(",")]
    assert [m.strip() for m in h["Access-Control-Allow-Methods"].split(",")] == ["POST"]
    assert h["Access-Control-Allow-Headers"] == "authorization,content-type"
    assert int(h["Access-Control-Max-Age"]) > 0
    # another listed origin, a GET route, no headers asked for: the route's methods and the usual headers
    status, h, _ = preflight(server[0], "/v1/models", OTHER_ALLOWED, method="GET", asked=None)
    assert status == 204 and h["Access-Control-Allow-Origin"] == OTHER_ALLOWED
    assert "GET" in h["Access-Control-Allow-Methods"]
    assert h["Access-Control-Allow-Headers"].lower() == "authorization, content-type"


def test_a_streamed_chat_completion_carries_the_allowed_origin(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
            "temperature": 0, "stream": True}
    status, h, data = ask(server[0], "POST", "/v1/chat/completions", _auth(), body)
    assert status == 200, data
    assert h["Content-Type"].startswith("text/event-stream")
    assert h["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in h["Vary"] and "x-request-id" in h["Access-Control-Expose-Headers"]
    assert data.rstrip().endswith(b"data: [DONE]")
    status, h, data = ask(server[0], "GET", "/v1/models", _auth())
    assert status == 200 and h["Access-Control-Allow-Origin"] == ALLOWED
    assert [m["id"] for m in json.loads(data)["data"]] == [MODEL]


@pytest.mark.parametrize("case", ["401 no key", "404 no route", "400 bad body"])
def test_error_answers_carry_the_allowed_origin(server, case):
    if case == "401 no key":
        status, h, data = ask(server[0], "POST", "/v1/chat/completions", {"Origin": ALLOWED},
                              {"model": MODEL, "messages": []})
    elif case == "404 no route":
        status, h, data = ask(server[0], "GET", "/v1/no-such-route", _auth())
    else:
        status, h, data = ask(server[0], "POST", "/v1/chat/completions", _auth(), {"model": MODEL})
    assert status == int(case[:3]), (status, data)
    assert h["Access-Control-Allow-Origin"] == ALLOWED, dict(h)
    assert json.loads(data)["error"]["message"]  # the browser's script can read why


def test_a_disallowed_origin_gets_no_cors_headers_and_its_preflight_a_403(server):
    status, h, data = ask(server[0], "GET", "/v1/models", _auth(DISALLOWED))
    assert status == 200  # answered (a client outside a browser needs no CORS), but no browser may read it
    assert not [k for k in h if k.lower().startswith("access-control-")], dict(h)
    status, h, data = preflight(server[0], "/v1/chat/completions", DISALLOWED)
    assert status == 403, (status, data)
    assert not [k for k in h if k.lower().startswith("access-control-")], dict(h)
    err = json.loads(data)["error"]
    assert DISALLOWED in err["message"] and "--allowed-origins" in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_default_config_has_no_cors(plain):
    status, h, _ = ask(plain[0], "GET", "/v1/models", {"Origin": ALLOWED})
    assert status == 200
    assert not [k for k in h if k.lower().startswith("access-control-")], dict(h)
    status, h, data = preflight(plain[0], "/v1/chat/completions", ALLOWED)
    assert status == 405 and "POST" in h["Allow"], (status, data)
    assert not [k for k in h if k.lower().startswith("access-control-")], dict(h)
