"""A load's finishing work (dtype conversion, tokenizer) runs on the load's own thread (engine/loader.py): cancel
and a failing progress callback stop that thread before the slot it writes into is closed."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from warmserve.engine import load_model
from warmserve.errors import CancelledError, TimeoutError_


def _caught_mid_conversion(start, tries: int = 5):
    """A load started by ``start()`` seen by nobody's wait while part of it is converted (a load that finished
    before the first look is closed and started again)."""
    for _ in range(tries):
        job = start()
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            done, total = job.progress
            if 0 < done < total:
                return job
            if done == total:
                break
            time.sleep(0.0002)
        job.wait(30.0).close()
    raise AssertionError(f"no load was caught part-way in {tries} tries")


def test_a_conversion_runs_without_wait_and_cancel_mid_conversion_gives_every_page_back(demo_dir, pool):
    free0 = pool.free_pages
    # float32 on disk: every tensor converts, on the load's thread (nobody waits)
    job = _caught_mid_conversion(lambda: load_model(demo_dir["qwen2-30m"], pool, dtype="bfloat16", name="cancel-me"))
    job.cancel()
    assert pool.free_pages == free0
    with pytest.raises(CancelledError):
        job.wait(0.0)
    assert "load:cancel-me" not in {t.name for t in threading.enumerate()}


def test_a_progress_callback_that_raises_ends_the_load_once_its_thread_has_stopped(demo_dir, pool):
    free0 = pool.free_pages

    def progress(done: int, total: int) -> None:
        if 0 < done < total:
            raise RuntimeError("callback bug")

    for _ in range(5):
        job = _caught_mid_conversion(lambda: load_model(demo_dir["qwen2-30m"], pool, dtype="bfloat16",
                                                        progress=progress))
        try:
            job.wait(0.0).close()  # it finished between the look and the wait: nothing to report part-way
        except TimeoutError_:
            job.wait().close()
        except RuntimeError as e:
            assert "callback bug" in str(e)
            break
    else:
        raise AssertionError("the callback never saw the load part-way")
    assert pool.free_pages == free0
    with pytest.raises(CancelledError):
        job.wait()


def test_a_converted_load_reports_progress_on_the_waiting_thread_and_matches_the_file(demo_dir, pool):
    from safetensors import safe_open

    path = demo_dir["llama-20m"]
    seen = []
    job = load_model(path, pool, dtype="bfloat16", name="bf16-thread",
                     progress=lambda d, t: seen.append((d, t, threading.get_ident())))
    lm = job.wait(timeout_s=60)
    try:
        assert seen and {s[2] for s in seen} == {threading.get_ident()}
        assert seen[-1][0] == seen[-1][1] == lm.weight_bytes
        with safe_open(f"{path}/model.safetensors", framework="pt") as f:
            want = f.get_tensor("model.layers.5.self_attn.o_proj.weight").to(torch.bfloat16)
        views = lm.weight_views()
        assert torch.equal(views["layers.5.o.weight"], want)
        assert lm.tokenizer is not None
        del views
    finally:
        lm.close()
