"""An Evict of a model still loading (worker/core.py ``_evict`` -> engine/loader.py ``ModelLoad.cancel``) holds the
worker's main thread for the chunk the load is on, not for the tensor: the copies roll back after their piece
(memory/pool.py LOAD_CHUNK_BYTES) and a conversion stops after its chunk of rows (loader._CONVERT_CHUNK_BYTES). Every
page is back in the pool when Evicted is sent, and the Prewarm is answered with CancelledError. A guard of that bound
(it held before this test was written), on a real checkpoint written by engine/demo.py and a real pool."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import torch

from warmserve import protocol as P
from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
from warmserve.engine.loader import ModelLoad
from warmserve.errors import CancelledError
from warmserve.memory import PagePool
from warmserve.worker.core import WorkerCore

C = "client"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Worker:
    """A WorkerCore over a real pool; its replies kept in order."""

    def __init__(self, pool_mib: int):
        self.pool = PagePool(pool_mib << 20, prefault=False)
        self.replies: list = []
        self.core = WorkerCore(self.pool, device="cpu", worker_id="w-evict",
                               emit=lambda peer, m: self.replies.append(m))
        self.core.progress_interval_s = 0.0
        self._id = 0

    def send(self, cls, **fields) -> int:
        self._id += 1
        self.core.handle(C, cls(id=self._id, **fields))
        return self._id

    def of(self, rid: int, cls=object) -> list:
        return [m for m in self.replies if getattr(m, "id", None) == rid and isinstance(m, cls)]

    def evict(self, name: str) -> tuple[float, int]:
        """(seconds the Evict held this thread, its id)."""
        t0 = time.perf_counter()
        eid = self.send(P.Evict, name=name)
        return time.perf_counter() - t0, eid

    def close(self) -> None:
        self.core.close()
        self.pool.close()


def test_an_evict_mid_tensor_returns_after_the_chunk_not_the_tensor(tmp_path, monkeypatch):
    """float32 on disk loaded as bfloat16: the one large tensor is read and converted a chunk of rows at a time on
    the load's thread; the Evict caught inside it answers long before the tensor would be done."""
    # One tied 128 MiB embedding (16384 x 2048 float32): the load is mostly this tensor.
    spec = DemoSpec("llama", 2048, 256, 1, 16, 4, vocab_size=16384, tie_word_embeddings=True)
    path = write_checkpoint(str(tmp_path), "one-big-tensor", config_dict(spec), tokenizer=build_tokenizer(1024))
    w = Worker(512)
    try:
        free0 = w.pool.free_bytes
        pid = w.send(P.Prewarm, path=path, name="big", dtype="bfloat16")
        t0 = time.perf_counter()
        while not w.of(pid, P.Prewarmed):
            assert not w.of(pid, P.Error), w.of(pid)
            w.core.tick()
            time.sleep(0.001)
        full_s = time.perf_counter() - t0
        w.evict("big")
        assert w.pool.free_bytes == free0
        # Caught inside the first tensor by construction, not by timing (a sleep of a fraction of the first load's
        # time was outrun by the page-cached repeat five times in a row in CI): the load's thread is held at its
        # second chunk of that tensor until the Evict's cancel() sets the stop, then goes on as it would have.
        inside = threading.Event()
        check_stop = ModelLoad._check_stop

        def held_check_stop(load):
            if sys._getframe(1).f_code.co_name == "_convert_one" and load._converted == 0:
                load.test_chunks = getattr(load, "test_chunks", 0) + 1
                if load.test_chunks == 2:
                    inside.set()
                    load._stop.wait(30.0)
            check_stop(load)

        monkeypatch.setattr(ModelLoad, "_check_stop", held_check_stop)
        pid = w.send(P.Prewarm, path=path, name="big", dtype="bfloat16")
        deadline = time.monotonic() + 30.0
        while not inside.is_set():
            assert time.monotonic() < deadline, "the load never reached a second chunk of its first tensor"
            assert not w.of(pid, P.Prewarmed) and not w.of(pid, P.Error), w.replies[-3:]
            w.core.tick()
            time.sleep(0.001)
        evict_s, eid = w.evict("big")
        errs = w.of(pid, P.Error)
        assert w.of(eid, P.Evicted) and w.pool.free_bytes == free0, w.replies[-3:]
        assert len(errs) == 1 and isinstance(errs[0].exception(), CancelledError) and not w.of(pid, P.Prewarmed)
        assert evict_s < full_s / 4, (f"the Evict held the worker's thread {evict_s:.3f} s; the whole load takes "
                                       f"{full_s:.3f} s, a 16 MiB chunk of it far less")
        assert "load:big" not in {t.name for t in threading.enumerate()}
    finally:
        w.close()
