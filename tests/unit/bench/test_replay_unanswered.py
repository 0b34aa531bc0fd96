"""An unanswered request in `warmserve bench replay` counts as waited for until the client gave up, its deadline -
its arrival, live and in the twin: the simulator's rule (found in review: a fixed 999 s, while the client waits up
to the last arrival + --drain-s, 1260 s by default, so never answering scored better than answering late)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from replay_harness import replay_args, replay_setup
from stub_server import serve_in_thread, stream_completion
from warmserve.bench import replay as R
from warmserve.workload.replay_client import Outcome

#: 15 requests (13 to the model never answered) sent over 2.2 s: the replay's wall time is that span and the drain,
#: and how many requests or how fast they come is not the point (--time-scale 0.01 sent 30 over 6 s)
LIVE = ["--models", "2", "--duration-s", "600", "--time-scale", "0.005", "--rate", "5", "--max-output-tokens", "2",
        "--drain-s", "2", "--quiet"]


@pytest.fixture
def server():
    """A real local OpenAI-style server: model "never" is never answered (until the test ends), others at once."""
    release = asyncio.Event()

    async def handler(request):
        if (await request.json())["model"] != "never":
            return await stream_completion(request)
        from aiohttp import web

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await release.wait()
        return resp

    with serve_in_thread([("POST", "/v1/completions", handler)]) as srv:
        try:
            yield srv.url
        finally:
            srv.loop.call_soon_threadsafe(release.set)


def test_live_unanswered_requests_count_until_the_clients_deadline(server, tmp_path):
    out = tmp_path / "r.json"
    a = replay_args(*LIVE, "--endpoint", server, "--served-names", "m,never", "--policy", "p", "--json", str(out))
    assert R.main(a) == 0
    w, _ = R.build_workload(a)
    reqs = R.replay_requests(w, a.vocab_size, a.seed)
    arrival = np.array([r.arrival_s for r in reqs])
    never = np.array([r.model == w.models[1] for r in reqs])  # --served-names sends model i as name i
    doc = json.loads(out.read_text())
    s, ttft = doc["policies"]["p"], np.array(doc["ttft_s"]["p"])
    assert never.any() and (~never).any()
    assert s["unanswered"] == never.sum() and s["answered"] == (~never).sum()
    deadline_s = arrival.max() + a.drain_s
    assert ttft[never] == pytest.approx(deadline_s - arrival[never], abs=1e-3)
    assert ttft[never].min() > ttft[~never].max()
    # the model that answered nothing: its requests waited between the drain and the whole replay
    assert s["per_model"]["never"]["ttft_p99_s"] <= deadline_s


def test_never_answering_scores_no_better_than_answering_late():
    def late_one(answer_at_s):
        outs = [Outcome(i, "m", 0.0, 16, 4, status="ok", sent_s=0.0, first_s=0.1, end_s=0.2, completion_tokens=4)
                for i in range(99)]
        late = Outcome(99, "m", 0.0, 16, 4, sent_s=0.0)
        if answer_at_s is not None:
            late.status, late.first_s, late.end_s, late.completion_tokens = "ok", answer_at_s, answer_at_s + 0.1, 4
        s, _, ttft = R.summarize(outs + [late], 1200.0, None, deadline_s=1260.0)
        return s, ttft

    late, _ = late_one(1100.0)
    never, ttft = late_one(None)
    assert never["answered"] == 99 and ttft[-1] == 1260.0
    assert never["ttft_p99_s"] >= late["ttft_p99_s"] and never["ttft_mean_s"] >= late["ttft_mean_s"]


def test_the_twin_counts_an_unanswered_request_until_the_end_of_its_run():
    # overloaded: most requests are still waiting when the twin's drain ends
    a, w, served_sim, cost = replay_setup("--duration-s", "150", "--time-scale", "0.2", "--rate", "40", "--drain-s",
                                          "1", "--cpu-workers", "1", "--models", "2", "--max-output-tokens", "64",
                                          "--max-prompt-tokens", "512")
    assert R.twin_config(1, 30.0, 1.0).unanswered_ttft_s is None
    s, ttft = R.run_sim("warmserve", w, served_sim, a, cost)
    assert s["unanswered"] > 0
    end_s = w.duration_s + a.drain_s + R.twin_config(1, 30.0, 1.0).tick_s
    assert ttft.max() <= end_s and s["ttft_p99_s"] <= end_s
