"""`Cluster.close()` while other threads still hand work to the controller's loop: every call ends, with its result
or ClosedError, none waits for ever."""

import threading
import time

from warmserve import SamplingParams
from warmserve.errors import ClosedError

import serving

MODEL = "llama-20m"
#: Threads reading at once: one of them has a call under way on the loop whenever the close stops it.
READERS = 4
#: How long a reader may take to end after close() returned (a call stranded on the stopped loop never does).
END_WITHIN_S = 10.0


def test_calls_made_while_the_loop_stops_end_instead_of_hanging():
    """Found in review: a call handed to the loop after close() had queued its stop, but before the loop's thread
    had ended (or whose task was to run in the stop's turn), never ran, and its caller waited for ever. Each
    reader re-reads a finished stream in a loop (each read is one call on the controller's loop, no request)
    while the main thread closes the cluster."""
    closed = threading.Event()
    reads = [0] * READERS
    errors: list[BaseException] = []

    def reader(i: int, stream) -> None:
        try:
            while not closed.is_set():
                for _ in stream:  # the text was read once already: each pass is one trip to the loop
                    pass
                reads[i] += 1
        except ClosedError:
            pass
        except BaseException as e:  # reaches the test thread through `errors`
            errors.append(e)

    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20) as c:
        streams = [c.stream(MODEL, [5, 17, 300], params=params) for _ in range(READERS)]
        for s in streams:
            assert "".join(s)
        threads = [threading.Thread(target=reader, args=(i, s), daemon=True) for i, s in enumerate(streams)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while min(reads) < 5:  # every reader is going round
            assert time.monotonic() < deadline and not errors, (reads, errors)
            time.sleep(0.01)
        c.close()
        closed.set()
        ended_by = time.monotonic() + END_WITHIN_S
        for t in threads:
            t.join(max(0.0, ended_by - time.monotonic()))
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"readers {stuck} still wait {END_WITHIN_S:g} s after close() returned (reads: {reads})"
    assert not errors, errors
