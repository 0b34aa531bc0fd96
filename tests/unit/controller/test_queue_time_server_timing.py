"""The Server-Timing header splits a request's time where the access log's queue_ms and
warmserve_request_queue_seconds do: at its first send. Found in review: its queue ran to the last send, so a re-routed
request's header counted its time on the lost worker as queueing and disagreed with its access line."""

from warmserve.controller.requests import Req
from warmserve.protocol import SamplingParams


def _req() -> Req:
    return Req(1, "m", [1, 2, 3], SamplingParams(max_tokens=4), timeout_s=60.0)


def test_a_rerouted_requests_header_queues_until_its_first_send():
    r = _req()
    r.arrival_s, r.queue_s = 100.0, 0.25  # first sent at 100.25 s (LiveExecutor.send sets queue_s once)
    r.sent_s, r.end_s = 102.0, 103.0  # re-routed after a worker loss: sent again at 102 s, ended at 103 s
    assert r.server_timing() == "queue;dur=250.000, worker;dur=2750.000"


def test_a_request_never_sent_or_not_ended_has_no_header():
    r = _req()
    assert r.server_timing() == ""
    r.queue_s = 0.1
    assert r.server_timing() == ""  # sent, not ended
