"""`warmserve.Cluster` refuses inputs of the wrong type with typed errors naming them, and a stream read after
close() says so (found in review: bytes were taken as token ids, a number or a string of a number failed with bare
TypeErrors, params plus an explicit max_tokens=16 dropped the 16 silently, a stream read after close() raised
"Event loop is closed" with "never awaited" warnings, and cuda:0 without CUDA failed inside torch)."""

from __future__ import annotations

import asyncio
import gc
import pathlib
import time
import warnings

import pytest

import warmserve
from warmserve.errors import ClosedError, InvalidArgumentError

import serving

MODEL = "llama-20m"

cluster = serving.cluster_fixture(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20)


@pytest.mark.parametrize("kwargs, param", [
    (dict(prompt=b"hello"), "prompt"),
    (dict(prompt=bytearray(b"hello")), "prompt"),
    (dict(prompt=123), "prompt"),
    (dict(temperature="hot"), "temperature"),
    (dict(top_p="1"), "top_p"),
    (dict(seed="1"), "seed"),
    (dict(max_tokens=2.5), "max_tokens"),
])
def test_inputs_of_the_wrong_type_are_typed_errors_naming_them(cluster, kwargs, param):
    kwargs = {"prompt": "hi", "max_tokens": 2, **kwargs}
    with pytest.raises(InvalidArgumentError, match=param) as ei:
        cluster.generate(MODEL, **kwargs)
    assert ei.value.param == param
    with pytest.raises(InvalidArgumentError, match=param):
        cluster.stream(MODEL, **kwargs)


def test_params_with_an_explicit_default_valued_keyword_is_refused(cluster):
    params = warmserve.SamplingParams(max_tokens=2)
    for extra in (dict(max_tokens=16), dict(temperature=1.0), dict(top_p=1.0)):
        with pytest.raises(InvalidArgumentError, match=r"not both \(also given: \['" + next(iter(extra)) + r"'\]\)"):
            cluster.generate(MODEL, "hi", params=params, **extra)
    assert cluster.generate(MODEL, "hi", params=params).completion_tokens <= 2
    import numpy as np

    out = cluster.generate(MODEL, [5, 17], max_tokens=3, temperature=0, seed=np.int64(7))  # an integer, if numpy's
    assert out.completion_tokens <= 3


def test_numpy_token_ids_are_a_prompt_as_a_list_is(cluster):
    """A 1-D integer numpy array of token ids runs as the same list does (found in review: refused by generate()
    though the frontend takes it); other arrays are refused naming the prompt."""
    import numpy as np

    ids = [5, 17, 42, 99]
    want = cluster.generate(MODEL, ids, max_tokens=3, temperature=0).token_ids
    for arr in (np.array(ids), np.array(ids, dtype=np.int32), np.array(ids, dtype=np.uint16)):
        got = cluster.generate(MODEL, arr, max_tokens=3, temperature=0)
        assert (got.token_ids, got.prompt_tokens) == (want, len(ids))
    assert "".join(cluster.stream(MODEL, np.array(ids), max_tokens=3, temperature=0)) == \
        cluster.generate(MODEL, ids, max_tokens=3, temperature=0).text
    for bad in (np.array([ids]), np.array(ids, dtype=np.float32), np.array([True, False]), np.array(5)):
        with pytest.raises(InvalidArgumentError, match="numpy prompt must be a 1-D array of integer") as ei:
            cluster.generate(MODEL, bad, max_tokens=3)
        assert ei.value.param == "prompt"
    with pytest.raises(InvalidArgumentError, match="not both"):
        cluster.generate(MODEL, np.array(ids), messages=[{"role": "user", "content": "hi"}])


def test_a_cuda_device_without_cuda_is_refused_before_any_worker_starts():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = serving.demo_paths((MODEL,))[MODEL]
    t0 = time.monotonic()
    for devices in ("cuda:0", ["cpu:0", "cuda:1"]):  # one device alone is a one-item list, not its characters
        with pytest.raises(InvalidArgumentError, match="no CUDA device visible") as ei:
            warmserve.Cluster([path], devices=devices)
        assert "'c'" not in str(ei.value)
    with pytest.raises(InvalidArgumentError, match="window_s"):
        warmserve.Cluster([path], window_s=float("nan"))
    # One checkpoint given alone as a pathlib.Path is a one-item list too (found in review: refused)
    with pytest.raises(InvalidArgumentError, match="no CUDA device visible"):
        warmserve.Cluster(pathlib.Path(path), devices="cuda:0")
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("models, kw, param", [
    (None, {}, "models"), (123, {}, "models"), ([None], {}, "models"), ({"a": 1}, {}, "models"),
    (["x"], {"config": {"a": 1}}, "config"),
])
def test_models_and_config_of_the_wrong_type_are_typed_errors(models, kw, param):
    """Found in review: None and 123 were bare TypeErrors, [None] looked for a checkpoint named "None", a dict as
    config an AttributeError."""
    with pytest.raises(InvalidArgumentError) as ei:
        warmserve.Cluster(models, **kw)
    assert ei.value.param == param


def test_a_stream_read_after_close_raises_closed_error_and_leaves_no_coroutine():
    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20) as c:
        sync_stream = c.stream(MODEL, "hi", max_tokens=4)
        async_stream = c.stream(MODEL, "hi", max_tokens=4)

    async def read():
        async for _ in async_stream:
            pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ClosedError, match="closed"):
            list(sync_stream)
        with pytest.raises(ClosedError, match="closed"):
            asyncio.run(read())
        gc.collect()
    assert not [str(w.message) for w in caught if "never awaited" in str(w.message)]
    with pytest.raises(ClosedError):
        c.generate(MODEL, "hi")
    # found in review: `with` on a closed cluster entered, and its endpoint named a port it had released
    with pytest.raises(ClosedError):
        with c:
            pass
    with pytest.raises(ClosedError):
        c.endpoint
