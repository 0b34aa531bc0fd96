from __future__ import annotations

import os

import pytest
import torch

from warmserve.engine.demo import SMALL_MODELS, build_tokenizer, config_dict, write_checkpoint, write_demo_models

from tiny_checkpoints import TINY, TINY_VOCAB


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two cores shared by several jobs: one intra-op thread avoids spin contention and is faster here.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> dict[str, str]:
    return write_demo_models(str(tmp_path_factory.mktemp("demo")), names=SMALL_MODELS)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> dict[str, str]:
    out = str(tmp_path_factory.mktemp("tiny"))
    tok = build_tokenizer(TINY_VOCAB)
    return {n: write_checkpoint(out, n, config_dict(s), tokenizer=tok) for n, s in TINY.items()}


@pytest.fixture(scope="session")
def pool():
    from warmserve.memory import PagePool

    with PagePool(768 << 20, backend="host") as p:
        yield p


@pytest.fixture
def lm(tiny_dir, pool):
    """The tiny-linear checkpoint loaded into the session's pool (closed after the test)."""
    from warmserve.engine import load_model

    m = load_model(tiny_dir["tiny-linear"], pool).wait()
    yield m
    m.close()


_HF: dict[tuple, object] = {}


@pytest.fixture(scope="session")
def hf_model():
    """transformers' own implementation of a checkpoint (the reference), cached per path and the checkpoint's
    files' identity: a test's tmp_path may be a path an earlier test used and removed (found: with pytest's
    tmp_path_retention_policy "failed", the reference of another config was reused and the logits differed)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()

    def get(path: str):
        key = (path, *sorted((e.name, e.inode(), e.stat().st_mtime_ns) for e in os.scandir(path)))
        if key not in _HF:
            _HF[key] = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return _HF[key]

    return get
