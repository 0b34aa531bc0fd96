"""`warmserve serve --host ::1` says where it serves as a URL a client can use. Found in review: its ready line
(JSON and text) said http://::1:PORT, which no HTTP client parses; an IPv6 address goes in brackets."""

from __future__ import annotations

import json
import urllib.request

import pytest

import serving

MODEL = serving.MODELS[0]


@pytest.mark.skipif(not serving.ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_host_is_bracketed_in_the_ready_lines(tmp_path):
    proc, url = serving.start(tmp_path, models=(MODEL,), cpu_workers=1, args=("--host", "::1"),
                              start_timeout_s=120, restart_backoff_s=None)
    try:
        assert url.startswith("http://[::1]:"), url
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == [MODEL]
        ready = [line for line in (tmp_path / "serve.log").read_text().splitlines() if "ready: OpenAI API at" in line]
        assert len(ready) == 1 and f"at {url}/v1 " in ready[0], ready
    finally:
        assert serving.stop(proc) == 0, (tmp_path / "serve.log").read_text()[-3000:]
