"""`bench replay`'s side requests to the server (its /metrics, /stats, and the --endpoint probe) go straight to it
whatever proxy the environment names, as the replay's own client does (aiohttp, trust_env off). Found in review:
with $http_proxy set, /metrics and /stats went to the proxy, so a replay reported its prewarm hits, misses and
engine starts as unknown (None) while every request of it was served. A real HTTP server on loopback."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest

from warmserve.bench import replay_setup as R


class _Server(http.server.BaseHTTPRequestHandler):
    """What a warmserve server answers on the three routes the replay reads besides its requests."""

    def do_GET(self):
        body = {
            "/metrics": b'warmserve_prewarm_hits_total{model="m"} 2.0\nwarmserve_prewarm_misses_total{model="m"} 1.0\n',
            "/stats": json.dumps({"engine_starts": [[1.5, 2.5]]}).encode(),
            "/v1/models": json.dumps({"object": "list", "data": []}).encode(),
        }.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def server_url():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Server)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()
    t.join()


@pytest.fixture
def proxy_nowhere(monkeypatch):
    """$http_proxy and $HTTP_PROXY at a loopback port nothing listens on, and no $no_proxy: a request that took the
    environment's proxy would fail."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: a connection there is refused
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_the_replays_reads_of_metrics_and_stats_do_not_take_the_environments_proxy(server_url, proxy_nowhere):
    assert R.fetch_prewarm_metrics(server_url) == {"prewarm_hits": 2.0, "prewarm_misses": 1.0,
                                                   "prewarm_loading_starts": 0.0, "migrated_requests": 0.0}
    assert R.fetch_engine_starts(server_url) == [[1.5, 2.5]]  # before: both None
    R.check_endpoint(server_url)  # raises InvalidArgumentError where it gets no answer
