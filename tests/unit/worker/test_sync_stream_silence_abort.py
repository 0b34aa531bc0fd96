"""The sync client's stream aborts its generation when the worker's silence fails it (``WorkerLostError``), as the
async stream does: found in review, the stream stayed registered and the next call sent no Abort, so a worker that
had only stalled ran the generation on to max_tokens holding KV blocks. A ROUTER socket plays the stalled
worker."""
import time

import pytest
import zmq

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker.client import WorkerClient


def test_a_stream_failed_by_silence_is_aborted_by_the_next_call():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    c = WorkerClient(f"tcp://127.0.0.1:{port}", heartbeat_interval_s=0.05, worker_timeout_s=0.3)
    got = []

    def drain(for_s):
        end = time.monotonic() + for_s
        while time.monotonic() < end:
            if router.poll(20):
                _, data = router.recv_multipart()
                got.append(P.decode_request(data))

    try:
        stream = c.generate("m", [1, 2], P.SamplingParams(max_tokens=100))
        with pytest.raises(errors.WorkerLostError):  # the worker stalls: no heartbeat, no token
            next(iter(stream))
        # the client's next call (the worker, back, would answer it; unanswered here, whatever)
        with pytest.raises((errors.TimeoutError_, errors.WorkerLostError)):
            c.stats(timeout_s=0.3)
        drain(0.3)
        aborts = [m for m in got if isinstance(m, P.Abort) and m.request_id == stream.id]
        assert aborts, f"no Abort of generation {stream.id}; the worker got {[type(m).__name__ for m in got]}"
    finally:
        c.close()
        router.close(0)
        ctx.term()
