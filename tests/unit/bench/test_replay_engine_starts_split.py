"""`bench replay --warmup-s` splits the fresh engine processes between the warm-up and the measured span by when
their replacement began (`/stats` `engine_starts` `began_unix_s`) against the replay's t = 0, as the instance
starts are split (by when they were decided).

Found in review: the split went by which processes `/stats` listed at t = 0, and an entry is written only once its
process is admitted, seconds after it began: autoscale's warm-up start still starting at t = 0 was booked as a
measured engine start. A real local server stands for the cluster: its `/stats` lists no start at t = 0 (the
warm-up's is still starting), then that one and one begun after t = 0."""

from __future__ import annotations

import json
import time

import pytest

from replay_harness import replay_args
from stub_server import serve_in_thread, stream_completion
from warmserve.bench import replay as R
from warmserve.bench.replay_setup import split_engine_starts

LIVE = ["--policy", "autoscale", "--models", "2", "--checkpoints", "llama-20m", "--cpu-workers", "1",
        "--duration-s", "400", "--time-scale", "0.005", "--rate", "4", "--max-output-tokens", "2",
        "--start-lead-s", "0", "--drain-s", "1", "--warmup-s", "200", "--quiet"]


def start(pid: int, began: float | None) -> dict:
    e = {"gpu_id": 0, "model": "m", "worker_id": "w", "old_pid": pid - 1, "new_pid": pid, "stop_s": 0.001,
         "start_s": 2.5}
    return e if began is None else {**e, "began_unix_s": began}


@pytest.fixture
def cluster_server():
    """A local server answering completions at once, /metrics with no starts, and /stats as said above."""
    from aiohttp import web

    box: dict = {"stats_at": []}

    async def metrics(request):
        return web.Response(text="warmserve_prewarm_hits 0\nwarmserve_prewarm_misses 0\n")

    async def stats(request):
        box["stats_at"].append(time.time())
        t0 = box["stats_at"][0]  # the first read is the replay's at t = 0
        starts = [] if len(box["stats_at"]) == 1 else [start(11, t0 - 0.5), start(12, t0 + 0.2)]
        return web.json_response({"engine_starts": starts})

    routes = [("POST", "/v1/completions", stream_completion), ("GET", "/metrics", metrics), ("GET", "/stats", stats)]
    with serve_in_thread(routes) as srv:
        box["url"] = srv.url
        yield box


def test_a_warmup_engine_start_still_starting_at_t0_is_the_warmups(cluster_server, tmp_path, monkeypatch):
    url = cluster_server["url"]

    class Cluster:  # the launched `serve` child, stood in for by the server above
        def __init__(self, *a, **k):
            self.url = url

        def metrics(self):
            return R.fetch_prewarm_metrics(url)

        def close(self):
            pass

    monkeypatch.setattr(R, "LiveCluster", Cluster)
    out = tmp_path / "r.json"
    assert R.main(replay_args(*LIVE, "--json", str(out), "--log-dir", str(tmp_path / "logs"))) == 0
    assert len(cluster_server["stats_at"]) == 2  # at t = 0 and after the replay
    s = json.loads(out.read_text())["policies"]["autoscale"]
    assert s["warmup"]["engine_starts"] == 1 and s["engine_starts"] == 1, s
    # the server's /stats without began_unix_s (an older --endpoint): by which processes t = 0 listed
    at_t0, final = [start(10, None)], [start(10, None), start(11, None), start(12, None)]
    warm, measured = split_engine_starts(final, at_t0, 1e9)
    assert [e["new_pid"] for e in warm] == [10] and [e["new_pid"] for e in measured] == [11, 12]
    assert split_engine_starts(None, at_t0, 1e9) == (at_t0, None) and split_engine_starts(final, None, 1e9) == \
        (None, None)
